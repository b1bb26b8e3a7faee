"""Every closed set of values an option takes, defined once: the library validates against these and
the CLI hands the same classes to Typer, so a new value cannot be accepted in one place and refused in
another. Members are strings (``Strategy.full == "full"``), so configs and JSON files hold plain text."""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum  # novermin (the runtime's Python 3.8 floor: vermin cannot see this guard)
else:  # Python 3.8-3.10
    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class Strategy(StrEnum):
    """What fine-tuning trains: everything, only the new head, or the head and the last blocks."""

    full = "full"
    head = "head"
    partial = "partial"


class Optimizer(StrEnum):
    adamw = "adamw"
    sgd = "sgd"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class CacheMode(StrEnum):
    auto = "auto"
    memory = "memory"
    disk = "disk"
    off = "off"


class LogKind(StrEnum):
    """Where `finetune --log` mirrors metrics.csv besides it."""

    none = "none"
    tensorboard = "tensorboard"
    mlflow = "mlflow"


class CamMethod(StrEnum):
    """How `edgetl explain` draws class-activation maps (pytorch-grad-cam's methods)."""

    gradcam = "gradcam"
    gradcam_pp = "gradcam++"
    eigencam = "eigencam"


class CalibMethod(StrEnum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class QatMode(StrEnum):
    """`export --qat`: never, always, or only when post-training INT8 misses --max-drop."""

    off = "off"
    on = "on"
    auto = "auto"


class AutoTarget(StrEnum):
    """What `edgetl auto` times its finalists as: the artifact that will be deployed."""

    ort_int8 = "ort-int8"
    ort_fp32 = "ort-fp32"
    trt_int8 = "trt-int8"
    trt_fp16 = "trt-fp16"


class CalibMode(StrEnum):
    explicit = "explicit"
    implicit = "implicit"


def values(choice: type[StrEnum]) -> tuple[str, ...]:
    """The plain strings of a choice, in declaration order (what error messages list)."""
    return tuple(m.value for m in choice)
