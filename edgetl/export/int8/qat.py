"""Quantization-aware training for `export --int8 --qat`.

NVIDIA ModelOpt fake-quantizes the run's best weights: INT8 per output channel for weights, INT8 per
tensor for the inputs of every weighted layer, ranges calibrated on the PTQ calibration images.
`edgetl finetune`'s own loop then trains them in RUN/export/qat, a run folder like any other (data
cache, augmentation, AMP on CUDA, signals, resume, progress). What comes back is plain PyTorch: the
trained float weights and the learned input ranges. They go through the same ONNX export and
quantizer as post-training INT8, so the QAT model.int8.onnx has exactly PTQ's TensorRT shape.

Under `torchrun --nproc_per_node N -m edgetl export RUN --int8 --qat` the ranks train together with
finetune's DDP (`Crew`); rank 0 alone reads and changes the export folder and writes the artifacts.

Weight ranges are left dynamic (max |W| per output channel, recomputed every step) because that is
what the quantizer computes from the exported weights, and per-channel scales survive batch-norm
folding exactly, so the exported weights are the grid QAT trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import time
import types
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ... import extras
from ...data.sources import DataSet, Split, eval_transform, make_loader
from ...errors import ArtifactError, Interrupted, UsageError
from ...evaluate import RunModel
from ...fileio import atomic_write_json, sha256_file
from ...progress import Log
from ...train.config import TrainConfig
from ...train.log_hooks import LogHooks
from ...train.loop import Hooks
from ..config import ExportConfig
from .calibrate import calibration_split, split_fingerprint

FOLDER = "qat"
LR_FRACTION = 0.1  # of the run's peak LR: in one epoch on MobileNetV3, 1% recovered 1.1 of 4.4 points, 10% all
QAT_VERSION = 1  # bump when training or its configuration changes, so an older qat/ is not reused
CALIB_BATCH = 32


@dataclass
class Trained:
    """A finished QAT run: its folder, record, float weights and per-layer input ranges (amax)."""

    folder: Path
    record: dict[str, Any]
    state: dict[str, Any]  # float tensors, keyed as in the static-padding model
    amax: dict[str, float]  # module name -> input range learned in QAT


def require() -> None:
    extras.require("modelopt", "qat", "--qat")


def suggestion(rm: RunModel, cfg: ExportConfig) -> str:
    """What export says when post-training INT8 misses the budget without --qat: the flag and its cost."""
    import csv

    try:
        with open(Path(cfg.run) / "metrics.csv", newline="") as f:
            seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        seconds = []
    cost = (f"; the run's epochs took {sum(seconds) / len(seconds):.0f} s each, and a QAT epoch costs more "
            f"(fake quantization in every layer)" if seconds else "")
    return (f"post-training INT8 misses --max-drop {cfg.max_drop:g}; --qat (or --qat auto) would train the "
            f"quantization in for --qat-epochs {cfg.qat_epochs} instead of floating layers{cost}")


def train_config(rm: RunModel, out: Path, cfg: ExportConfig) -> TrainConfig:
    """The run's own configuration, continued from best.pt for --qat-epochs at --qat-lr."""
    base = TrainConfig.from_dict(rm.run["config"])
    lr = cfg.qat_lr if cfg.qat_lr is not None else base.base_lr * LR_FRACTION
    return replace(base, out=str(out / FOLDER), weights=str(Path(cfg.run) / "best.pt"), epochs=cfg.qat_epochs,
                   lr=lr, warmup_epochs=0.0, early_stop=0, feature_cache=False, compile=False, log="none")


class Crew:
    """The ranks of `torchrun ... export --int8 --qat`. Rank 0 holds the export folder and runs everything
    but the training alone; it tells the others (once) whether QAT trains and whether it resumes, which
    under --qat auto it knows only after post-training INT8. They wait for that word, train beside it
    with finetune's DDP, and stop; rank 0 exports the result."""

    def __init__(self, rm: RunModel) -> None:
        from ...train.distributed import leader_group, setup
        from ...train.loop import pick_device

        device = pick_device(TrainConfig.from_dict(rm.run["config"]).device)
        self.d = setup(device.type)
        self.group = leader_group(self.d)
        self.told = False

    @classmethod
    def join(cls, rm: RunModel, cfg: ExportConfig) -> Crew | None:
        """The crew under torchrun (WORLD_SIZE > 1), None in a plain process."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        if cfg.qat == "off":
            raise UsageError("export under torchrun trains only with --int8 --qat (on or auto), the one export step "
                             "that runs on several processes; run this export as one plain process")
        return cls(rm)

    @property
    def main(self) -> bool:
        return self.d.main

    @property
    def world(self) -> int:
        return self.d.world

    def tell(self, resume: bool | None) -> None:
        """Rank 0: train (resuming or not), or None: nothing to train. Only the first word counts."""
        if self.main and not self.told:
            from ...train.distributed import from_leader

            from_leader(self.group, resume)
            self.told = True

    def follow(self, rm: RunModel, out: Path, cfg: ExportConfig, ds: DataSet) -> bool:
        """A rank other than 0: wait for rank 0's word and train beside it; whether it trained."""
        from ...train.distributed import from_leader
        from ...train.loop import finetune

        resume = from_leader(self.group)
        if resume is None:
            return False
        split = calibration_split(ds, cfg.calib, cfg.calib_size, cfg.seed)  # rank 0's: the same seeded sample
        try:
            finetune(train_config(rm, out, cfg), resume=resume, prepare=Quantize(split, cfg.quantize_stem))
        except Interrupted as e:
            e.hint = _STOPPED_HINT.format(folder=out / FOLDER)
            raise
        return True

    def close(self) -> None:
        """Release ranks still waiting (rank 0 ended without training) and leave the process group."""
        from ...train.distributed import teardown

        try:
            self.tell(None)
        except Exception:  # noqa: BLE001 - a rank already gone; the error that got here is the one to report
            pass
        finally:
            teardown(self.d)


_STOPPED_HINT = ("quantization-aware training stopped; its last complete epoch is in {folder}/last.pt and the run "
                 "and earlier artifacts are untouched; run the same export again to continue")


def train(rm: RunModel, out: Path, cfg: ExportConfig, split: Split, log: Log, crew: Crew | None = None) -> Trained:
    """Train in OUT/qat, or resume it, or reuse it when it already finished with the same inputs; with a
    ``crew`` (rank 0 under torchrun) the other ranks train too. An interrupt leaves OUT/qat resumable
    and everything else as it was."""
    require()
    from ...train.loop import finetune

    tcfg = train_config(rm, out, cfg)
    folder = Path(tcfg.out)
    key = hashlib.sha256(json.dumps({
        "checkpoint": sha256_file(Path(cfg.run) / "best.pt"), "train": {**tcfg.to_dict(), "out": None},
        "calib": split_fingerprint(split), "stem": cfg.quantize_stem, "version": QAT_VERSION,
    }, sort_keys=True).encode()).hexdigest()
    meta = folder / "qat.json"
    mine = _read_json(meta).get("key") == key
    status = _read_json(folder / "run.json").get("status")
    if mine and status == "finished":
        log(f"reusing quantization-aware training in {folder} (same checkpoint, data and settings)")
        if crew is not None:
            crew.tell(None)
    else:
        resume = mine and (folder / "last.pt").exists()
        if not resume and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(meta, {"key": key})
        ranks = f" on {crew.world} processes" if crew is not None else ""
        log(f"quantization-aware training: {tcfg.epochs} epoch(s) at lr {tcfg.lr:.2g} from {tcfg.weights}, "
            f"in {folder}{ranks}{' (resuming)' if resume else ''}")
        if crew is not None:
            crew.tell(resume)
        t0 = time.perf_counter()
        try:
            finetune(tcfg, resume=resume, hooks=LogHooks(log, "QAT epoch", "with INT8 fake-quantized (PyTorch)"),
                     prepare=Quantize(split, cfg.quantize_stem))
        except Interrupted as e:
            e.hint = _STOPPED_HINT.format(folder=folder)
            raise
        atomic_write_json(meta, {"key": key, "seconds": round(time.perf_counter() - t0, 1)})
    return _load(folder, tcfg)


def _load(folder: Path, tcfg: TrainConfig) -> Trained:
    from ...train.checkpoint import load_checkpoint

    ck = load_checkpoint(folder / "best.pt")
    run = _read_json(folder / "run.json")
    state = {k: v for k, v in ck["model"].items() if "_quantizer." not in k}
    amax = {k.rsplit(".input_quantizer.", 1)[0]: float(v.max()) for k, v in ck["model"].items()
            if k.endswith(".input_quantizer._amax")}
    record = {"epochs": tcfg.epochs, "lr": tcfg.lr, "folder": folder.name, "world_size": run.get("world_size", 1),
              "seconds": _read_json(folder / "qat.json").get("seconds"),  # of the training call that finished it
              "fake_quant_val_top1": run.get("metrics", {}).get("val_top1"), "bias_correction": False}
    return Trained(folder, record, state, amax)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}


def _always_eval(bn: Any, mode: bool = True) -> Any:
    return type(bn).train(bn, False)


class Quantize:
    """finetune's ``prepare``: static padding (as the ONNX export freezes it), ModelOpt's INT8 fake
    quantizers calibrated on the calibration images, dynamic weight ranges, the stem left in float
    unless --quantize-stem, and batch norm kept in eval mode. Frozen statistics make each training
    forward the model that is exported: the ONNX folds batch norm with its running statistics, where a
    training-mode layer would normalize with each batch's own (and drift while ranges saturate)."""

    def __init__(self, split: Split, quantize_stem: bool) -> None:
        self.split, self.quantize_stem = split, quantize_stem

    def __call__(self, model: Any, pp: Any, device: Any, hooks: Hooks) -> Any:
        import torch

        mtq = import_modelopt()

        from ..onnx import freeze_same_padding

        model = freeze_same_padding(model, pp.size).to(device)
        loader = make_loader(self.split, eval_transform(pp), CALIB_BATCH, shuffle=False, workers=0)
        hooks.preparing(f"calibrating INT8 fake quantizers on {len(self.split)} images", len(loader))

        def forward_loop(m: Any) -> None:
            for x, _ in loader:
                m(x.to(device))
                hooks.advance()

        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # it prints a line per call, and under DDP warns per module about tensor parallelism, which is not used
            warnings.filterwarnings("ignore", message="Distributed training is initialized but no parallel_state")
            mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)
        for _, m in model.named_modules():
            wq = getattr(m, "weight_quantizer", None)
            if wq is not None and wq.is_enabled:
                wq.reset_amax()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train = types.MethodType(_always_eval, m)
        if not self.quantize_stem:
            stem = weighted_order(model, pp.size, device)[:1]
            for name in stem:
                layer = model.get_submodule(name)
                for quantizer in (layer.input_quantizer, layer.weight_quantizer):
                    quantizer.reset_amax()  # no learned range left to carry over for a float layer
                    quantizer.disable()
        return model


def import_modelopt() -> Any:
    """modelopt.torch.quantization, without the start-up noise it makes on a machine with no CUDA or
    transformers (a CUDA_HOME warning from torch's extension loader, deprecation warnings)."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import modelopt.torch.export  # noqa: F401  (imported by quantize later; its warnings come here instead)
        import modelopt.torch.quantization as mtq
    return mtq


def weighted_order(model: Any, size: int, device: Any = "cpu") -> list[str]:
    """Names of the Conv2d and Linear modules in the order a forward pass first calls them (the first
    is the stem)."""
    import torch
    from torch import nn

    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: order.append(n) if n not in order else None)
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return order


def float_model(rm: RunModel, trained: Trained) -> Any:
    """The trained weights in the run's architecture with static padding, ready for `export_onnx`."""
    import copy

    from ..onnx import freeze_same_padding

    model = freeze_same_padding(copy.deepcopy(rm.model), rm.preprocess.size)
    try:
        model.load_state_dict(trained.state)
    except RuntimeError as e:
        raise ArtifactError(f"{trained.folder / 'best.pt'}: does not fit the run's model "
                            f"({str(e).splitlines()[0]})") from e
    return model.eval()


def input_ranges(model: Any, prep: Any, trained: Trained) -> dict[str, float]:
    """ONNX tensor -> amax for the input of each weighted layer QAT quantized. Layers are matched by
    their weights, which batch-norm folding scales per output channel only: each ONNX weight matches
    the one PyTorch weight whose every nonzero channel points the same way (|cosine| ~ 1). A weight
    that is all zeros (a residual branch whose batch-norm scale is 0) is matched by the exporter's
    scope name instead."""
    import numpy as np
    from onnx import numpy_helper
    from torch import nn

    from .qdq import WEIGHTED_OPS

    def unit(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = w.reshape(w.shape[0], -1).astype(np.float64)
        norm = np.linalg.norm(flat, axis=1, keepdims=True)
        return flat / np.maximum(norm, 1e-30), norm[:, 0] > 1e-12 * max(float(norm.max()), 1e-30)

    modules = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    layers = {n: unit(m.weight.detach().cpu().numpy())[0] for n, m in modules.items()}
    inits = {t.name: t for t in prep.graph.initializer}
    out = {}
    for node in prep.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        u, live = unit(w.T if node.op_type == "MatMul" else w)
        if live.any():
            scores = {n: float(np.abs((u[live] * v[live]).sum(axis=1)).mean()) for n, v in layers.items()
                      if v.shape == u.shape}
            best = max(scores, key=scores.__getitem__, default=None)
            found = best if best is not None and scores[best] > 0.999 else None
        else:
            found = _scope_module(node.name)
            found = found if found in layers and layers[found].shape == u.shape else None
        if found is None:
            raise ArtifactError(f"QAT: ONNX node {node.name} matches no trained layer; cannot carry the learned "
                                "ranges over")
        if np.isfinite(trained.amax.get(found, np.nan)):  # none for a layer QAT left in float (the stem)
            out[node.input[0]] = trained.amax[found]
    return out


def _scope_module(node_name: str) -> str:
    """The module a TorchScript-exported node came from: ``/layer2/layer2.0/downsample/downsample.1/Conv``
    is ``layer2.0.downsample.1`` (each scope is its attribute name, qualified by its parent's)."""
    return ".".join(c.rsplit(".", 1)[-1] for c in node_name.split("/")[1:-1])


def apply_ranges(ranges: dict[str, Any], amax: dict[str, float], symmetric: bool) -> dict[str, Any]:
    """Calibrated ranges (ONNX Runtime's TensorsData JSON) with the learned ones put in: exactly
    [-amax, amax] for the symmetric TensorRT layout; the observed range clipped to it for the CPU's."""
    data = json.loads(json.dumps(ranges))
    for tensor, a in amax.items():
        entry = data["data"].get(tensor)
        if entry is None:
            continue
        lo, hi = entry["lowest"]["data"][0], entry["highest"]["data"][0]
        entry["lowest"]["data"], entry["highest"]["data"] = ([-a], [a]) if symmetric else ([max(lo, -a)], [min(hi, a)])
    return data
