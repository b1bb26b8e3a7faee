"""Pictures for people: training curves from every run, `eval --plot` and `bench --plot`, and what a
machine without matplotlib gets (training as before, a hint, and --plot refused before any work)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

TINY = ["--data", "digits", "--model", "timm/test_resnet", "--weights", "none", "--img-size", "32",
        "--batch-size", "32", "--workers", "0"]
NO_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None; from edgetl.cli import main; sys.argv[0] = 'edgetl'; main()"


def edgetl(*args: str, block_matplotlib: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", NO_MATPLOTLIB] if block_matplotlib else [sys.executable, "-m", "edgetl"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})


def _picture(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("L"))
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 300 and pixels.std() > 10  # drawn, not blank
    return pixels


def test_finetune_draws_its_curves_beside_metrics_csv(tiny_run: Path) -> None:
    pixels = _picture(tiny_run / "curves.png")
    assert pixels.shape[1] > pixels.shape[0]  # loss and top-1 side by side
    assert (tiny_run / "curves.png").stat().st_mtime >= (tiny_run / "metrics.csv").stat().st_mtime


def test_eval_plot_draws_the_confusion_matrix(tiny_run: Path, tmp_path: Path) -> None:
    plot = tmp_path / "confusion.png"
    r = edgetl("eval", str(tiny_run), "--plot", str(plot), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["classes"] == [str(i) for i in range(10)]
    pixels = _picture(plot)
    assert abs(pixels.shape[0] - pixels.shape[1]) < 0.3 * pixels.shape[0]  # a square matrix and its colour bar


def test_without_matplotlib_training_works_and_says_how_to_get_pictures(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = edgetl("finetune", *TINY, "--epochs", "1", "--out", str(run), block_matplotlib=True)
    assert r.returncode == 0, r.stderr
    assert "curves.png not drawn: matplotlib is not installed (pip install 'edgetl[plots]')" in r.stderr
    assert not (run / "curves.png").exists()
    with open(run / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    r = edgetl("eval", str(run), "--plot", str(tmp_path / "c.png"), block_matplotlib=True)
    assert r.returncode == 2 and "--plot needs matplotlib" in r.stderr and "pip install 'edgetl[plots]'" in r.stderr
    assert "top-1" not in r.stdout  # refused before evaluating
