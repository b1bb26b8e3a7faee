"""`edgetl explain`: what the model looks at, what fine-tuning changed, and what INT8 changed.

One self-contained report folder: ``index.html`` (images beside it, no network, no JavaScript) and
``explain.json`` with the same content for scripts.

- Where the model looks: class-activation maps (pytorch-grad-cam) of the predicted class on the PyTorch
  model, at its last convolution, drawn over the centre crop the model saw (the eval preprocessing), for
  the given images or a stratified sample of the validation split, misclassified ones first.
- What fine-tuning changed: per stage, ``||W_ft - W_pre|| / ||W_pre||`` against the weights the run
  started from (its ``--weights``), frozen stages marked; the confusion matrix and its most confused pairs.
- What INT8 changed: the validation images whose top-1 differs between best.pt and the INT8 artifact
  (a TensorRT-layout file judged in float simulation, as export and bench judge it), flips in both
  directions against the accuracy delta they net out to, and the guard's per-layer sensitivity.

Needs PyTorch, grad-cam and matplotlib (``pip install 'edgetl[explain]'``); the runtime never imports it.
The three sections share one pass of best.pt (and the INT8 artifact) over the validation split.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import extras, plots
from ..data.sources import Split, eval_transform, make_loader, stratified_sample
from ..errors import ArtifactError, UsageError
from ..evaluate import RunModel, eval_split, load_run_model
from ..fileio import atomic_folder, atomic_write_json
from ..images import load_rgb
from ..models import apply_strategy, build, stages
from ..progress import Log, Tick, as_log
from ..runtime.base import Runner
from .config import ExplainConfig
from .page import page

CAM_CLASSES = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "eigencam": "EigenCAM"}


@dataclass
class Shown:
    """One image of the report: what the model saw, its CAM overlay, and its predictions."""

    name: str
    true: str | None
    top: list[tuple[str, float]]
    crop: str  # file names inside the report folder
    cam: str

    @property
    def wrong(self) -> bool:
        return self.true is not None and self.true != self.top[0][0]


def explain(cfg: ExplainConfig, log: Log | None = None) -> dict[str, Any]:
    """Write the report folder; returns what explain.json holds."""
    cfg.validate()
    log = as_log(log)
    for module in ("matplotlib", "pytorch_grad_cam"):
        extras.require(module, "explain", "edgetl explain")
    run = Path(cfg.run)
    rm = load_run_model(run)
    files = _given_images(cfg)
    artifact = _artifact(cfg, run)
    runner = _int8_runner(artifact, rm) if artifact is not None else None
    torch.manual_seed(0)
    with atomic_folder(cfg.out_dir) as out:
        (out / "images").mkdir()
        where, val = eval_split(rm, None)
        with log.task(f"predicting {len(val)} validation images", len(val)) as tick:
            probs, labels, int8_logits = _predict_all(rm, val, cfg.batch_size, runner, tick)
        looks = _where_it_looks(cfg, files, rm, val, probs, labels, out, log)
        changed = _what_finetuning_changed(cfg, rm, val, probs, labels, out)
        int8 = _what_int8_changed(cfg, rm, val, probs, labels, int8_logits, artifact, out) if runner else None
        doc = {"run": str(run), "data": where, "method": cfg.method, "model": rm.run["model"],
               "classes": rm.classes, "where_the_model_looks": looks, "what_finetuning_changed": changed,
               "what_int8_changed": int8}
        atomic_write_json(out / "explain.json", doc)
        (out / "index.html").write_text(page(doc), encoding="utf-8")
    return doc


def _artifact(cfg: ExplainConfig, run: Path) -> Path | None:
    if cfg.artifact is not None:
        path = Path(cfg.artifact)
        if not path.is_file():
            raise UsageError(f"--artifact {path}: no such file")
        return path
    default = run / "export" / "model.int8.onnx"
    return default if default.is_file() else None


def _int8_runner(artifact: Path, rm: RunModel) -> Runner:
    """The artifact's runner as its accuracy is judged (a TensorRT-layout file on CPU: float simulation)."""
    from ..runtime.numerics import judging_runner
    from ..runtime.predictor import Predictor

    predictor = Predictor(artifact)
    if predictor.classes != rm.classes:
        raise ArtifactError(f"{artifact}: its classes {predictor.classes} are not the run's {rm.classes}; "
                            "an artifact of another run?")
    if predictor.preprocess != rm.preprocess:
        raise ArtifactError(f"{artifact}: its preprocessing differs from the run's; an artifact of another run?")
    return judging_runner(predictor.runner)[0]


def _batches(rm: RunModel, split: Split, batch_size: int) -> Any:
    return make_loader(split, eval_transform(rm.preprocess), batch_size, shuffle=False, workers=0)


def _predict_all(rm: RunModel, val: Split, batch_size: int, runner: Runner | None,
                 tick: Tick) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """best.pt's probabilities, the labels, and the INT8 runner's logits, in one pass."""
    probs, labels, int8 = [], [], []
    with torch.no_grad():
        for x, y in _batches(rm, val, batch_size):
            probs.append(torch.softmax(rm.model(x), dim=1).numpy())
            labels.append(y.numpy())
            if runner is not None:
                int8.append(runner.run(x.numpy()))
            tick(len(y))
    return np.concatenate(probs), np.concatenate(labels), (np.concatenate(int8) if int8 else np.empty(0))


def target_layer(rm: RunModel, x: torch.Tensor) -> tuple[str, nn.Module]:
    """The last stage of the backbone (as `--strategy partial` counts them) whose output on ``x`` is still a
    map larger than 1x1: where class-activation maps are read. A small input can leave the last stages at
    1x1, where every map would be one constant."""
    model = rm.model
    blocks = []
    for names in stages(model, rm.run.get("head") or "classifier"):
        prefix = os.path.commonprefix([n.rsplit(".", 1)[0] + "." for n in names]).rsplit(".", 1)[0]
        if prefix:
            blocks.append((prefix, model.get_submodule(prefix)))
    sizes: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: sizes.__setitem__(
        n, out.shape[-1] * out.shape[-2] if isinstance(out, torch.Tensor) and out.dim() == 4 else 0))
        for n, m in blocks]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    spatial = [(n, m) for n, m in blocks if sizes.get(n, 0) > 1]
    if not spatial:
        raise UsageError(f"{rm.run['model']}: no stage keeps a spatial map at this input size, so there is "
                         "nothing for a class-activation map to show")
    return spatial[-1]


def cams(rm: RunModel, x: torch.Tensor, classes: list[int], method: str) -> np.ndarray:
    """(N, H, W) maps in [0, 1] at the input's size, for ``classes`` (one per image)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _, layer = target_layer(rm, x)
    cam_class = getattr(pytorch_grad_cam, CAM_CLASSES[method])
    with cam_class(model=rm.model, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])


def displayed(rm: RunModel, x: torch.Tensor) -> np.ndarray:
    """The centre crops the model saw, (N, H, W, 3) floats in [0, 1]: normalization undone."""
    mean = torch.tensor(rm.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(rm.preprocess.std).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _save_pair(out: Path, stem: str, crop: np.ndarray, cam: np.ndarray) -> tuple[str, str]:
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image

    side = max(160, crop.shape[0])  # small inputs (digits at 64 px) shown larger, without smoothing
    crop_png, cam_png = f"images/{stem}-crop.png", f"images/{stem}-cam.png"
    for name, pixels in ((crop_png, (crop * 255).round().astype(np.uint8)),
                         (cam_png, show_cam_on_image(crop.astype(np.float32), cam, use_rgb=True))):
        Image.fromarray(pixels).resize((side, side), Image.NEAREST).save(out / name)
    return crop_png, cam_png


def _given_images(cfg: ExplainConfig) -> list[Path]:
    """IMAGES as files, each decoded once up front: an unreadable one is a DataError naming it (exit 3)."""
    from ..runtime.predictor import expand_images

    files = expand_images([Path(p) for p in cfg.images])
    for f in files:
        load_rgb(f)
    return files


def _where_it_looks(cfg: ExplainConfig, files: list[Path], rm: RunModel, val: Split, probs: np.ndarray,
                    labels: np.ndarray, out: Path, log: Log) -> dict[str, Any]:
    if files:
        split = Split([str(f) for f in files], [-1] * len(files))
        names = [str(f) for f in files]
    else:
        idx = stratified_sample(list(labels), min(cfg.limit, len(val)), seed=0)
        idx = sorted(idx, key=lambda i: (probs[i].argmax() == labels[i], i))  # misclassified first
        split = val.subset(idx)
        names = [f"validation image {i}" for i in idx]
    shown: list[Shown] = []
    with log.task(f"class-activation maps ({cfg.method}) of {len(split)} images", len(split)) as tick:
        for x, y in _batches(rm, split, cfg.batch_size):
            with torch.no_grad():
                p = torch.softmax(rm.model(x), dim=1).numpy()
            maps = cams(rm, x, list(p.argmax(axis=1)), cfg.method)
            for crop, cam, row, label in zip(displayed(rm, x), maps, p, y.tolist()):
                k = len(shown)
                crop_png, cam_png = _save_pair(out, f"look-{k}", crop, cam)
                top = [(rm.classes[c], float(row[c])) for c in np.argsort(-row)[:min(cfg.top_k, len(rm.classes))]]
                shown.append(Shown(names[k], rm.classes[label] if label >= 0 else None, top, crop_png, cam_png))
            tick(len(y))
    layer_name = target_layer(rm, x)[0]
    shown.sort(key=lambda s: not s.wrong)
    return {"target_layer": layer_name, "images": [s.__dict__ | {"wrong": s.wrong} for s in shown]}


def weight_change(rm: RunModel) -> list[dict[str, Any]]:
    """Per stage (and the head), ||W_ft - W_pre|| / ||W_pre|| against the weights the run started from:
    its --weights, and its seeded random initialization of the new head."""
    cfg = rm.run["config"]
    with torch.random.fork_rng(devices=[]):  # finetune seeds, then builds: the same initial head (and, with
        torch.manual_seed(cfg["seed"])      # --weights none, the same random backbone) come out again
        start = build(rm.run["model"], len(rm.classes), cfg["weights"])
    head = start.head
    trainable = set(apply_strategy(start.model, head, cfg["strategy"], cfg["unfreeze"]))
    before = dict(start.model.state_dict())
    after = dict(rm.model.state_dict())
    groups = stages(start.model, head) + [[n for n, _ in start.model.named_parameters() if n.startswith(head + ".")]]
    rows = []
    for k, names in enumerate(groups):
        diff = sum(float((after[n] - before[n]).float().pow(2).sum()) for n in names)
        norm = sum(float(before[n].float().pow(2).sum()) for n in names)
        is_head = k == len(groups) - 1
        rows.append({"stage": "head" if is_head else f"stage {k}", "parameters": names[0].rsplit(".", 1)[0],
                     "relative_change": math.sqrt(diff) / math.sqrt(norm) if norm > 0 else None,
                     "frozen": not any(n in trainable for n in names)})
    return rows


def summary_sentence(rows: list[dict[str, Any]], strategy: str) -> str:
    """What the numbers say about the strategy to choose next time, in one sentence."""
    backbone = [r for r in rows if r["stage"] != "head" and r["relative_change"] is not None]
    if all(r["frozen"] for r in backbone):
        return (f"Only the head was trained (strategy {strategy}); every backbone stage is unchanged, so this run "
                "says nothing yet about what deeper fine-tuning would change.")
    late, early = backbone[-2:], backbone[:-2]
    late_c = sum(r["relative_change"] for r in late) / len(late)
    early_c = sum(r["relative_change"] for r in early) / len(early) if early else 0.0
    if early_c == 0:
        return f"Only the last {len(late)} stage(s) moved: the earlier ones stayed as pretrained."
    ratio = late_c / early_c
    advice = ("partial --unfreeze 2 would keep most of what fine-tuning changed, for less training"
              if ratio >= 3 else "the whole backbone adapted to this data, so full fine-tuning was worth it")
    return f"The last {len(late)} stages moved {ratio:.1f}x more than the {len(early)} before them: {advice}."


def _what_finetuning_changed(cfg: ExplainConfig, rm: RunModel, val: Split, probs: np.ndarray, labels: np.ndarray,
                             out: Path) -> dict[str, Any]:
    rows = weight_change(rm)
    if rows:  # a model with no parameters outside its head has nothing to chart
        _bar_chart([r["stage"] for r in rows], [r["relative_change"] or 0.0 for r in rows],
                   [r["frozen"] for r in rows], out / "weight_change.png")
    n = len(rm.classes)
    pred = probs.argmax(axis=1)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    plots.confusion_heatmap(confusion, rm.classes, out / "confusion.png", "validation confusion matrix (best.pt)")
    pairs = [(int(confusion[a, b]), a, b) for a in range(n) for b in range(n) if a != b and confusion[a, b]]
    confused = []
    for count, a, b in sorted(pairs, reverse=True)[:3]:
        i = int(np.flatnonzero((labels == a) & (pred == b))[0])
        crop_png, cam_png = _example(rm, val, i, b, out, f"confused-{a}-{b}", cfg.method)
        confused.append({"true": rm.classes[a], "predicted": rm.classes[b], "count": count, "example": i,
                         "crop": crop_png, "cam": cam_png})
    return {"strategy": rm.run["config"]["strategy"], "weights": rm.run["config"]["weights"], "stages": rows,
            "summary": summary_sentence(rows, rm.run["config"]["strategy"]),
            "confusion": confusion.tolist(), "most_confused": confused,
            "top1": float(100.0 * (pred == labels).mean())}


def _example(rm: RunModel, val: Split, i: int, cls: int, out: Path, stem: str, method: str) -> tuple[str, str]:
    """One validation image's crop and its map for class ``cls``."""
    x, _ = next(iter(_batches(rm, val.subset([i]), 1)))
    return _save_pair(out, stem, displayed(rm, x)[0], cams(rm, x, [cls], method)[0])


def _what_int8_changed(cfg: ExplainConfig, rm: RunModel, val: Split, probs: np.ndarray, labels: np.ndarray,
                       int8_logits: np.ndarray, artifact: Path | None, out: Path) -> dict[str, Any]:
    fp32, int8 = probs.argmax(axis=1), int8_logits.argmax(axis=1)
    flipped = np.flatnonzero(fp32 != int8)
    fixed = int(((fp32 != labels) & (int8 == labels)).sum())
    broken = int(((fp32 == labels) & (int8 != labels)).sum())
    flips = []
    for i in flipped[:cfg.limit]:
        crop_png, cam_png = _example(rm, val, int(i), int(fp32[i]), out, f"flip-{i}", cfg.method)
        flips.append({"index": int(i), "true": rm.classes[labels[i]], "fp32": rm.classes[fp32[i]],
                      "int8": rm.classes[int8[i]], "crop": crop_png, "cam": cam_png})
    manifest = json.loads((artifact.parent / "manifest.json").read_text()) if (artifact.parent / "manifest.json").is_file() else {}
    entry = next((a for a in manifest.get("artifacts", []) if a.get("file") == artifact.name), {})
    floated = [f for f in entry.get("float_layers", []) if isinstance(f, dict) and "sensitivity_mse" in f]
    if floated:
        _bar_chart([f["name"] for f in floated], [f["sensitivity_mse"] for f in floated], [False] * len(floated),
                   out / "sensitivity.png", ylabel="output MSE this layer's INT8 adds")
    n = len(labels)
    return {"artifact": str(artifact), "images": n, "flips": int(len(flipped)), "fixed": fixed, "broken": broken,
            "delta_top1": 100.0 * (fixed - broken) / n, "flipped": flips,
            "guard_float_layers": floated}


def _bar_chart(names: list[str], values: list[float], frozen: list[bool], path: Path,
               ylabel: str = "||W_ft - W_pre|| / ||W_pre||") -> None:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), values, color=["#bbbbbb" if f else "#1f77b4" for f in frozen])
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=ylabel)
    if any(frozen):
        ax.set_title("grey: frozen during fine-tuning", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    plots.save_figure(fig, path)
