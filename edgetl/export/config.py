"""What `edgetl export` is asked to make (`ExportConfig`, validated once) and what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import limits
from ..choices import CalibMethod, CalibMode, QatMode
from ..errors import UsageError
from ..limits import Range
from ..options import check_fields, option

ARTIFACTS, INT8, ENGINES = "Artifacts", "INT8", "TensorRT engines"


@dataclass
class ExportConfig:
    run: str
    out: str | None = option(None, "Output folder (default RUN/export).", ARTIFACTS, metavar="DIR")
    int8: bool = option(False, "Also write model.int8.onnx: calibrated, TensorRT-shaped Q/DQ, accuracy-guarded.",
                        ARTIFACTS, flags=("--int8",))
    fp16: bool = option(False, "Also write model.fp16.onnx (float16 compute, float32 I/O).", ARTIFACTS,
                        flags=("--fp16",))
    int8_cpu: bool = option(False, "With --int8: also write model.int8-cpu.onnx, INT8 laid out for ONNX Runtime "
                            "on CPUs (uint8 activations).", ARTIFACTS, flags=("--int8-cpu",))
    opset: int = option(17, "ONNX opset; 17 keeps TensorRT 8.5 (JetPack 5) able to read it.", ARTIFACTS,
                        legal=Range(13, 21))  # Q/DQ needs 13
    batch: str = option("dynamic", "'dynamic' or a fixed batch size N.", ARTIFACTS, metavar="N")
    calib: str | None = option(None, "Calibration images: an ImageFolder or a flat folder (default: a stratified "
                               "sample of the run's training data).", INT8, metavar="DIR")
    calib_size: int = option(512, "Calibration images to use.", INT8, legal=limits.COUNT)
    calib_method: str = option("minmax", "How activation ranges are chosen: minmax (observed range), entropy "
                               "(TensorRT's KL-divergence threshold), percentile (99.999%).", INT8,
                               choices=CalibMethod)
    bias_correction: bool = option(True, "Correct each quantized conv's bias for the mean error INT8 adds to its "
                                   "output (cifar10-mini: -0.90 to 0.00 points).", INT8)
    quantize_stem: bool = option(False, "Quantize the first layer too (it sees raw pixels; in float it costs "
                                 "little and saved ~1 point on cifar10-mini).", INT8)
    max_drop: float = option(0.5, "Largest INT8 top-1 drop accepted (points; model.int8.onnx in simulated "
                             "numerics, model.int8-cpu.onnx on this CPU's kernels); past it, as few of the most "
                             "sensitive layers as fit stay in float, in each INT8 file.", INT8, legal=limits.POINTS)
    min_int8: float = option(0.8, "Least share of the MACs that must run in INT8, or export fails (0 accepts "
                             "any).", INT8, legal=Range(0, 1))
    qat: str = option("off", "Quantization-aware training (NVIDIA ModelOpt, the qat extra): fine-tune the run's "
                      "best weights with INT8 fake-quantized in, then export them as model.int8.onnx. --qat alone "
                      "means on; auto trains only when post-training INT8 misses --max-drop, before any layer is "
                      "floated.", INT8, choices=QatMode, bare="on", metavar="[on|auto|off]")
    qat_epochs: int = option(1, "Epochs of quantization-aware training.", INT8, legal=Range(1, 1000))
    qat_lr: float | None = option(None, "Peak learning rate of quantization-aware training (default: 10% of "
                                  "the run's).", INT8, legal=limits.POSITIVE)
    calib_mode: str = option("explicit", "explicit: engines build from model.int8.onnx (TensorRT 8.5-11); "
                             "implicit: TensorRT's IInt8EntropyCalibrator2 (8.x/10.x only).", ENGINES,
                             choices=CalibMode)
    engine: bool = option(True, "Build TensorRT engines where TensorRT and a GPU are present.", ENGINES,
                          flags=("--engine/--no-engine",))
    workspace_mb: int = option(2048, "TensorRT builder workspace limit in MB.", ENGINES, legal=limits.WORKSPACE_MB,
                               flags=("--workspace",))
    dla: int | None = option(None, "Jetson DLA core for the engines (GPU fallback on).", ENGINES,
                             legal=limits.DLA_CORE)
    seed: int = 0

    def validate(self) -> ExportConfig:
        check_fields(self)
        if self.qat != "off" and not self.int8:
            raise UsageError("--qat trains the INT8 model: it needs --int8")
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
    qat: dict[str, Any] | None = None  # what quantization-aware training did, when it ran
    notes: list[str] = field(default_factory=list)
    ok: bool = True
