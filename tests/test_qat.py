"""`export --int8 --qat`: quantization-aware training through NVIDIA ModelOpt and finetune's own loop,
exported with the same TensorRT shape as post-training INT8."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from conftest import TORCHRUN, TORCHRUN_ENV, assert_tensorrt_int8_shape, copy_run, wait_for

from edgetl.errors import UsageError
from edgetl.export.config import ExportConfig
from edgetl.export.int8 import qat
from edgetl.export.pipeline import export
from edgetl.fileio import sha256_file

pytest.importorskip("modelopt", reason="the qat extra (nvidia-modelopt) is not installed")


def _manifest(run: Path) -> dict:
    return json.loads((run / "export" / "manifest.json").read_text())


def test_qat_writes_the_tensorrt_shape_with_every_layer_int8(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    cfg = ExportConfig(run=str(run), int8=True, int8_cpu=True, engine=False, calib_size=64, qat="on",
                       quantize_stem=True)
    lines: list[str] = []
    report = export(cfg, log=lines.append)
    out = run / "export"
    m = onnx.load(str(out / "model.int8.onnx"))
    assert_tensorrt_int8_shape(m, float_layers=())  # --quantize-stem: every conv and the Gemm in INT8
    assert not [n for n in m.graph.node if n.op_type == "BatchNormalization"]  # folded into the convs
    assert report.int8["int8_layers"] == report.int8["weighted_layers"]
    man = _manifest(run)
    q = man["qat"]
    run_lr = json.loads((run / "run.json").read_text())["config"]["lr"]
    assert q["epochs"] == 1 and q["lr"] == pytest.approx(run_lr * qat.LR_FRACTION) and q["seconds"] > 0
    assert q["learned_ranges"] == report.int8["weighted_layers"] and q["ptq"]["top1"] > 80
    assert q["used"] and {a["file"]: a.get("qat") for a in man["artifacts"]} == {
        "model.onnx": None, "model.int8.onnx": True, "model.int8-cpu.onnx": True}
    # the second path: a plain ONNX Runtime session simulating the Q/DQ in float agrees with the manifest,
    # and PyTorch's own fake-quantized validation during QAT lands close to both
    import onnxruntime as ort

    from edgetl.data.sources import eval_transform, make_loader, run_data
    from edgetl.evaluate import load_run_model

    rm = load_run_model(run)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    s = ort.InferenceSession(str(out / "model.int8.onnx"), opts, providers=["CPUExecutionProvider"])
    correct = n = 0
    for x, y in make_loader(run_data(rm.run).val, eval_transform(rm.preprocess), 128, shuffle=False, workers=0):
        correct += int((s.run(None, {"input": x.numpy()})[0].argmax(1) == y.numpy()).sum())
        n += len(y)
    entry = next(a for a in man["artifacts"] if a["file"] == "model.int8.onnx")
    assert 100 * correct / n == pytest.approx(entry["accuracy"]["top1"], abs=0.3)
    assert abs(q["fake_quant_val_top1"] - entry["accuracy"]["top1"]) < 1.5
    # the same export again reuses the finished training and writes the same file
    first = sha256_file(out / "model.int8.onnx")
    lines.clear()
    export(cfg, log=lines.append)
    assert any(ln.startswith("reusing quantization-aware training") for ln in lines)
    assert sha256_file(out / "model.int8.onnx") == first


def test_qat_trains_the_weights_but_not_frozen_batch_norm(tmp_path: Path) -> None:
    from edgetl.train.config import TrainConfig
    from edgetl.train.loop import finetune

    run = tmp_path / "partial"
    finetune(TrainConfig(data="digits", out=str(run), model="timm/test_resnet", weights="none", img_size=32,
                         epochs=1, batch_size=32, lr=3e-3, workers=0, strategy="partial", unfreeze=1))
    export(ExportConfig(run=str(run), int8=True, engine=False, calib_size=32, qat="on", qat_lr=1e-3))
    before = torch.load(run / "best.pt", weights_only=True)["model"]
    after = torch.load(run / "export" / "qat" / "best.pt", weights_only=True)["model"]
    trainable = json.loads((run / "run.json").read_text())["trainable_tensors"]
    changed, frozen_bn = [], []
    for k, v in before.items():
        w = after[k]
        if not torch.equal(v, w):
            changed.append(k)
        if k.endswith(("running_mean", "running_var")) and k.split(".")[0] in ("conv1", "bn1", "layer1"):
            frozen_bn.append(torch.equal(v, w))
    assert frozen_bn and all(frozen_bn)  # the stem and first stage were frozen: statistics kept
    assert any(k.startswith(("fc.", "layer4")) and k.endswith("weight") for k in changed)
    assert not any(k.startswith(("conv1", "layer1")) for k in changed)
    assert len([k for k in changed if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]) <= trainable


def test_qat_auto_skips_training_when_post_training_int8_fits(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    lines: list[str] = []
    report = export(ExportConfig(run=str(run), int8=True, engine=False, calib_size=64, qat="auto"), log=lines.append)
    assert report.guard["initial_drop"] <= 1.0
    assert not (run / "export" / "qat").exists() and "qat" not in _manifest(run)
    assert not any("quantization-aware" in ln for ln in lines)


def test_qat_auto_trains_when_ptq_misses_then_the_guard_floats_what_is_left(tiny_run: Path, gray_calib: Path,
                                                                             tmp_path: Path) -> None:
    """Near-constant calibration images make post-training INT8 miss the budget: auto trains first and
    records both figures. The guard starts from the better of the two and, where floating layers cannot
    bring that one within budget, tries the other (floating QAT weights gives QAT's float model, not FP32's)."""
    run = copy_run(tiny_run, tmp_path / "run")
    lines: list[str] = []
    report = export(ExportConfig(run=str(run), int8=True, engine=False, calib=str(gray_calib), max_drop=0.5, min_int8=0.0,
                                 qat="auto"), log=lines.append)
    assert any("quantization-aware training first (--qat auto)" in ln for ln in lines)
    q = _manifest(run)["qat"]
    assert q["ptq"]["delta_top1"] < -20  # these ranges ruin post-training INT8
    chosen = q["qat"] if q["used"] else q["ptq"]
    assert report.guard["initial_drop"] == pytest.approx(-chosen["delta_top1"])
    assert report.guard["float_layers"] and report.guard["final_drop"] <= 0.5
    entry = next(a for a in _manifest(run)["artifacts"] if a["file"] == "model.int8.onnx")
    assert entry["qat"] is q["used"]


def test_without_modelopt_qat_stops_with_the_install_command(tiny_run: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    monkeypatch.setitem(sys.modules, "modelopt", None)  # import modelopt now raises ImportError
    for mode in ("on", "auto"):
        with pytest.raises(UsageError, match=r"pip install 'edgetl\[qat\]'"):
            export(ExportConfig(run=str(run), int8=True, engine=False, qat=mode))
    assert not (run / "export" / "model.onnx").exists()
    with pytest.raises(UsageError, match="needs --int8"):
        ExportConfig(run=str(run), qat="on").validate()


def test_bare_qat_flag_means_on() -> None:
    from edgetl.cli.options import with_bare_values

    assert with_bare_values(["export", "R", "--int8", "--qat"], [ExportConfig])[-1] == "on"
    assert with_bare_values(["export", "R", "--qat", "--int8"], [ExportConfig]) == ["export", "R", "--qat", "on", "--int8"]
    assert with_bare_values(["export", "R", "--qat", "auto"], [ExportConfig]) == ["export", "R", "--qat", "auto"]


def test_sigterm_during_qat_keeps_the_run_and_earlier_artifacts_then_resumes(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    export(ExportConfig(run=str(run), int8=True, engine=False, calib_size=32))
    out = run / "export"
    def files() -> dict[str, str]:  # the lock file holds the pid of the last export: left out
        return {p.name: sha256_file(p) for p in [run / "best.pt", *out.iterdir()] if p.is_file() and p.name != ".edgetl.lock"}

    kept = files()
    args = [sys.executable, "-m", "edgetl", "export", str(run), "--int8", "--calib-size", "32", "--no-engine", "--qat",
            "--qat-epochs", "3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(out / "qat" / "last.pt", proc, 120)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "run the same export again to continue" in err and "Traceback" not in err
    assert files() == kept
    done = json.loads((out / "qat" / "run.json").read_text())["metrics"]["epochs"]
    assert 1 <= done < 3
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "(resuming)" in r.stdout
    assert json.loads((out / "qat" / "run.json").read_text())["metrics"]["epochs"] == 3
    assert _manifest(run)["qat"]["epochs"] == 3


def test_qat_under_torchrun_trains_on_every_rank_and_rank_0_alone_exports(tiny_run: Path, tmp_path: Path) -> None:
    """Two gloo processes train QAT with DDP; rank 0 alone talks and writes. Under --qat auto, where
    post-training INT8 fits, the other rank waits for rank 0's word and ends without training."""
    run = copy_run(tiny_run, tmp_path / "run")
    args = ["export", str(run), "--int8", "--calib-size", "32", "--no-engine", "--quantize-stem"]
    done = subprocess.run([*TORCHRUN, *args, "--qat"], capture_output=True, text=True, timeout=600,
                          env=TORCHRUN_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("quantization-aware training: 1 epoch(s)") == 1, done.stdout  # only rank 0 talks
    assert "on 2 processes" in done.stdout and done.stdout.count("model.int8.onnx") >= 1
    trained = json.loads((run / "export" / "qat" / "run.json").read_text())
    assert trained["world_size"] == 2 and trained["status"] == "finished"
    man = _manifest(run)
    q, entry = man["qat"], next(a for a in man["artifacts"] if a["file"] == "model.int8.onnx")
    assert q["world_size"] == 2 and q["used"] == entry["qat"]
    assert q["qat"]["top1"] > q["ptq"]["top1"] - 2.0  # one epoch at a tenth of the LR keeps the accuracy
    assert_tensorrt_int8_shape(onnx.load(str(run / "export" / "model.int8.onnx")),
                               [x["name"] for x in entry.get("float_layers", [])])
    before = torch.load(run / "best.pt", weights_only=True)["model"]
    after = torch.load(run / "export" / "qat" / "best.pt", weights_only=True)["model"]
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.endswith("weight"))

    auto = subprocess.run([*TORCHRUN, *args, "--qat", "auto"], capture_output=True, text=True, timeout=600,
                          env=TORCHRUN_ENV)
    assert auto.returncode == 0, auto.stderr[-3000:]
    assert "quantization-aware" not in auto.stdout and "qat" not in _manifest(run)


def test_export_under_torchrun_without_qat_is_refused(tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="under torchrun trains only with --int8 --qat"):
        export(ExportConfig(run=str(tiny_run), int8=True, engine=False))
