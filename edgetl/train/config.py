"""Typed configuration of `edgetl finetune`, validated once and saved in run.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .. import limits
from ..choices import CacheMode, Device, LogKind, Optimizer, Strategy
from ..errors import UsageError
from ..limits import Range
from ..options import check_fields, option

DATA, MODEL, TRAINING, AUGMENT, SPEED, OUTPUT = "Data", "Model", "Training", "Augmentation", "Speed", "Output"


@dataclass
class TrainConfig:
    data: str = option("digits", "ImageFolder root (train/ + val/, or one folder with --val-split), 'digits' "
                       "(bundled, offline) or 'cifar10' (torchvision download).", DATA, metavar="PATH")
    out: str = ""
    model: str = option("efficientnet_lite0", "torchvision or timm model name ('timm/NAME' forces timm); "
                        "see `edgetl models`.", MODEL, metavar="NAME")
    weights: str = option("imagenet", "imagenet, none, or a .pt/.pth state dict or .safetensors file.", MODEL,
                          metavar="WEIGHTS")
    val_split: float | None = option(None, "Hold out this stratified fraction for validation "
                                     "(default 0.2 when there is no val/).", DATA, legal=limits.FRACTION_OPEN)
    img_size: int | None = option(None, "Input crop size in px (default: the model's pretrained size).", MODEL,
                                  legal=Range(16, limits.MAX_SIZE))
    strategy: str = option("full", "full: every weight; head: the new classifier only (frozen BN stays in "
                           "eval); partial: the last --unfreeze stages and the head.", MODEL, choices=Strategy)
    unfreeze: int = option(2, "Stages to train with --strategy partial.", MODEL, legal=limits.NON_NEGATIVE)
    backbone_lr_scale: float = option(1.0, "Backbone learning rate = --lr x this.", TRAINING,
                                      legal=Range(0, 1, open_lo=True))
    epochs: int = option(10, "Epochs (with --resume: the new total).", TRAINING, legal=Range(1, 100_000))
    batch_size: int = option(64, "Images per step.", TRAINING, legal=limits.BATCH)
    optimizer: str = option("adamw", "Optimizer.", TRAINING, choices=Optimizer)
    lr: float | None = option(None, "Peak learning rate (default 1e-3 adamw, 1e-2 sgd).", TRAINING,
                              legal=limits.POSITIVE)  # a huge one is legal: it diverges, and says so
    weight_decay: float = option(0.01, "Weight decay (never on norm or bias parameters).", TRAINING,
                                 legal=Range(0, 1))
    momentum: float = 0.9  # SGD's; not an option, checked by validate
    label_smoothing: float = option(0.1, "Cross-entropy label smoothing.", TRAINING, legal=Range(0, 1, open_hi=True))
    warmup_epochs: float = option(1.0, "Linear warm-up before cosine decay (at most 20% of training).", TRAINING,
                                  legal=limits.NON_NEGATIVE)
    clip_grad: float = option(0.0, "Clip the gradient norm to this; 0: off.", TRAINING, legal=limits.NON_NEGATIVE)
    early_stop: int = option(0, "Stop after N epochs without a better val top-1; 0: off.", TRAINING,
                             legal=limits.NON_NEGATIVE)
    hflip: bool | None = option(None, "Random horizontal flips (default: on, off for digits).", AUGMENT)
    trivial_augment: bool = option(False, "Add TrivialAugmentWide to the training augmentation.", AUGMENT)
    seed: int = option(0, "Seed for the split, shuffling, augmentation and init.", TRAINING, legal=limits.SEED)
    device: str = option("auto", "auto: CUDA when PyTorch sees a GPU.", SPEED, choices=Device)
    amp: bool | None = option(None, "Mixed precision (default: on for CUDA, bf16 where supported, else fp16 "
                              "with a GradScaler; off on CPU).", SPEED)
    channels_last: bool = option(True, "channels_last memory format (about 1.7x faster training steps than "
                                 "NCHW, on CPUs too).", SPEED)
    workers: int | None = option(None, "DataLoader worker processes (default: cores - 1, at most 4).", SPEED,
                                 legal=limits.WORKERS)
    cache: str = option("auto", "Decode images once into a uint8 cache and augment whole batches as tensors: "
                        "auto (memory when it fits, else a file under ~/.cache/edgetl), memory, disk, or off "
                        "(PIL per image in DataLoader workers).", SPEED, choices=CacheMode)
    feature_cache: bool = option(True, "With --strategy head: run the frozen backbone once and train the head "
                                 "on cached features.", SPEED)
    feature_views: int = option(0, "With the feature cache: augmented views of the training set to cache and "
                                "cycle through (0: one plain view).", SPEED, legal=Range(0, 100))
    compile: bool = option(False, "torch.compile the model (pays off on GPUs; takes minutes on a CPU).", SPEED,
                           flags=("--compile",))
    log: str = option("none", "Also log metrics.csv and the configuration to TensorBoard (RUN/tensorboard) or "
                      "to MLflow.", OUTPUT, choices=LogKind)
    log_uri: str | None = option(None, "With --log mlflow: the tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                 "sqlite:///mlflow.db in the working directory, which `mlflow ui` opens).", OUTPUT,
                                 metavar="URI")

    def validate(self) -> TrainConfig:
        check_fields(self)
        limits.check({"momentum": (self.momentum, Range(0, 1, open_hi=True))})
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
