"""`edgetl explain`: the report folder, class-activation maps, weight change against the starting weights,
INT8 flips against a direct comparison, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import make_image_folder

VOID = {"meta", "img", "br", "link", "input", "hr"}


def edgetl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgetl", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})


class _Checker(HTMLParser):
    """Every non-void element closed in order; the image sources collected."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack.pop() == tag, f"</{tag}> closes nothing open"


@pytest.fixture(scope="module")
def explained(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("explain") / "run"
    shutil.copytree(tiny_export, run)
    r = edgetl("explain", str(run), "--limit", "12")
    assert r.returncode == 0, r.stderr
    assert f"report in {run / 'explain' / 'index.html'}" in r.stdout
    return run


def test_the_report_is_a_valid_page_whose_images_all_exist(explained: Path) -> None:
    folder = explained / "explain"
    checker = _Checker()
    checker.feed((folder / "index.html").read_text())
    checker.close()
    assert checker.doctype and checker.stack == []
    assert len(checker.images) >= 2 * 12 + 2  # 12 crops and maps, the weight chart, the confusion matrix
    assert all((folder / src).is_file() for src in checker.images)
    doc = json.loads((folder / "explain.json").read_text())
    assert {"where_the_model_looks", "what_finetuning_changed", "what_int8_changed"} <= set(doc)
    looks = doc["where_the_model_looks"]["images"]
    assert len(looks) == 12 and [im["wrong"] for im in looks] == sorted((im["wrong"] for im in looks), reverse=True)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt install chromium); CI runs without one")
def test_the_report_renders_in_headless_chromium_with_its_pictures(explained: Path, tmp_path: Path) -> None:
    """The page as a browser draws it, offline: the heat maps and charts show up as colour in the picture."""
    from PIL import Image

    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1400"]
    page = (explained / "explain" / "index.html").as_uri()
    r = subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", page], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1400, 1000)
    saturated = (pixels.max(axis=2).astype(int) - pixels.min(axis=2)) > 80  # map colours, not grey text
    assert saturated.mean() > 0.01


def test_int8_flips_match_a_direct_comparison(explained: Path) -> None:
    from edgetl.data.sources import eval_transform, make_loader
    from edgetl.evaluate import eval_split, load_run_model

    rm = load_run_model(explained)
    _, val = eval_split(rm, None)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")  # the TensorRT layout, simulated,
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # as edgetl documents it
    session = ort.InferenceSession(str(explained / "export" / "model.int8.onnx"), opts,
                                   providers=["CPUExecutionProvider"])
    fp32, int8, labels = [], [], []
    with torch.no_grad():
        for x, y in make_loader(val, eval_transform(rm.preprocess), 64, shuffle=False, workers=0):
            fp32.append(rm.model(x).argmax(1).numpy())
            int8.append(session.run(None, {"input": x.numpy()})[0].argmax(1))
            labels.append(y.numpy())
    fp32_a, int8_a, labels_a = map(np.concatenate, (fp32, int8, labels))
    flipped = np.flatnonzero(fp32_a != int8_a)
    doc = json.loads((explained / "explain" / "explain.json").read_text())["what_int8_changed"]
    assert doc["flips"] == len(flipped) and [f["index"] for f in doc["flipped"]] == list(flipped[:12])
    net = 100.0 * ((int8_a == labels_a).sum() - (fp32_a == labels_a).sum()) / len(labels_a)
    assert doc["delta_top1"] == pytest.approx(net)


def test_a_cam_has_the_input_size_and_is_not_constant(tiny_run: Path) -> None:
    from edgetl.data.sources import eval_transform, make_loader
    from edgetl.evaluate import eval_split, load_run_model
    from edgetl.explain.report import cams, target_layer

    rm = load_run_model(tiny_run)
    _, val = eval_split(rm, None)
    x, _ = next(iter(make_loader(val.subset(range(4)), eval_transform(rm.preprocess), 4, shuffle=False, workers=0)))
    with torch.no_grad():
        predicted = rm.model(x).argmax(1).tolist()
    assert target_layer(rm, x)[0].startswith("layer3")  # layer4 is 1x1 at 32 px: its maps would be constant
    for method in ("gradcam", "gradcam++", "eigencam"):
        maps = cams(rm, x, predicted, method)
        assert maps.shape == (4, 32, 32) and all(m.std() > 0 for m in maps), method


def test_weight_change_is_zero_where_head_froze_and_not_for_the_head(tmp_path: Path) -> None:
    from edgetl.evaluate import load_run_model
    from edgetl.explain.report import weight_change
    from edgetl.train.config import TrainConfig
    from edgetl.train.loop import finetune

    run = tmp_path / "head"
    finetune(TrainConfig(data="digits", out=str(run), model="timm/test_resnet", weights="none", img_size=32,
                         epochs=1, batch_size=64, strategy="head", workers=0, seed=7))
    rows = weight_change(load_run_model(run))
    backbone, head = rows[:-1], rows[-1]
    assert backbone and all(r["frozen"] and r["relative_change"] == 0.0 for r in backbone)
    assert head["stage"] == "head" and not head["frozen"] and head["relative_change"] > 0


def test_bad_input_is_one_line_with_its_exit_code(tiny_export: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for name in ("model.int8.onnx", "manifest.json"):
        shutil.copy(tiny_export / "export" / name, other / name)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["classes"] = [f"c{i}" for i in range(10)]
    (other / "manifest.json").write_text(json.dumps(manifest))
    r = edgetl("explain", str(tiny_export), "--artifact", str(other / "model.int8.onnx"), "--out", str(tmp_path / "x"))
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "another run" in r.stderr
    folder = make_image_folder(tmp_path / "imgs", classes=1, per_class=2)
    broken = next(folder.rglob("*.png"))
    broken.write_bytes(b"not an image")
    r = edgetl("explain", str(tiny_export), str(folder), "--out", str(tmp_path / "y"))
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and str(broken) in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
