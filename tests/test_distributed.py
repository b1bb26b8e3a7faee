"""`torchrun -m edgetl finetune`: two CPU processes over gloo reach one process's accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ARGS = ["finetune", "--data", "digits", "--model", "timm/test_resnet", "--weights", "none", "--img-size", "32",
        "--epochs", "3", "--batch-size", "32", "--lr", "3e-3", "--workers", "0", "--quiet", "--json"]


def test_two_gloo_processes_match_one(tmp_path: Path) -> None:
    one = subprocess.run([sys.executable, "-m", "edgetl", *ARGS, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "edgetl", *ARGS, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    summaries = [json.loads(ln) for ln in two.stdout.splitlines() if ln.startswith("{")]
    assert len(summaries) == 1  # only rank 0 speaks
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["world_size"] == 2 and run["status"] == "finished"
    a, b = json.loads(one.stdout)["val_top1"], summaries[0]["val_top1"]
    assert b > 85 and abs(a - b) <= 4.0, (a, b)  # same recipe, different sample order: within noise
    from edgetl.evaluate import evaluate_run

    _, res, _ = evaluate_run(tmp_path / "two")  # the whole split, one process: the ranks' sum covered it all
    assert res.images == 359 and res.top1 == __import__("pytest").approx(b, abs=1e-6)
