"""What `edgetl bench` is asked to measure (`BenchConfig`, validated once), its backends and sample counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import limits
from ..choices import Device, values
from ..errors import UsageError
from ..limits import Range

SCHEMA_VERSION = 1
BACKENDS = ("torch", "ort-fp32", "ort-fp16", "ort-int8", "trt-fp16", "trt-int8")
RUNTIMES = {"torch": "torch", "ort": "onnxruntime", "trt": "tensorrt"}
MIN_SAMPLES = 100  # per row and batch size, over all rounds: p99 of fewer is little more than the maximum
MAX_ROUND_SECONDS = 30.0  # a very slow row stops here even below MIN_SAMPLES (its `samples` says so)
POOL_BATCHES = 8  # distinct real batches the timed inputs rotate over
E2E_MIN_SAMPLES = 20
ACCURACY_BATCH = 64
GATE_ROUNDS = 3  # default rounds when gating against a baseline


Log = Callable[[str], None]


@dataclass
class BenchConfig:
    """What `edgetl bench` measures and how; validated once by ``validate``."""

    targets: list[str]
    data: str | None = None
    backends: tuple[str, ...] = BACKENDS
    batch_sizes: tuple[int, ...] = (1, 8)
    warmup: int = 10
    iters: int | None = None
    min_seconds: float | None = None  # default 1.0 unless --iters
    rounds: int | None = None  # default 1, GATE_ROUNDS when gating or saving a baseline
    threads: int | None = None  # default: the cores this process may use
    device: str = "auto"
    e2e: bool = True
    roofline: bool = False
    baseline: str | None = None
    max_regression: float = 0.10
    max_drop: float = 1.0
    save_baseline: str | None = None
    verify: bool = True  # refuse artifacts whose sha256 differs from the manifest beside them
    allow_empty: bool = False  # a gate that compared no row passes instead of exiting GATE_EMPTY_EXIT
    force: bool = False  # save the baseline even when other processes took more than BUSY of the CPU

    def validate(self) -> BenchConfig:
        if not self.targets:
            raise UsageError("give at least one run folder or artifact to benchmark")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise UsageError(f"--backends: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(BACKENDS)}")
        if not self.batch_sizes or not all(b in limits.BATCH for b in self.batch_sizes):
            raise UsageError(f"--batch-size: integers {limits.BATCH}, e.g. 1,8")
        if self.iters is not None and self.min_seconds is not None:
            raise UsageError("--iters and --min-seconds exclude each other: fix the sample count or the time, not both")
        limits.check({
            "--warmup": (self.warmup, Range(0, 100_000)),
            "--iters": (self.iters, Range(1, 10_000_000)),
            "--min-seconds": (self.min_seconds, Range(0, 3600, open_lo=True)),
            "--rounds": (self.rounds, Range(1, 100)),
            "--threads": (self.threads, Range(1, 1024)),
            "--max-regression": (self.max_regression, Range(0, 1000)),  # a fraction: 0.10 = 10%
            "--max-drop": (self.max_drop, limits.POINTS),
        })
        if self.device not in values(Device):
            raise UsageError("--device must be auto, cpu or cuda")
        return self

    @property
    def n_rounds(self) -> int:
        return self.rounds or (GATE_ROUNDS if self.baseline or self.save_baseline else 1)

    @property
    def seconds(self) -> float:
        return 0.0 if self.iters else (self.min_seconds or 1.0)


def parse_backends(text: str) -> tuple[str, ...]:
    """``"torch, ort-int8"`` → ``("torch", "ort-int8")``, in BACKENDS order, duplicates dropped."""
    names = {t.strip() for t in text.split(",") if t.strip()}
    unknown = sorted(names - set(BACKENDS))
    if unknown or not names:
        raise UsageError(f"--backends: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(BACKENDS)}")
    return tuple(b for b in BACKENDS if b in names)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,8"`` → ``(1, 8)``, sorted, duplicates dropped."""
    try:
        sizes = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UsageError(f"--batch-size: comma-separated positive integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise UsageError(f"--batch-size: comma-separated positive integers, got {text!r}")
    return tuple(sizes)
