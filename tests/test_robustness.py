"""DESIGN.md's "Bad input and faults": untrusted checkpoints and ONNX files, NaN loss, writes that
fail halfway. Each case checks the one-line message (file and reason), the exit code, and that
nothing already saved was lost. Commands run through the real Typer app (in process) or as real
subprocesses where the process boundary is the point."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image
from typer.testing import CliRunner

from edgetl.cli import app
from edgetl.errors import ArtifactError, EdgetlError, TrainingError
from edgetl.train.checkpoint import resume_config
from edgetl.train.config import TrainConfig
from edgetl.train.loop import finetune

EDGETL = [sys.executable, "-m", "edgetl"]
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster on a busy machine
TINY = dict(model="timm/test_resnet", weights="none", img_size=32, batch_size=4, workers=0, val_split=0.25)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.stderr


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run of timm's test_resnet on a small generated ImageFolder (run/, d/)."""
    root = tmp_path_factory.mktemp("tiny")
    make_image_folder(root / "d", classes=3, per_class=6)
    finetune(TrainConfig(data=str(root / "d"), out=str(root / "run"), epochs=1, **TINY))
    return root


def _copy_run(tiny: Path, dst: Path) -> Path:
    shutil.copytree(tiny / "run", dst)
    return dst


# ---- checkpoints: truncated, from another model, a pickle that would run code -----------------

class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoint(kind: str, good: Path, dst: Path, marker: Path) -> Path:
    from edgetl.models import build

    if kind == "truncated":
        dst.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "another_model":
        ck = torch.load(good, weights_only=True)
        torch.save({**ck, "model": build("timm/test_efficientnet", 3, "none").model.state_dict()}, dst)
    else:
        torch.save({**torch.load(good, weights_only=True), "model": _RunsCode(marker)}, dst)
    return dst


REASONS = {"truncated": "truncated or corrupt", "another_model": "(does not fit|do not fit)",
           "runs_code": "refused: it holds Python objects beyond tensors"}


@pytest.mark.parametrize("kind", list(REASONS))
@pytest.mark.parametrize("entry", ["eval", "weights", "resume"])
def test_bad_checkpoint_is_refused_with_exit_4(tiny: Path, tmp_path: Path, kind: str, entry: str) -> None:
    import re

    marker = tmp_path / "RAN_CODE"
    run = _copy_run(tiny, tmp_path / "run")
    if entry == "eval":
        bad = _bad_checkpoint(kind, tiny / "run" / "best.pt", run / "best.pt", marker)
        args = ["eval", run]
    elif entry == "weights":
        bad = _bad_checkpoint(kind, tiny / "run" / "last.pt", tmp_path / "w.pt", marker)
        args = ["finetune", "--data", tiny / "d", "--model", "timm/test_resnet", "--weights", bad, "--img-size", "32",
                "--epochs", "1", "--workers", "0", "--quiet", "--out", tmp_path / "new"]
    else:
        bad = _bad_checkpoint(kind, tiny / "run" / "last.pt", run / "last.pt", marker)
        args = ["finetune", "--resume", run, "--quiet"]
    before = {p.name: _digest(p) for p in run.iterdir()}
    code, err = _cli(*args)
    assert code == 4, err
    line = _one_line(err)
    assert str(bad) in line and re.search(REASONS[kind], line), line
    assert not marker.exists()
    assert {p.name: _digest(p) for p in run.iterdir()} == before  # nothing rewritten
    assert not (tmp_path / "new" / "last.pt").exists()


def test_pickle_that_runs_code_never_runs_in_a_real_process(tiny: Path, tmp_path: Path) -> None:
    marker = tmp_path / "RAN_CODE"
    run = _copy_run(tiny, tmp_path / "run")
    _bad_checkpoint("runs_code", tiny / "run" / "best.pt", run / "best.pt", marker)
    r = subprocess.run([*EDGETL, "eval", str(run)], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert r.returncode == 4 and "best.pt: not a loadable checkpoint, refused" in _one_line(r.stderr)
    assert not marker.exists()


# ---- ONNX: external data outside the model's folder, checker failures ----------------------------

def _onnx(path: Path, location: str | None = None, broken: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    if location is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", "8")):
            e = w.external_data.add()
            e.key, e.value = k, v
    node = helper.make_node("Add", ["undefined" if broken else "input", "w"], ["logits"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])], [w])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _weights(path: Path) -> Path:
    path.write_bytes(np.ones(2, np.float32).tobytes())
    return path


def test_onnx_files_that_read_outside_their_folder_or_fail_the_checker_are_refused(tmp_path: Path) -> None:
    from edgetl.artifacts.onnx import check_onnx_file

    m = tmp_path / "model"
    m.mkdir()
    secret = _weights(tmp_path / "secret.bin")
    _weights(m / "w.bin")
    (m / "link.bin").symlink_to(secret)
    check_onnx_file(_onnx(m / "plain.onnx"))
    check_onnx_file(_onnx(m / "external.onnx", "w.bin"))
    cases = {
        _onnx(m / "up.onnx", "../secret.bin"): "takes its data from '../secret.bin', outside the model's folder",
        _onnx(m / "abs.onnx", str(secret)): "outside the model's folder",
        _onnx(m / "link.onnx", "link.bin"): "takes its data from 'link.bin', outside the model's folder",
        _onnx(m / "missing.onnx", "gone.bin"): "external data file 'gone.bin', which is missing",
        _onnx(m / "broken.onnx", broken=True): "fails the ONNX checker",
    }
    (m / "junk.onnx").write_bytes(b"not protobuf at all")
    cases[m / "junk.onnx"] = "not an ONNX model"
    for path, why in cases.items():
        with pytest.raises(ArtifactError, match=f"{path.name}: .*{why}"):
            check_onnx_file(path)


@pytest.mark.parametrize(("location", "broken", "why"), [("../secret.bin", False, "outside the model's folder"),
                                                         (None, True, "fails the ONNX checker")])
def test_predict_refuses_a_bad_onnx_with_exit_4(tmp_path: Path, location: str | None, broken: bool, why: str) -> None:
    _weights(tmp_path / "secret.bin")
    model = _onnx(tmp_path / "export" / "model.onnx", location, broken)
    (model.parent / "manifest.json").write_text(json.dumps({"classes": ["a", "b"], "preprocess": {
        "size": 8, "resize": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}}))
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    code, err = _cli("predict", model, tmp_path / "x.png", "--no-verify")  # a hand-made manifest lists no artifact
    assert code == 4 and why in _one_line(err) and str(model) in err


# ---- NaN loss ----------------------------------------------------------------------------------

def test_nan_loss_in_the_first_epoch_writes_no_checkpoint(tiny: Path, tmp_path: Path) -> None:
    code, err = _cli("finetune", "--data", tiny / "d", "--model", "timm/test_resnet", "--weights", "none",
                     "--img-size", "32", "--epochs", "2", "--batch-size", "4", "--workers", "0", "--lr", "1e6",
                     "--optimizer", "sgd", "--quiet", "--out", tmp_path / "run")
    assert code == 1
    line = _one_line(err)
    assert "loss became nan at epoch 1" in line and "no checkpoint was written" in line and "--lr" in line
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()


def _all_finite(ck: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in ck["model"].values() if v.is_floating_point())


def test_divergence_keeps_the_last_finite_checkpoint(tiny: Path, tmp_path: Path) -> None:
    """AdamW's decoupled decay at lr x wd = 20 flips and multiplies the weights by 19 every step:
    finite for a few epochs of 3 steps, then NaN (epoch 4 of 8 here)."""
    cfg = TrainConfig(data=str(tiny / "d"), out=str(tmp_path / "run"), epochs=8, lr=200, weight_decay=0.1, **TINY)
    with pytest.raises(TrainingError, match=r"(loss became nan|ended with).*keep epoch \d and earlier") as e:
        finetune(cfg, check="off")
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert 1 <= last["epoch"] < 8 and best["epoch"] <= last["epoch"] and _all_finite(last) and _all_finite(best)
    assert f"keep epoch {last['epoch']} and earlier" in str(e.value)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed" and info["metrics"]["epochs"] == last["epoch"] and info["error"] == str(e.value)
    assert len((tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()) == 1 + last["epoch"]


def test_weights_that_make_validation_nan_are_never_saved_as_best(tiny: Path, tmp_path: Path) -> None:
    """A negative BatchNorm running variance: training (batch statistics) stays finite, validation
    (running statistics) is NaN; accuracy on NaN logits must not make that model 'best'."""
    from edgetl.models import build

    sd = build("timm/test_resnet", 3, "none").model.state_dict()
    sd = {k: (torch.full_like(v, -1e6) if k.endswith("running_var") else v) for k, v in sd.items()}
    torch.save(sd, tmp_path / "w.pt")
    cfg = TrainConfig(data=str(tiny / "d"), out=str(tmp_path / "run"), epochs=2,
                      **{**TINY, "weights": str(tmp_path / "w.pt")})
    with pytest.raises(TrainingError, match="epoch 1 ended with validation loss nan, not saved; no checkpoint was written"):
        finetune(cfg, check="off")
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()


# ---- writes that fail halfway -------------------------------------------------------------------

def test_a_write_that_fails_halfway_keeps_the_previous_last_pt(tiny: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel stop a write at 1 MB (EFBIG), as a full disk stops it (ENOSPC):
    the checkpoint is bigger, so its write fails part way through."""
    run = _copy_run(tiny, tmp_path / "run")
    before = {p.name: _digest(p) for p in run.iterdir()}

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    r = subprocess.run([*EDGETL, "finetune", "--resume", str(run), "--epochs", "2", "--quiet"], capture_output=True,
                       text=True, env=ENV, preexec_fn=limit_file_size, timeout=600)
    assert r.returncode == 1, r.stderr
    line = _one_line(r.stderr)
    assert "cannot write (File too large); the previous version is unchanged" in line
    assert f"{run}/best.pt" in line or f"{run}/last.pt" in line
    for name in ("best.pt", "last.pt", "metrics.csv", "run.json"):
        assert _digest(run / name) == before[name], name
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(run.glob(".*.tmp"))


def test_a_read_only_run_folder_keeps_the_previous_last_pt(tiny: Path, tmp_path: Path) -> None:
    run = _copy_run(tiny, tmp_path / "run")
    before = {p.name: _digest(p) for p in run.iterdir()}
    if os.geteuid() == 0:  # root ignores permission bits; the immutable attribute binds root too
        if subprocess.run(["chattr", "+i", str(run)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i: no way to make a folder read-only here")
        undo = ["chattr", "-i", str(run)]
    else:
        run.chmod(0o555)
        undo = ["chmod", "755", str(run)]
    try:
        with pytest.raises(EdgetlError, match=r"(best|last)\.pt: cannot write \((Operation not permitted|Permission denied)\); "
                                              "the previous version is unchanged"):
            finetune(resume_config(run, epochs=2), resume=True, check="off")
    finally:
        subprocess.run(undo, check=True)
    assert {p.name: _digest(p) for p in run.iterdir()} == before
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1


# ---- finetune's data check through the command line --------------------------------------------

def test_finetune_skips_bad_files_and_strict_refuses_them(tmp_path: Path) -> None:
    d = make_image_folder(tmp_path / "d", classes=2, per_class=6)
    (d / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    common = ["--data", str(d), "--model", "timm/test_resnet", "--weights", "none", "--img-size", "32",
              "--epochs", "1", "--batch-size", "4", "--workers", "0"]
    r = subprocess.run([*EDGETL, "finetune", *common, "--strict", "--out", str(tmp_path / "strict")],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 3 and "broken.png: corrupt or truncated image" in _one_line(r.stderr)
    assert not (tmp_path / "strict").exists()
    r = subprocess.run([*EDGETL, "finetune", *common, "--quiet", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "bad files: 1" in r.stderr and "left out of training" in r.stderr  # warned even with --quiet
    check = json.loads((tmp_path / "run" / "data_check.json").read_text())
    assert check["skipped"] == [str(d / "class_1" / "broken.png")]
