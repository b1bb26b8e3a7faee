from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CIFAR, make_image_folder, needs_cifar
from PIL import Image

from edgetl.data.sources import load_data, scan_image_folder, stratified_split
from edgetl.errors import DataError
from edgetl.images import load_rgb


def test_stratified_split_is_seeded_and_keeps_class_shares() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 20
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert sorted(tr + va) == list(range(100)) and not set(tr) & set(va)
    assert [sum(labels[i] == c for i in va) for c in range(3)] == [10, 6, 4]
    assert stratified_split(labels, 0.2, seed=3) == (tr, va)
    assert stratified_split(labels, 0.2, seed=4) != (tr, va)


def test_digits_is_offline_and_stratified() -> None:
    ds = load_data("digits", seed=0)
    assert ds.classes == [str(i) for i in range(10)]
    assert len(ds.train) + len(ds.val) == 1797
    assert abs(len(ds.val) - 0.2 * 1797) < 10
    assert ds.hflip is False
    assert load_rgb(ds.train.items[0]).mode == "RGB"


@needs_cifar
def test_cifar10_mini_train_val_folders() -> None:
    ds = load_data(str(CIFAR))
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and len(ds.classes) == 10
    assert (len(ds.train), len(ds.val)) == (5000, 1000)
    assert all(Path(p).parent.parent.name == "val" for p in ds.val.items[:5])


@needs_cifar
def test_cifar10_mini_val_split_of_one_folder() -> None:
    ds = load_data(str(CIFAR / "train"), val_split=0.1, seed=0)
    assert (len(ds.train), len(ds.val)) == (4500, 500)
    assert np.bincount(ds.val.labels).tolist() == [50] * 10


def test_hidden_and_non_image_files_are_skipped(tmp_path: Path) -> None:
    make_image_folder(tmp_path, classes=2, per_class=3)
    (tmp_path / ".thumbs").mkdir()
    (tmp_path / "class_0" / "notes.txt").write_text("not an image")
    (tmp_path / "class_0" / ".hidden.png").write_bytes(b"")
    classes, split = scan_image_folder(tmp_path)
    assert classes == ["class_0", "class_1"] and len(split) == 6


def test_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    make_image_folder(tmp_path, classes=2, per_class=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder holds no images"):
        scan_image_folder(tmp_path)


def test_val_classes_must_match_train(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "train", classes=3)
    make_image_folder(tmp_path / "val", classes=2)
    with pytest.raises(DataError, match=r"val: classes differ .*only in train: \['class_2'\]"):
        load_data(str(tmp_path))


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "data", classes=2, per_class=2)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    (tmp_path / "data" / "class_0" / "link.png").symlink_to(outside)
    with pytest.raises(DataError, match="link.png: symlink points outside the data root"):
        scan_image_folder(tmp_path / "data")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_every_image_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    ext = ".tif" if mode in ("CMYK", "I;16") else ".png"
    p = tmp_path / f"img{ext}"
    if mode == "I;16":
        Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)).save(p)
    else:
        Image.new(mode, (6, 6)).save(p)
    img = load_rgb(p)
    assert img.mode == "RGB" and img.size == (6, 6)
    if mode == "I;16":
        assert np.asarray(img).min() == 255  # 16-bit white stays white, not clipped garbage


def test_corrupt_truncated_and_empty_files_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), "red").save(good)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    for name in ("trunc.jpg", "zero.png", "text.png"):
        with pytest.raises(DataError, match=name):
            load_rgb(tmp_path / name)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "bomb.png"
    Image.new("L", (300, 300)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(DataError, match="bomb.png: image too large"):
        load_rgb(p)


def test_a_calibration_folder_larger_than_calib_size_is_sampled_across_its_classes(tmp_path: Path) -> None:
    """An ImageFolder lists its images class by class: cutting it at --calib-size (or at the guard's and
    bias correction's probe size) would calibrate on its first classes only."""
    from edgetl.data.sources import DataSet, Split
    from edgetl.export.int8.calibrate import calibration_split

    for c in "abc":
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / c / f"{i}.png")
    ds = DataSet("x", ["a", "b", "c"], Split([], []), Split([], []))
    split = calibration_split(ds, str(tmp_path), 6)
    assert sorted(split.labels) == [0, 0, 1, 1, 2, 2]
    assert calibration_split(ds, str(tmp_path), 6).items == split.items  # seeded: the same cache key next time
    assert len(calibration_split(ds, str(tmp_path), 100)) == 30
    assert sorted(split.sample(3).labels) == [0, 1, 2]
