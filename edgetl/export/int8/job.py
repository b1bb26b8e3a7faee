"""What one INT8 build works with (`Int8Job`), shared by bias correction, the guard and the CPU variant,
and what it returns (`Int8Result`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...data.sources import Split, eval_transform, make_loader
from ...images import Preprocess
from ...metrics import EvalResult
from ...progress import Log
from ...runtime.base import Runner
from ..config import ExportConfig

PROBE_MIN_IMAGES = 16  # the fewest calibration images the guard's ranking or bias correction measures on


@dataclass
class Int8Result:
    ok: bool
    accuracy: dict[str, float]
    calibration: dict[str, Any]
    guard: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    cpu: dict[str, Any] | None = None
    share: dict[str, Any] | None = None
    qat: dict[str, Any] | None = None  # what quantization-aware training did, when it ran


class ValFeed:
    """The validation split preprocessed once (when it fits in MAX_VAL_BYTES), so that the guard's
    evaluations after the first cost inference only."""

    MAX_VAL_BYTES = 1 << 30

    def __init__(self, split: Split, pp: Preprocess, num_classes: int) -> None:
        self.split, self.pp, self.num_classes = split, pp, num_classes
        self.cached: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.fits = len(split) * 3 * pp.size * pp.size * 4 <= self.MAX_VAL_BYTES

    def _batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.cached is not None:
            yield from self.cached
            return
        got = []
        for x, y in make_loader(self.split, eval_transform(self.pp), 64, shuffle=False, workers=0):
            got.append((x.numpy(), y.numpy()))
            yield got[-1]
        if self.fits:
            self.cached = got

    def evaluate(self, runner: Runner) -> EvalResult:
        from ...metrics import Scorer

        scorer = Scorer(self.num_classes)
        for x, y in self._batches():
            scorer.update(runner.run(x), y)
        return scorer.result()


@dataclass
class Int8Job:
    """What one INT8 build works with; the guard's attempts share it."""

    prep: Path
    work: Path
    cache: Path
    cfg: ExportConfig
    calib: Split
    val: ValFeed
    fp32: EvalResult
    macs: dict[str, int]
    log: Log
    fast_rank: bool = True  # rank on NCHWc kernels: the order is what matters there
    cpu_cache: Path | None = None  # ranges for the CPU layout when they differ from ``cache`` (QAT's)

    def simulated(self, model: Any, name: str) -> EvalResult:
        """Top-1 of ``model`` with Q/DQ simulated in float: what TensorRT approximates, on any CPU."""
        from ...runtime.onnxruntime import OrtRunner

        path = self.work / name
        path.write_bytes(model.SerializeToString())
        return self.val.evaluate(OrtRunner(path, own=True, simulate=True))


def accuracy_entry(acc: EvalResult, ref: EvalResult) -> dict[str, Any]:
    return {"top1": acc.top1, "top5": acc.top5, "delta_top1": acc.top1 - ref.top1}
