"""The deploy side: Predictor and `edgetl predict` without PyTorch, preprocessing parity, metadata errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.data.sources import load_data
from edgetl.evaluate import evaluate_run, evaluate_runner
from edgetl.images import Preprocess
from edgetl.runtime import Predictor
from edgetl.runtime.onnxruntime import OrtRunner

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; sys.modules['tensorrt'] = None; "


@pytest.mark.parametrize("artifact", ["model.onnx", "model.int8.onnx", "model.fp16.onnx"])
def test_predictor_top1_equals_eval(tiny_export: Path, artifact: str) -> None:
    """Predictor (PIL/numpy preprocessing) scores the validation split like `edgetl eval` does."""
    val = load_data("digits").val
    pred = Predictor(tiny_export / "export" / artifact)
    assert pred.classes == [str(i) for i in range(10)] and pred.preprocess.size == 32
    preds = pred.predict(val.items, top_k=3, batch_size=50)
    top1 = 100.0 * np.mean([p.top[0][0] == y for p, y in zip(preds, val.labels)])
    if artifact == "model.onnx":
        _, res, _ = evaluate_run(tiny_export)  # the PyTorch checkpoint
    else:
        rm_pp = Preprocess.from_dict(json.loads((tiny_export / "run.json").read_text())["preprocess"])
        res = evaluate_runner(OrtRunner(tiny_export / "export" / artifact), val, rm_pp, 10)
    assert top1 == pytest.approx(res.top1, abs=0.3)  # at most one borderline image of 359 may flip
    p = preds[0]
    assert len(p.top) == 3 and all(0 <= prob <= 1 for _, _, prob in p.top)
    assert p.top[0][2] >= p.top[1][2] >= p.top[2][2]


def test_predict_onnx_never_imports_torch(tiny_export: Path, tmp_path: Path) -> None:
    img = tmp_path / "digit.png"
    Image.fromarray(load_data("digits").val.items[0]).save(img)
    onnx_path = tiny_export / "export" / "model.int8.onnx"
    code = (BLOCK_TORCH + "from edgetl.runtime import Predictor; "
            f"p = Predictor({str(onnx_path)!r}).predict([{str(img)!r}], top_k=2); "
            "assert len(p[0].top) == 2; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'tensorrt') and sys.modules[m] is not None))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    # the CLI too: `edgetl predict` with torch unimportable
    cli = BLOCK_TORCH + "sys.argv = ['edgetl'] + sys.argv[1:]; from edgetl.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", cli, "predict", str(onnx_path), str(img), "--json", "--top-k", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout.strip().splitlines()[0])
    assert line["source"] == str(img) and line["top"][0]["class"] in [str(i) for i in range(10)]


def test_predict_cli_table_and_folders(tiny_export: Path, tmp_path: Path) -> None:
    items = load_data("digits").val.items
    for i in range(3):
        (tmp_path / "imgs" / "sub").mkdir(parents=True, exist_ok=True)
        Image.fromarray(items[i]).save(tmp_path / "imgs" / "sub" / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("skip me")
    r = subprocess.run([sys.executable, "-m", "edgetl", "predict", str(tiny_export / "export" / "model.onnx"),
                        str(tmp_path / "imgs"), "--top-k", "2"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(".png") == 3 and "top-2" in r.stdout and "notes.txt" not in r.stdout


def test_artifact_without_metadata_is_refused(tiny_export: Path, tmp_path: Path) -> None:
    lone = tmp_path / "model.onnx"
    lone.write_bytes((tiny_export / "export" / "model.onnx").read_bytes())
    r = subprocess.run([sys.executable, "-m", "edgetl", "predict", str(lone), str(lone)], capture_output=True, text=True)
    assert r.returncode == 4 and "no manifest.json or run.json" in r.stderr


def test_predict_bad_image_names_the_file(tiny_export: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    r = subprocess.run([sys.executable, "-m", "edgetl", "predict", str(tiny_export / "export" / "model.onnx"), str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 3 and "bad.jpg" in r.stderr and "Traceback" not in r.stderr
