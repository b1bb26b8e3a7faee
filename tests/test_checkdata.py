"""`edgetl check-data` and what training does with its findings, on real messy folders."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import CIFAR, make_image_folder, needs_cifar
from PIL import Image

from edgetl.data.check import check_data
from edgetl.data.sources import DataSet, Split, load_data, run_data
from edgetl.errors import DataError

EDGETL = [sys.executable, "-m", "edgetl"]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models train several times faster on one thread when the 2 cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _png_header(path: Path, w: int, h: int) -> None:
    """A PNG that claims w x h pixels: Pillow must refuse it from the header, before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))


def _messy(root: Path) -> dict[str, Path]:
    """train/ + val/ with one of every bad file, every odd-but-fine mode, and clutter."""
    make_image_folder(root / "train", classes=3, per_class=6, size=24)
    make_image_folder(root / "val", classes=3, per_class=2, size=24, seed=1)
    t = root / "train"
    good = t / "class_0" / "img_0.png"
    jpg = t / "class_0" / "photo.jpg"
    Image.open(good).convert("RGB").resize((64, 64)).save(jpg, quality=95)
    bad = {
        "truncated": t / "class_0" / "trunc.jpg",
        "zero_byte": t / "class_1" / "zero.png",
        "unidentified": t / "class_1" / "text.png",
        "corrupt": t / "class_2" / "scrambled.png",
        "bomb": t / "class_2" / "bomb.png",
    }
    bad["truncated"].write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    bad["zero_byte"].write_bytes(b"")
    bad["unidentified"].write_text("not a picture")
    raw = bytearray((t / "class_2" / "img_0.png").read_bytes())
    idat = raw.index(b"IDAT") + 8
    raw[idat: idat + 40] = bytes(40)  # valid header, broken compressed data
    bad["corrupt"].write_bytes(bytes(raw))
    _png_header(bad["bomb"], 20_000, 20_000)  # 400 MP: over twice Pillow's limit
    modes = t / "class_1"
    Image.new("L", (24, 24), 90).save(modes / "gray.png")
    Image.new("RGB", (24, 24), "red").convert("P").save(modes / "palette.png")
    Image.new("RGBA", (24, 24), (0, 0, 255, 128)).save(modes / "alpha.png")
    Image.new("CMYK", (24, 24), (0, 255, 0, 0)).save(modes / "cmyk.jpg")
    Image.fromarray(np.full((24, 24), 40000, dtype=np.uint16)).save(modes / "deep.png")
    Image.new("RGB", (4, 4)).save(t / "class_2" / "tiny.png")
    (t / "class_2" / "notes.txt").write_text("labels were checked by hand")
    (t / ".thumbnails").mkdir()
    Image.new("RGB", (8, 8)).save(t / ".thumbnails" / "x.png")
    (t / "class_0" / ".DS_Store").write_bytes(b"\0\0")
    return bad


def _tree_state(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_check_data_reports_every_kind_of_problem_and_modifies_nothing(tmp_path: Path) -> None:
    bad = _messy(tmp_path / "d")
    before = _tree_state(tmp_path / "d")
    report = check_data(tmp_path / "d")
    assert _tree_state(tmp_path / "d") == before
    found = {(f.kind, Path(f.path).name): f for f in report.findings}
    for kind, path in bad.items():
        assert (kind, path.name) in found, (kind, sorted(found))
        assert found[kind, path.name].level == "bad"
    assert "truncated" in found["truncated", "trunc.jpg"].message
    assert "decompression bomb" in found["bomb", "bomb.png"].message
    assert sorted(report.skipped) == sorted(str(p) for p in bad.values())
    assert {(k, n) for k, n in found if found[k, n].level == "warning"} == {
        ("too_small", "tiny.png"), ("not_image", "notes.txt"), ("hidden_folder", ".thumbnails")}
    assert not report.by_level("error")
    assert {"RGB", "L", "P", "RGBA", "CMYK"} <= set(report.modes) and any(m.startswith("I") for m in report.modes)
    assert report.sizes["min"] == [4, 4] and report.sizes["max"] == [64, 64]
    assert report.folders["train"]["images"] == 18 + 1 + 5 + 1 and report.folders["val"]["images"] == 6
    d = json.loads(json.dumps(report.to_dict()))
    assert d["counts"] == {"error": 0, "bad": 5, "warning": 3} and d["skipped"] == report.skipped
    report.raise_for(strict=False)  # usable: bad files are skipped
    with pytest.raises(DataError, match=r"class_\d/\w+\.(png|jpg): .*--strict; 7 more"):
        report.raise_for(strict=True)


def test_too_large_is_a_warning_below_the_bomb_limit(tmp_path: Path) -> None:
    make_image_folder(tmp_path, classes=2, per_class=1, size=40)
    report = check_data(tmp_path, max_megapixels=0.001)
    assert {f.kind for f in report.findings} == {"too_large"} and "over 0.001 MP" in report.findings[0].message


def test_structural_problems_are_errors(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "train", classes=3, per_class=2)
    make_image_folder(tmp_path / "val", classes=2, per_class=2)
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "val" / "empty").mkdir()
    (tmp_path / "train" / "class_2" / "img_0.png").write_bytes(b"")
    (tmp_path / "train" / "class_2" / "img_1.png").write_bytes(b"GIF89a")
    report = check_data(tmp_path)
    errors = {(f.kind, Path(f.path).name) for f in report.by_level("error")}
    assert errors == {("empty_class", "empty"), ("class_mismatch", "val"), ("no_usable_images", "class_2")}
    with pytest.raises(DataError, match="(class folder holds no images|classes differ|every image)"):
        report.raise_for(strict=False)


def test_calibration_classes_are_compared_with_train(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "d", classes=3, per_class=2)
    calib = tmp_path / "calib"
    make_image_folder(calib, classes=2, per_class=2)
    (calib / "class_1").rename(calib / "zebra")
    report = check_data(tmp_path / "d", calib)
    by_kind = {f.kind: f for f in report.findings}
    assert by_kind["class_mismatch"].level == "error" and "['zebra']" in by_kind["class_mismatch"].message
    assert by_kind["calib_missing_classes"].level == "warning" and "class_1" in by_kind["calib_missing_classes"].message


def test_symlinks_out_of_the_data_root_are_refused_and_inside_ones_kept(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d" / "train", classes=2, per_class=2).parent
    make_image_folder(data / "val", classes=2, per_class=1)
    outside = make_image_folder(tmp_path / "elsewhere", classes=1, per_class=1) / "class_0"
    (data / "train" / "class_0" / "leak.png").symlink_to(outside / "img_0.png")
    (data / "train" / "class_9").symlink_to(outside, target_is_directory=True)
    (data / "val" / "class_1" / "same.png").symlink_to(data / "train" / "class_1" / "img_0.png")  # inside the root: fine
    report = check_data(data)
    refused = sorted(Path(f.path).name for f in report.findings if f.kind == "outside_root")
    assert refused == ["class_9", "leak.png"]
    with pytest.raises(DataError, match="symlink points outside the data root"):
        load_data(str(data))
    (data / "train" / "class_0" / "leak.png").unlink()
    (data / "train" / "class_9").unlink()
    assert len(load_data(str(data)).val) == 3


def test_flat_calibration_folder_refuses_symlinks_out(tmp_path: Path) -> None:
    from edgetl.export.int8.calibrate import calibration_split

    calib = tmp_path / "calib"
    calib.mkdir()
    Image.new("RGB", (8, 8)).save(calib / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    (calib / "b.png").symlink_to(tmp_path / "secret.png")
    ds = DataSet("x", ["a"], Split([], []), Split([], []))
    with pytest.raises(DataError, match="b.png: symlink points outside the folder"):
        calibration_split(ds, str(calib), 8)
    assert {f.kind for f in check_data(make_image_folder(tmp_path / "d", 1, 1), calib).by_level("error")} == {"outside_root"}


@pytest.mark.usefixtures("one_thread")
def test_training_skips_bad_files_and_eval_sees_the_same_split(tmp_path: Path) -> None:
    from edgetl.evaluate import evaluate_run
    from edgetl.train.config import TrainConfig
    from edgetl.train.loop import finetune

    d = make_image_folder(tmp_path / "d", classes=3, per_class=7, size=24)
    (d / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (d / "class_2" / "zero.jpg").write_bytes(b"")
    for i, (mode, ext) in enumerate([("L", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "jpg")]):
        Image.new(mode, (24, 24)).save(d / f"class_{i % 3}" / f"odd_{mode}.{ext}")
    Image.fromarray(np.full((24, 24), 50000, dtype=np.uint16)).save(d / "class_1" / "odd_16bit.png")
    before = _tree_state(d)
    cfg = TrainConfig(data=str(d), out=str(tmp_path / "run"), model="timm/test_resnet", weights="none", img_size=32,
                      epochs=1, batch_size=4, workers=0, val_split=0.25)
    with pytest.raises(DataError, match=r"(broken\.png|zero\.jpg): .*--strict"):
        finetune(cfg, check="strict")
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match=r"(broken\.png|zero\.jpg): (not an image|corrupt)"):
        finetune(cfg, check="off")
    finetune(cfg, check="skip")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert sorted(info["data"]["skipped"]) == sorted([str(d / "class_0" / "broken.png"), str(d / "class_2" / "zero.jpg")])
    saved = json.loads((tmp_path / "run" / "data_check.json").read_text())
    assert saved["skipped"] == info["data"]["skipped"] and saved["counts"]["bad"] == 2
    assert info["data"]["train_images"] + info["data"]["val_images"] == 26  # grayscale, palette, RGBA, CMYK, 16-bit included
    ds = run_data(info)
    assert (len(ds.train), len(ds.val)) == (info["data"]["train_images"], info["data"]["val_images"])
    assert evaluate_run(tmp_path / "run")[1].images == info["data"]["val_images"]  # eval skips them too
    # the split of the good files does not depend on which files were bad
    clean = load_data(str(d), 0.25, 0)
    assert [p for p in clean.val.items if str(p) not in info["data"]["skipped"]] == ds.val.items
    assert _tree_state(d) == before


@needs_cifar
def test_check_data_decodes_cifar10_mini_in_seconds() -> None:
    report = check_data(CIFAR)
    assert report.images == 6000 and not report.findings
    assert report.modes == {"RGB": 6000} and report.sizes["min"] == report.sizes["max"] == [32, 32]
    assert report.seconds < 30, report.seconds  # about 1 s on 2 free cores


def test_check_data_command(tmp_path: Path) -> None:
    """Real subprocess: the report on stdout, exit 0 when training could go on, 3 with --strict."""
    bad = _messy(tmp_path / "d")
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([*EDGETL, "check-data", str(tmp_path / "d")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "bad files: 5" in r.stdout and all(str(p) in r.stdout for p in bad.values())
    r = subprocess.run([*EDGETL, "check-data", str(tmp_path / "d"), "--strict", "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 3 and json.loads(r.stdout)["counts"]["bad"] == 5
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--strict" in lines[0] and "Traceback" not in r.stderr
    r = subprocess.run([*EDGETL, "check-data", str(tmp_path / "nope")], capture_output=True, text=True, env=env)
    assert r.returncode == 3 and "nope: no such data folder" in r.stderr
