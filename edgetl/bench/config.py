"""What `edgetl bench` is asked to measure (`BenchConfig`, validated once), its backends and sample counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from .. import limits
from ..choices import Device
from ..errors import UsageError
from ..limits import Range
from ..options import check_fields, option

SCHEMA_VERSION = 1
BACKENDS = ("torch", "ort-fp32", "ort-fp16", "ort-int8", "trt-fp16", "trt-int8")
RUNTIMES = {"torch": "torch", "ort": "onnxruntime", "trt": "tensorrt"}
MIN_SAMPLES = 100  # per row and batch size, over all rounds: p99 of fewer is little more than the maximum
MAX_ROUND_SECONDS = 30.0  # a very slow row stops here even below MIN_SAMPLES (its `samples` says so)
POOL_BATCHES = 8  # distinct real batches the timed inputs rotate over
E2E_MIN_SAMPLES = 20
ACCURACY_BATCH = 64
GATE_ROUNDS = 3  # default rounds when gating against a baseline
MAX_REGRESSION = 0.10  # default latency tolerance of the gate; rounds further apart than this mark a row unstable


ROWS, TIMING, GATE = "Rows", "Timing", "Gate"


@dataclass
class BenchConfig:
    """What `edgetl bench` measures and how; validated once by ``validate``. The CLI evaluates these hints
    on the runtime's Python 3.8, hence `typing.Optional`/`List`/`Tuple`."""

    targets: List[str]
    data: Optional[str] = option(None, "Validation data: an ImageFolder (its val/ if present), 'digits' or 'cifar10' "
                                 "(default: the run's own validation split).", ROWS, metavar="PATH")
    backends: Tuple[str, ...] = BACKENDS
    batch_sizes: Tuple[int, ...] = (1, 8)
    device: str = option("auto", "auto: PyTorch on CUDA when it sees a GPU, ONNX Runtime on CPU; cuda: both on "
                         "CUDA. TensorRT always runs on the GPU.", ROWS, choices=Device)
    e2e: bool = option(True, "Also time decode + preprocess + inference from image files.", ROWS,
                       flags=("--e2e/--no-e2e",))
    roofline: bool = option(False, "Measure this machine's matrix-multiply peaks, count the model's FLOPs, report "
                            "GFLOP/s and the fraction of peak.", ROWS, flags=("--roofline",))
    cuda_graph: bool = option(False, "TensorRT rows: capture each enqueue in a CUDA graph and time its launches "
                              "(trtexec's --useCudaGraph); falls back to plain enqueues, saying so, where capture "
                              "fails.", TIMING, flags=("--cuda-graph",))
    vs_trtexec: bool = option(False, "TensorRT rows: also time each engine with trtexec (--useCudaGraph "
                              "--noDataTransfers --useSpinWait) and show its median beside edgetl's, as a ratio.",
                              TIMING, flags=("--vs-trtexec",))
    verify: bool = option(True, "Refuse artifacts whose sha256 differs from the manifest.json beside them (exit 4).",
                          ROWS, flags=("--verify/--no-verify",))
    warmup: int = option(10, "Untimed calls before each row's timing (per round).", TIMING, legal=Range(0, 100_000))
    iters: Optional[int] = option(None, "Timed calls per row and round (default: at least 100 samples over all rounds "
                                  "and --min-seconds per round).", TIMING, legal=Range(1, 10_000_000))
    min_seconds: Optional[float] = option(None, "Least timed seconds per row and round (default 1).", TIMING,
                                          legal=Range(0, 3600, open_lo=True))
    rounds: Optional[int] = option(None, "Interleaved rounds over all rows; p50 is the median of the rounds' medians "
                                   "(default 1; 3 with --baseline or --save-baseline).", TIMING, legal=Range(1, 100))
    threads: Optional[int] = option(None, "CPU threads for PyTorch and ONNX Runtime (default: the cores this process "
                                    "may use).", TIMING, legal=Range(1, 1024))
    baseline: Optional[str] = option(None, "Gate against an earlier --json report: exit 1 on a latency or accuracy "
                                     "regression.", GATE, metavar="FILE")
    max_regression: float = option(MAX_REGRESSION, "Largest accepted p50 latency growth against the baseline, as a fraction.",
                                   GATE, legal=Range(0, 1000))
    max_drop: float = option(1.0, "Largest accepted top-1 drop against the baseline, in points.", GATE,
                             legal=limits.POINTS)
    save_baseline: Optional[str] = option(None, "Write this report as a baseline (not when the gate fails).", GATE,
                                          metavar="FILE")
    force: bool = option(False, "Save --save-baseline even when other processes took more than 10% of the CPU while "
                         "timing (its latencies are then inflated).", GATE, flags=("--force",))
    allow_empty: bool = option(False, "Let a gate that compared no row pass (default: exit 5, since a baseline from "
                               "another machine or with no common rows checks nothing).", GATE,
                               flags=("--allow-empty",))

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
        check_fields(self)
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
