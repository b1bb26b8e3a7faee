"""edgetl.fileio: paths from records stay inside their folder, folders appear whole or not at all,
and one writer holds a run folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgetl.errors import ArtifactError, DataError, EdgetlError, UsageError
from edgetl.fileio import LOCK_NAME, atomic_folder, folder_lock, resolve_inside


def test_paths_from_manifests_and_lists_cannot_escape_their_root(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.onnx").write_bytes(b"x")
    (tmp_path / "secret").write_text("s")
    (tmp_path / "export" / "link.onnx").symlink_to(tmp_path / "secret")
    assert resolve_inside(tmp_path / "export", "sub/../model.onnx") == tmp_path / "export" / "sub/../model.onnx"
    for rel, why in [("../secret", "leads outside"), ("/etc/passwd", "not a relative path"), ("link.onnx", "leads outside"),
                     ("", "not a relative path")]:
        with pytest.raises(ArtifactError, match=why):
            resolve_inside(tmp_path / "export", rel, "artifact file")
    with pytest.raises(DataError, match="calibration file"):
        resolve_inside(tmp_path / "export", "../secret", "calibration file", DataError)


def test_a_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "set"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not out.exists()  # filled under a temporary name
    assert (out / "a.txt").read_text() == "a" and [p.name for p in tmp_path.iterdir()] == ["set"]
    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError):
        with atomic_folder(failed) as tmp:
            (tmp / "a.txt").write_text("a")
            raise RuntimeError("stopped part way")
    assert not failed.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_an_existing_empty_folder_is_replaced_and_a_write_error_names_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    with atomic_folder(out) as tmp:
        (tmp / "b.txt").write_text("b")
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    blocker = tmp_path / "file"
    blocker.write_text("a file, so no folder can be made under it")
    with pytest.raises(EdgetlError, match="cannot write .*nothing was written"):
        with atomic_folder(blocker / "x"):
            pass


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with folder_lock(run, "finetune"):
        assert (run / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(UsageError, match=rf"another edgetl export \(PID {os.getpid()}\) is writing this folder"):
            with folder_lock(run, "export"):
                pass
    assert not run.exists()  # made by the lock, holding nothing else: removed
