"""`torchrun -m edgetl finetune`: two CPU processes over gloo reach one process's accuracy and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _args(epochs: int = 3) -> list[str]:
    return ["finetune", "--data", "digits", "--model", "timm/test_resnet", "--weights", "none", "--img-size", "32",
            "--epochs", str(epochs), "--batch-size", "32", "--lr", "3e-3", "--workers", "0", "--quiet", "--json"]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "edgetl"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _two_processes(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_gloo_processes_match_one(tmp_path: Path) -> None:
    one = subprocess.run([sys.executable, "-m", "edgetl", *_args(), "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = _two_processes(*_args(), "--out", str(tmp_path / "two"))
    summaries = [json.loads(ln) for ln in two.stdout.splitlines() if ln.startswith("{")]
    assert len(summaries) == 1  # only rank 0 speaks
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["world_size"] == 2 and run["status"] == "finished"
    a, b = json.loads(one.stdout)["val_top1"], summaries[0]["val_top1"]
    assert b > 85 and abs(a - b) <= 4.0, (a, b)  # same recipe, different sample order: within noise
    from edgetl.evaluate import evaluate_run

    _, res, _ = evaluate_run(tmp_path / "two")  # the whole split, one process: the ranks' sum covered it all
    assert res.images == 359 and res.top1 == __import__("pytest").approx(b, abs=1e-6)


def test_resume_under_two_gloo_processes_equals_uninterrupted(tmp_path: Path) -> None:
    """SIGTERM to the whole torchrun group after epoch 1, then --resume: the same weights as a run never stopped."""
    import torch

    _two_processes(*_args(epochs=4), "--out", str(tmp_path / "straight"))
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*TORCHRUN, *_args(epochs=4), "--out", str(cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (cut / "metrics.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    run = json.loads((cut / "run.json").read_text())
    assert run["status"] == "interrupted" and 1 <= run["metrics"]["epochs"] < 4, run["status"]
    _two_processes("finetune", "--resume", str(cut), "--quiet", "--json")
    run = json.loads((cut / "run.json").read_text())
    assert run["status"] == "finished" and run["metrics"]["epochs"] == 4 and run["world_size"] == 2
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(cut / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
