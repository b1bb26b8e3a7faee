"""What a run folder holds and how it is written and read back: best.pt and last.pt (tensors only,
loaded with ``weights_only=True``), metrics.csv and run.json; restoring a run to resume it."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..artifacts.run import read_run
from ..data.check import DataReport
from ..data.sources import DataSet
from ..errors import ArtifactError, UsageError, one_line
from ..fileio import atomic_write, atomic_write_text
from ..images import Preprocess
from ..models import torch_load_tensors
from .config import TrainConfig

CHECKPOINT_FORMAT = "edgetl-checkpoint/1"
RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "run.json", "data_check.json", "curves.png")
METRIC_FIELDS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "seconds", "images_per_s")


def amp_name(dtype: torch.dtype | None) -> str | None:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype) if dtype else None


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def _meta(cfg: TrainConfig, data: DataSet) -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "model_name": cfg.model, "classes": list(data.classes)}


def best_payload(model: nn.Module, cfg: TrainConfig, data: DataSet, pp: Preprocess, epoch: int, top1: float) -> dict[str, Any]:
    return {**_meta(cfg, data), "epoch": epoch, "val_top1": top1, "preprocess": pp.to_dict(),
            "model": _cpu_state(model)}


def last_payload(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, scaler: torch.amp.GradScaler,
                  cfg: TrainConfig, data: DataSet, state: dict[str, Any]) -> dict[str, Any]:
    return {**_meta(cfg, data), **state, "config": cfg.to_dict(), "model": _cpu_state(model),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict()}


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone() for k, v in model.state_dict().items()}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """weights_only=True: tensors and plain data only; anything else is refused as untrusted."""
    if not path.is_file():
        raise ArtifactError(f"{path}: no such checkpoint")
    ck = torch_load_tensors(path, "checkpoint")
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT or not isinstance(ck.get("model"), dict):
        raise ArtifactError(f"{path}: not an edgetl checkpoint (no {CHECKPOINT_FORMAT!r} format tag)")
    return ck


def restore(out: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
             scaler: torch.amp.GradScaler, device: torch.device) -> tuple[dict[str, Any], list[dict[str, float]]]:
    path = out / "last.pt"
    ck = load_checkpoint(path)
    try:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        state = {k: ck[k] for k in ("epoch", "best_top1", "best_top5", "best_epoch", "stale")}
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: does not fit this run's model, optimizer or schedule ({one_line(e)})") from e
    return state, _read_metrics(out)[: state["epoch"]]


def remove_stale_temporaries(out: Path) -> None:
    """A run killed mid-write leaves a temporary (.last.pt.x1y2.tmp) beside the intact real file."""
    for p in out.glob(".*.tmp"):
        if any(p.name.startswith(f".{name}.") for name in RUN_FILES):
            p.unlink(missing_ok=True)


def write_metrics(out: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(out / "metrics.csv", buf.getvalue())


def _read_metrics(out: Path) -> list[dict[str, float]]:
    p = out / "metrics.csv"
    if not p.exists():
        return []
    with open(p, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def run_record(cfg: TrainConfig, data: DataSet, pp: Preprocess, head: str, device: str,
              amp_dtype: torch.dtype | None, n_trainable: int, report: DataReport | None) -> dict[str, Any]:
    return {
        "schema_version": 1, "edgetl_version": __version__,
        "model": cfg.model, "classes": list(data.classes), "num_classes": len(data.classes),
        "preprocess": pp.to_dict(), "strategy": cfg.strategy, "head": head,
        "data": {"source": data.name, "train_images": len(data.train), "val_images": len(data.val),
                 "val_split": cfg.val_split, "seed": cfg.seed,
                 "skipped": report.skipped if report else [], "check": "data_check.json" if report else None},
        "device": device, "amp": amp_name(amp_dtype), "trainable_tensors": n_trainable,
        "config": cfg.to_dict(),
    }


def with_metrics(run: dict[str, Any], state: dict[str, Any], status: str) -> dict[str, Any]:
    return {**run, "status": status, "best_epoch": state["best_epoch"],
            "metrics": {"val_top1": state["best_top1"], "val_top5": state["best_top5"], "epochs": state["epoch"]}}


def resume_config(run: Path, epochs: int | None = None) -> TrainConfig:
    """The run's own configuration; ``epochs`` is the new total and must exceed the epochs already done."""
    info = read_run(run)
    cfg = TrainConfig.from_dict(info.config)
    cfg.out = str(run)
    done = info.metrics.get("epochs")
    if epochs is not None:
        if isinstance(done, int) and epochs <= done:
            raise UsageError(f"{run}: has trained {done} epoch(s) already; with --resume, --epochs is the new total, "
                             f"so pass more than {done} to train further")
        cfg.epochs = epochs
    return cfg
