"""`edgetl auto`: an Optuna search of real fine-tuning trials, finalists exported and timed, a winner run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for

from edgetl.auto.config import OFFLINE_MODELS, AutoConfig
from edgetl.errors import UsageError

pytest.importorskip("optuna", reason="the auto extra (optuna) is not installed")

TINY = dict(data="digits", models="timm/test_resnet", weights="none", strategies="full,head", img_sizes="32",
            epochs=2, batch_size=32, workers=0, lr_min=1e-3, lr_max=5e-3, time_budget="10m")


def test_auto_on_digits_writes_the_search_and_a_winner_that_exports(tmp_path: Path) -> None:
    from edgetl.auto.search import auto
    from edgetl.export.config import ExportConfig
    from edgetl.export.pipeline import export

    out = tmp_path / "search"
    lines: list[str] = []
    outcome = auto(AutoConfig(**TINY, out=str(out), trials=3, finalists=2), log=lines.append)
    doc = json.loads((out / "auto.json").read_text())
    assert len(doc["trials"]) == 3 and {t["state"] for t in doc["trials"]} <= {"complete", "pruned"}
    assert all((out / t["folder"] / "run.json").exists() for t in doc["trials"])
    assert any(ln.startswith("trial 0 ") and "min left" in ln for ln in lines)  # progress: best so far, time left
    timed = [f for f in doc["finalists"] if f["status"] == "ok"]
    assert timed and all(f["latency_ms"] > 0 and f["numerics"] for f in timed)
    assert doc["winner"]["trial"] == max(timed, key=lambda f: f["top1"])["trial"]
    assert (out / "pareto.png").stat().st_size > 0
    run = json.loads((out / "winner" / "run.json").read_text())
    assert run["chosen_by"]["trial"] == outcome.winner["trial"] and "highest ort-int8 top-1" in run["chosen_by"]["why"]
    report = export(ExportConfig(run=str(out / "winner"), int8=True, engine=False, calib_size=32))
    assert report.accuracy["int8"]["top1"] > 50


def test_a_tensorrt_target_without_tensorrt_is_ranked_by_top1_with_gflops_as_the_stated_proxy(tmp_path: Path) -> None:
    from edgetl.auto.search import auto
    from edgetl.runtime.tensorrt import available

    if available()[0]:
        pytest.skip("TensorRT runs here: trt targets are timed, not ranked by a proxy")
    out = tmp_path / "search"
    with pytest.raises(UsageError, match="--max-latency-ms needs the finalists timed as trt-int8"):
        auto(AutoConfig(**TINY, out=str(out), target="trt-int8", max_latency_ms=1.0))
    assert not (out / "auto.db").exists()  # refused before any work
    outcome = auto(AutoConfig(**{**TINY, "epochs": 1}, out=str(out), target="trt-int8", trials=2, finalists=1))
    doc = json.loads((out / "auto.json").read_text())
    assert doc["latency_proxy"].startswith("GFLOPs per image") and "TensorRT cannot run here" in doc["latency_proxy"]
    scored = [f for f in doc["finalists"] if f["status"] == "ok"]
    assert len(scored) == 1 and scored[0]["latency_ms"] is None and scored[0]["gflops"] > 0
    assert (scored[0]["artifact"], scored[0]["numerics"]) == ("model.int8.onnx", "simulated")  # what TensorRT builds
    assert outcome.winner["trial"] == scored[0]["trial"] and "not timed: ranked with GFLOPs per image" in doc["why"]
    assert (out / "pareto.png").stat().st_size > 0


def test_interrupted_search_resumes_without_repeating_finished_trials(tmp_path: Path) -> None:
    out = tmp_path / "search"
    args = [sys.executable, "-m", "edgetl", "auto", "--out", str(out), "--trials", "3", "--finalists", "1",
            *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_for(out / "trials" / "001", proc, 180)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "--resume" in err and "Traceback" not in err
    first = out / "trials" / "000" / "best.pt"
    stamp = first.stat().st_mtime_ns
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "auto.json").read_text())
    states = [t["state"] for t in doc["trials"]]
    assert states[0] in ("complete", "pruned") and states[1] == "fail"  # the interrupted one, not rerun
    assert len([s for s in states if s != "fail"]) == 3
    assert first.stat().st_mtime_ns == stamp  # trial 0 was not trained again
    assert doc["winner"] is not None and (out / "winner" / "run.json").exists()


def test_the_latency_limit_excludes_slower_finalists() -> None:
    from edgetl.auto.search import _choose

    fast = {"trial": 1, "status": "ok", "top1": 85.0, "latency_ms": 1.0, "numerics": "onnxruntime-cpu"}
    slow = {"trial": 2, "status": "ok", "top1": 90.0, "latency_ms": 5.0, "numerics": "onnxruntime-cpu"}
    assert _choose(AutoConfig(), [dict(fast), dict(slow)])[0]["trial"] == 2
    winner, why = _choose(AutoConfig(max_latency_ms=2.0), [dict(fast), dict(slow)])
    assert winner["trial"] == 1 and "1 were over the limit" in why
    winner, why = _choose(AutoConfig(max_latency_ms=0.5), [dict(fast), dict(slow)])
    assert winner is None and "no finalist is within --max-latency-ms 0.5" in why


def test_a_latency_limit_keeps_looking_and_skips_sizes_already_too_slow(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """The choice of finalists alone: a latency table stands in for export + bench (the run above does both)."""
    import time

    from edgetl.auto import search

    latency = {("efficientnet_lite1", 160): 2.6, ("efficientnet_lite1", 128): 2.0, ("efficientnet_lite1", 96): 1.2,
               ("efficientnet_lite0", 96): 0.8, ("efficientnet_lite0", 64): 0.4}
    measured = []

    def table(cfg: AutoConfig, run: Path, log: object, proxy: object) -> dict:
        params = trials[int(run.name)]["params"]
        measured.append(run.name)
        return {"status": "ok", "latency_ms": latency[params["model"], params["img_size"]],
                "top1": 80.0 - len(measured), "numerics": "onnxruntime-cpu", "artifact": "model.int8-cpu.onnx",
                "batch_size": 1}

    monkeypatch.setattr(search, "_measure", table)
    specs = [("efficientnet_lite1", 128), ("efficientnet_lite1", 160), ("efficientnet_lite1", 96),
             ("efficientnet_lite0", 96), ("efficientnet_lite0", 64)]
    trials = [{"number": i, "state": "complete", "val_top1": 90.0 - i, "folder": str(i), "epochs": 3,
               "stopped": None, "last_val_top1": None,
               "params": {"model": m, "img_size": size, "strategy": "full", "lr": 1e-3}}
              for i, (m, size) in enumerate(specs)]
    cfg = AutoConfig(out=str(tmp_path), max_latency_ms=1.0, finalists=2)
    finalists = search._finalists(cfg, trials, time.monotonic() + 3600, lambda *a, **k: None)
    assert measured == ["0", "2", "3", "4"]  # trial 1 (lite1 at 160 px) is not exported: 128 px was too slow
    assert finalists[1]["status"].startswith("skipped: trial 0, the same model at 128 px, took 2.00 ms")
    assert [f["trial"] for f in finalists if f["status"] == "ok" and f["latency_ms"] <= 1.0] == [3, 4]
    assert search._choose(cfg, finalists)[0]["trial"] == 3
    unlimited = search._finalists(AutoConfig(out=str(tmp_path), finalists=2), trials, time.monotonic() + 3600,
                                  lambda *a, **k: None)
    assert [f["trial"] for f in unlimited] == [0, 1]  # without a limit: the two most accurate, as before


def test_offline_candidates_are_the_bundled_models_and_any_cached_weights(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Where torchvision's resnet18 weights sit in the torch hub cache, `--models offline` (the default) offers
    resnet18 beside Lite0/1/2; the list is kept in the study, so --resume samples the same choices."""
    import optuna
    from torchvision.models import ResNet18_Weights

    from edgetl.auto.search import _candidates

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub.get_dir() reads it on every call
    cfg, lines = AutoConfig(), []
    assert _candidates(cfg, optuna.create_study(), lines.append) == list(OFFLINE_MODELS)
    assert "no other cached weights found" in lines[-1]
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / Path(ResNet18_Weights.DEFAULT.url).name).write_bytes(b"weights")
    study = optuna.create_study()
    assert _candidates(cfg, study, lines.append) == [*OFFLINE_MODELS, "resnet18"]
    assert "resnet18 (weights cached here)" in lines[-1]
    (checkpoints / Path(ResNet18_Weights.DEFAULT.url).name).unlink()
    assert _candidates(cfg, study, lines.append) == [*OFFLINE_MODELS, "resnet18"]  # as the study began
    assert _candidates(AutoConfig(models="timm/test_resnet"), optuna.create_study(), lines.append) == ["timm/test_resnet"]


def test_auto_options_are_checked_before_any_work() -> None:
    from edgetl.models import BUNDLED_WEIGHTS

    assert tuple(BUNDLED_WEIGHTS) == OFFLINE_MODELS  # the offline defaults, named without importing torch
    for bad in (dict(strategies="sideways"), dict(time_budget="soon"), dict(img_sizes="8"), dict(lr_min=1.0),
                dict(target="tpu")):
        with pytest.raises(UsageError):
            AutoConfig(**bad).validate()
    assert AutoConfig(time_budget="1.5h").validate().budget_seconds == 5400
