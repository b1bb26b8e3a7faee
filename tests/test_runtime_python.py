"""The deploy runtime on the oldest Python it supports, 3.8 (JetPack 5): statically, with vermin over the
files `edgetl-runtime` ships, and for real in the 3.8 venv that `make test` installs edgetl-runtime into
with the README's command, against the same artifacts scored by the full install on this Python."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.runtime import Predictor

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging" / "runtime"
PY38 = ROOT / ".venv-rt38" / "bin" / "python"
needs_py38 = pytest.mark.skipif(
    not (ROOT / ".venv-rt38" / ".edgetl-installed").exists(),
    reason=".venv-rt38 is absent: `make test` builds it where a Python 3.8 (python3.8 or pyenv's 3.8.x) exists")
# Shipped in the runtime's packages but never imported there: they need PyTorch or the training side.
TORCH_SIDE = {"cli/train.py", "cli/auto.py", "cli/demo.py", "cli/export.py", "data/cache.py", "data/feed.py",
              "data/sources.py", "models.py", "evaluate.py", "runtime/torch.py"}


def _runtime_files() -> list[Path]:
    packages = tomllib.loads((PACKAGING / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    files = {p for pkg in packages for p in (ROOT / pkg.replace(".", "/")).glob("*.py")}
    return sorted(p for p in files if str(p.relative_to(ROOT / "edgetl")) not in TORCH_SIDE)


def test_the_runtime_files_need_nothing_newer_than_python_3_8() -> None:
    files = _runtime_files()
    assert len(files) > 40 and ROOT / "edgetl" / "runtime" / "tensorrt.py" in files
    vermin = Path(sys.executable).parent / "vermin"
    r = subprocess.run([str(vermin), "-t=3.8-", "--no-tips", "--violations", *map(str, files)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_runtime_distribution_leaves_the_training_side_out() -> None:
    packages = tomllib.loads((PACKAGING / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert "edgetl.runtime" in packages and "edgetl.engines" in packages
    assert not any(p.startswith(("edgetl.train", "edgetl.export", "edgetl.auto", "edgetl.explain")) for p in packages)


@pytest.fixture(scope="module")
def rt38() -> Path:
    """.venv-rt38 with this checkout's code (its dependencies came with `make test`'s install)."""
    r = subprocess.run([str(PY38), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
                        str(PACKAGING)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return PY38.parent / "edgetl"


def _run(edgetl: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(edgetl), *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})


@needs_py38
def test_the_3_8_runtime_lists_the_deploy_commands_and_points_training_elsewhere(rt38: Path, tmp_path: Path) -> None:
    version = subprocess.run([str(PY38), "-c", "import sys, edgetl; print(sys.version_info[:2], edgetl.DISTRIBUTION)"],
                             capture_output=True, text=True, check=True, cwd=tmp_path)
    assert version.stdout.strip() == "(3, 8) edgetl-runtime"
    shown = _run(rt38, "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    for command in ("build", "predict", "doctor", "bench"):
        assert f"│ {command} " in shown.stdout
    assert "│ finetune " not in shown.stdout
    r = _run(rt38, "finetune", "--data", "digits", cwd=tmp_path)
    assert r.returncode == 2 and "needs Python 3.10+, PyTorch and the full `edgetl`" in r.stderr
    assert "Traceback" not in r.stderr


@needs_py38
def test_the_3_8_runtime_predicts_what_the_full_install_predicts(rt38: Path, tiny_export: Path, tmp_path: Path) -> None:
    images = _digit_images(tmp_path / "digits", per_class=3)
    for name in ("model.onnx", "model.int8.onnx"):
        artifact = tiny_export / "export" / name
        r = _run(rt38, "predict", str(artifact), str(images), "--json", "--top-k", "3", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        old = {p["source"]: p for p in map(json.loads, r.stdout.splitlines())}
        here = {p.source: p for p in Predictor(artifact).iter_predict(sorted(images.rglob("*.png")), 3, 8)}
        assert old.keys() == here.keys() and len(old) == 30
        for source, p in here.items():  # INT8 outputs are coarse: a near-tie may break the other way
            there = {t["index"]: t["probability"] for t in old[source]["top"]}
            assert there.get(p.top[0][0]) == pytest.approx(p.top[0][2], abs=0.02), source
            assert max(there.values()) == pytest.approx(p.top[0][2], abs=0.02), source


@needs_py38
def test_the_3_8_runtime_benches_the_run_and_skips_what_it_cannot_run(rt38: Path, tiny_export: Path,
                                                                       tmp_path: Path) -> None:
    images = _digit_images(tmp_path / "digits", per_class=3)
    report = tmp_path / "bench.json"
    r = _run(rt38, "bench", str(tiny_export), "--data", str(images), "--backends", "torch,ort-fp32,ort-int8,trt-int8",
             "--batch-size", "1", "--iters", "20", "--no-e2e", "--json", str(report), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(report.read_text())["rows"]
    status = {(row["backend"], row["artifact"]): row["status"] for row in rows}
    assert status[("torch", "best.pt")] == "skipped: PyTorch is not installed here"
    assert status[("ort-fp32", "model.onnx")] == "ok" and status[("ort-int8", "model.int8.onnx")] == "ok"
    assert status[("trt-int8", None)].startswith("skipped: TensorRT cannot run here")
    fp32 = next(row for row in rows if row["artifact"] == "model.onnx")
    preds = Predictor(tiny_export / "export" / "model.onnx").iter_predict(sorted(images.rglob("*.png")), 1, 8)
    expected = 100 * np.mean([p.top[0][1] == Path(p.source).parent.name for p in preds])
    assert fp32["top1"] == pytest.approx(expected, abs=1e-3)  # the report rounds to 3 decimals


@needs_py38
def test_the_3_8_runtime_doctor_runs_onnx_runtime_and_build_says_what_is_missing(rt38: Path, tiny_export: Path,
                                                                                  tmp_path: Path) -> None:
    r = _run(rt38, "doctor", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["python"]["version"].startswith("3.8.")
    assert report["backends"]["onnxruntime-cpu"]["ok"] is True
    assert report["backends"]["tensorrt"]["install"] == "pip install 'edgetl-runtime[trt]'"
    shutil.copytree(tiny_export / "export", tmp_path / "export")
    built = _run(rt38, "build", str(tmp_path / "export" / "model.int8.onnx"), "--int8", cwd=tmp_path)
    assert built.returncode == 2 and built.stderr.count("\n") == 1, built.stderr
    assert "tensorrt" in built.stderr.lower() and "edgetl-runtime[trt]" in built.stderr


def _digit_images(root: Path, per_class: int) -> Path:
    """An ImageFolder of real scikit-learn digits (classes "0".."9", as the digits run names them)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        picks = np.flatnonzero(digits.target == label)[-per_class:]
        for i in picks:
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").save(root / str(label) / f"{i}.png")
    return root
