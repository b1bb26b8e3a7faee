"""`torchrun -m edgetl finetune`: two CPU processes over gloo reach one process's accuracy and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TORCHRUN, TORCHRUN_ENV


def _args() -> list[str]:
    return ["finetune", "--data", "digits", "--model", "timm/test_resnet", "--weights", "none", "--img-size", "32",
            "--epochs", "3", "--batch-size", "32", "--lr", "3e-3", "--workers", "0", "--quiet", "--json"]




def _two_processes(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=600, env=TORCHRUN_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted 3-epoch run on two processes, shared by the tests below."""
    out = tmp_path_factory.mktemp("ddp") / "two"
    return out, _two_processes(*_args(), "--out", str(out))


def test_two_gloo_processes_match_one(tmp_path: Path, two: tuple[Path, subprocess.CompletedProcess]) -> None:
    one = subprocess.run([sys.executable, "-m", "edgetl", *_args(), "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    folder, two = two
    summaries = [json.loads(ln) for ln in two.stdout.splitlines() if ln.startswith("{")]
    assert len(summaries) == 1  # only rank 0 speaks
    run = json.loads((folder / "run.json").read_text())
    assert run["world_size"] == 2 and run["status"] == "finished"
    a, b = json.loads(one.stdout)["val_top1"], summaries[0]["val_top1"]
    assert b > 85 and abs(a - b) <= 4.0, (a, b)  # same recipe, different sample order: within noise
    from edgetl.evaluate import evaluate_run

    _, res, _ = evaluate_run(folder)  # the whole split, one process: the ranks' sum covered it all
    assert res.images == 359 and res.top1 == __import__("pytest").approx(b, abs=1e-6)


def test_resume_under_two_gloo_processes_equals_uninterrupted(tmp_path: Path,
                                                             two: tuple[Path, subprocess.CompletedProcess]) -> None:
    """SIGTERM to the whole torchrun group after epoch 1, then --resume: the same weights as a run never stopped."""
    import torch

    cut = tmp_path / "cut"
    proc = subprocess.Popen([*TORCHRUN, *_args(), "--out", str(cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (cut / "metrics.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    run = json.loads((cut / "run.json").read_text())
    assert run["status"] == "interrupted" and 1 <= run["metrics"]["epochs"] < 3, run["status"]
    _two_processes("finetune", "--resume", str(cut), "--quiet", "--json")
    run = json.loads((cut / "run.json").read_text())
    assert run["status"] == "finished" and run["metrics"]["epochs"] == 3 and run["world_size"] == 2
    a = torch.load(two[0] / "last.pt", weights_only=True)["model"]
    b = torch.load(cut / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
