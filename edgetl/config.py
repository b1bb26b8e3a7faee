"""Typed configuration of `edgetl finetune`, validated once and saved in run.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import UsageError
from .models import STRATEGIES
from .preprocess import MAX_SIZE  # 100,000 px asked for 1.28 TiB of activations

OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
CACHE_MODES = ("auto", "memory", "disk", "off")


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
        floats = {"--lr": self.lr, "--backbone-lr-scale": self.backbone_lr_scale,
                  "--label-smoothing": self.label_smoothing, "--clip-grad": self.clip_grad,
                  "--warmup-epochs": self.warmup_epochs, "--val-split": self.val_split}
        for flag, value in floats.items():
            if value is not None and not math.isfinite(value):
                raise UsageError(f"{flag} {value}: must be a finite number")
        checks = [
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr is None or self.lr > 0, "--lr must be positive"),
            (self.img_size is None or 16 <= self.img_size <= MAX_SIZE, f"--img-size must be from 16 to {MAX_SIZE} px"),
            (self.epochs <= 100_000 and self.batch_size <= 65_536, "--epochs at most 100000, --batch-size at most 65536"),
            (0.0 < self.backbone_lr_scale <= 1.0, "--backbone-lr-scale must be in (0, 1]"),
            (0.0 <= self.label_smoothing < 1.0, "--label-smoothing must be in [0, 1)"),
            (self.unfreeze >= 0, "--unfreeze must be >= 0"),
            (self.val_split is None or 0 < self.val_split < 1, "--val-split must be between 0 and 1"),
            (self.early_stop >= 0, "--early-stop must be >= 0"),
            (self.clip_grad >= 0, "--clip-grad must be >= 0"),
            (self.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
            (self.workers is None or self.workers >= 0, "--workers must be >= 0"),
            (self.cache in CACHE_MODES, f"--cache must be one of {', '.join(CACHE_MODES)}"),
            (self.feature_views >= 0, "--feature-views must be >= 0"),
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
