"""Typed configuration of `edgetl finetune`, validated once and saved in run.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .. import limits
from ..errors import UsageError
from ..images import MAX_SIZE  # 100,000 px asked for 1.28 TiB of activations
from ..limits import Range
from ..choices import CacheMode, Device, Optimizer, values
from ..models import STRATEGIES

OPTIMIZERS, DEVICES, CACHE_MODES = values(Optimizer), values(Device), values(CacheMode)


@dataclass
class TrainConfig:
    data: str = "digits"
    out: str = ""
    model: str = "efficientnet_lite0"
    weights: str = "imagenet"
    val_split: float | None = None
    img_size: int | None = None
    strategy: str = "full"
    unfreeze: int = 2
    backbone_lr_scale: float = 1.0
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 0.01
    momentum: float = 0.9
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    clip_grad: float = 0.0
    early_stop: int = 0
    hflip: bool | None = None
    trivial_augment: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None
    channels_last: bool = True
    workers: int | None = None
    cache: str = "auto"
    feature_cache: bool = True
    feature_views: int = 0
    compile: bool = False

    def validate(self) -> TrainConfig:
        limits.check({
            "--val-split": (self.val_split, limits.FRACTION_OPEN),
            "--img-size": (self.img_size, Range(16, MAX_SIZE)),
            "--unfreeze": (self.unfreeze, limits.NON_NEGATIVE),
            "--backbone-lr-scale": (self.backbone_lr_scale, Range(0, 1, open_lo=True)),
            "--epochs": (self.epochs, Range(1, 100_000)),
            "--batch-size": (self.batch_size, limits.BATCH),
            "--lr": (self.lr, limits.POSITIVE),  # a huge one is legal: it diverges, and says so
            "--weight-decay": (self.weight_decay, Range(0, 1)),
            "--momentum": (self.momentum, Range(0, 1, open_hi=True)),
            "--label-smoothing": (self.label_smoothing, Range(0, 1, open_hi=True)),
            "--warmup-epochs": (self.warmup_epochs, limits.NON_NEGATIVE),
            "--clip-grad": (self.clip_grad, limits.NON_NEGATIVE),
            "--early-stop": (self.early_stop, limits.NON_NEGATIVE),
            "--seed": (self.seed, limits.SEED),
            "--feature-views": (self.feature_views, Range(0, 100)),
            "--workers": (self.workers, limits.WORKERS),
        })
        checks = [
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
            (self.cache in CACHE_MODES, f"--cache must be one of {', '.join(CACHE_MODES)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        if self.data not in ("digits", "cifar10") and self.out:
            data, out = Path(self.data).resolve(), Path(self.out).resolve()
            if out == data or out.is_relative_to(data):
                raise UsageError(f"--out {self.out} is inside --data {self.data}: the run folder would become a "
                                 "class of the data; put it elsewhere")
        return self

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.optimizer == "adamw" else 1e-2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
