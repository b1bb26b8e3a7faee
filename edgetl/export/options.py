"""What `edgetl export` is asked to make (`ExportConfig`, validated once) and what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import limits
from ..choices import CalibMethod, CalibMode, values
from ..errors import UsageError
from ..limits import Range


@dataclass
class ExportConfig:
    run: str
    out: str | None = None
    int8: bool = False
    fp16: bool = False
    calib: str | None = None
    calib_size: int = 512
    calib_method: str = "minmax"
    quantize_stem: bool = False
    bias_correction: bool = True
    int8_cpu: bool = False
    calib_mode: str = "explicit"
    max_drop: float = 1.0
    min_int8: float = 0.8
    opset: int = 17
    batch: str = "dynamic"
    engine: bool = True
    workspace_mb: int = 2048
    dla: int | None = None
    seed: int = 0

    def validate(self) -> ExportConfig:
        limits.check({
            "--opset": (self.opset, Range(13, 21)),  # Q/DQ needs 13; TensorRT 8.5 reads at most 17
            "--calib-size": (self.calib_size, limits.COUNT),
            "--max-drop": (self.max_drop, limits.POINTS),
            "--min-int8": (self.min_int8, Range(0, 1)),  # share of the MACs
            "--workspace": (self.workspace_mb, limits.WORKSPACE_MB),
            "--dla": (self.dla, limits.DLA_CORE),
        })
        if self.calib_method not in values(CalibMethod):
            raise UsageError(f"--calib-method must be one of {', '.join(values(CalibMethod))}")
        if self.calib_mode not in values(CalibMode):
            raise UsageError("--calib-mode must be explicit or implicit")
        if self.batch != "dynamic" and not (self.batch.isdigit() and int(self.batch) >= 1):
            raise UsageError(f"--batch must be 'dynamic' or a positive integer, got {self.batch!r}")
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run) / "export"


@dataclass
class ExportReport:
    out: str
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    guard: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None  # Int8Share.to_dict() of model.int8.onnx
    notes: list[str] = field(default_factory=list)
    ok: bool = True


class Log:
    """Progress lines from export; the CLI prints them, tests ignore them."""

    def __call__(self, msg: str) -> None: ...
