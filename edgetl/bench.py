"""`edgetl bench`: accuracy and latency of the original model and of every exported artifact, side by side,
and a latency/accuracy regression gate for CI.

Why it is built this way:

- Accuracy goes through the code path of `edgetl eval` (torchvision preprocessing, the same validation
  split, ``evaluate_runner``), once per artifact. Without PyTorch (the Jetson runtime image) the deploy
  preprocessing of `edgetl predict` (``Preprocess.to_array``, within one grey level of torchvision) is
  used instead, and the report says which.
- Latency: warm-up first; fixed thread counts (ONNX Runtime intra-op threads, ``torch.set_num_threads``);
  timed inputs rotate over several real, preprocessed validation batches; the garbage collector is off
  while timing (as ``timeit`` does); at least MIN_SAMPLES samples and ``--min-seconds`` per row unless
  ``--iters`` fixes the count, so p99 is not just the maximum of a handful. PyTorch on CUDA is timed
  with CUDA events on device-resident inputs; the other backends with the host clock around
  ``runner.run`` (for TensorRT that includes the host-device copies, what an application sees).
- End-to-end latency (decode + preprocess + infer, from image files) is measured separately, with the
  deploy preprocessing that `edgetl predict` uses.
- Rounds: every row is timed once per round, rows interleaved and their order rotated between rounds,
  so a burst of noise from a neighbour hits all rows rather than one. p50 is the median of the rounds'
  medians. The gate judges each row on its fastest round's median against the baseline's fastest round:
  a neighbour's work only ever adds time, so the best of several rounds is the steadiest estimate of
  what the code costs; and it must also be slower than every baseline round, since a change inside the
  baseline's own round-to-round spread is noise. A row that looks regressed is timed again, up to
  RECHECKS times as many rounds more, and judged on all of them: on a shared machine a gate that flaps
  is a gate people learn to ignore.
- Contention: the CPU time other processes (and the hypervisor, as steal) took while the rows were
  timed is read from /proc/stat and reported, so a slow row on a busy machine says why.
- Rows are matched to a baseline by (artifact file name, backend, precision, batch size, device) and
  only when the machine fingerprint (CPU model and the ISA flags that pick kernels, usable cores,
  threads, GPUs, Jetson power mode and clock lock) is the same: latencies from different machines are
  not comparable, and two EPYCs of one model name, one with AVX-512 VNNI and one without, are two machines.

Torch-free at import: PyTorch is imported only for the ``torch`` backend and the eval preprocessing path.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, limits, machine
from .artifacts.manifest import precision_of, read_manifest
from .artifacts.record import describe
from .artifacts.run import read_run
from .errors import ArtifactError, DataError, EdgetlError, UsageError, one_line
from .fileio import atomic_write_json
from .images import ImageSource, Preprocess, load_rgb
from .limits import Range
from .metrics import EvalResult, Scorer
from .runtime.verify import file_sha256

SCHEMA_VERSION = 1
BACKENDS = ("torch", "ort-fp32", "ort-fp16", "ort-int8", "trt-fp16", "trt-int8")
RUNTIMES = {"torch": "torch", "ort": "onnxruntime", "trt": "tensorrt"}
MIN_SAMPLES = 100  # per row and batch size, over all rounds: p99 of fewer is little more than the maximum
MAX_ROUND_SECONDS = 30.0  # a very slow row stops here even below MIN_SAMPLES (its `samples` says so)
POOL_BATCHES = 8  # distinct real batches the timed inputs rotate over
E2E_MIN_SAMPLES = 20
ACCURACY_BATCH = 64
GATE_EMPTY_EXIT = 5  # `edgetl bench --baseline` compared no row (other machine, no common rows, all failed)
GATE_ROUNDS = 3  # default rounds when gating against a baseline
RECHECKS = 2  # times a row over the latency limit gets GATE_ROUNDS more rounds before it is judged
BUSY = 0.10  # share of CPU time taken by others while timing above which the report warns
FINGERPRINT_VERSION = 2  # 2: the CPU's kernel-selecting ISA flags are part of it (1: model name only)
ROW_KEY = ("artifact", "backend", "precision", "batch_size", "device")
ROW_FIELDS = (
    "run", "model", "backend", "runtime", "precision", "device", "artifact", "sha256", "batch_size", "status",
    "top1", "top5", "delta_top1", "images", "numerics",
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "throughput", "samples", "p50_rounds_ms", "timer",
    "e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms", "e2e_mean_ms", "e2e_std_ms", "e2e_throughput", "e2e_samples",
    "size_mb", "speedup", "gflops", "peak_gflops", "peak_kind", "peak_fraction",
)

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
        if self.device not in ("auto", "cpu", "cuda"):
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


# --- what to benchmark -------------------------------------------------------------------------------

@dataclass
class Item:
    """One artifact on one backend, or the reason it cannot run here."""

    backend: str
    precision: str
    artifact: Path | None
    skip: str | None = None


@dataclass
class Target:
    """One model: its run folder (when present), its export folder, and the items benched for it."""

    run: Path | None
    export: Path
    classes: list[str]
    preprocess: Preprocess
    info: dict[str, Any] | None  # run.json
    model: str | None
    items: list[Item] = field(default_factory=list)
    all_artifacts: bool = False
    files: list[Path] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)  # the original's accuracy, for Δ top-1

    @property
    def name(self) -> str:
        return str(self.run or self.export)


def plan(cfg: BenchConfig) -> list[Target]:
    """Group the command-line targets by model and list each one's rows (runnable or not, with why)."""
    groups: dict[Path, Target] = {}
    for spec in cfg.targets:
        path = Path(spec)
        if not path.exists():
            raise UsageError(f"{path}: no such run folder or artifact")
        run, export, file = _locate(path)
        key = (run or export).resolve()
        if key not in groups:
            meta = describe(run or export)
            info = read_run(run).doc if run else None
            manifest = read_manifest(export)
            model = (info or {}).get("model") or (manifest.model if manifest else None)
            groups[key] = Target(run, export, meta.classes, meta.preprocess, info, model)
        target = groups[key]
        if file is None:
            target.all_artifacts = True
        elif file not in target.files:
            if _backend_of(file) not in cfg.backends:
                raise UsageError(f"{file}: its backend {_backend_of(file)} is not among --backends {','.join(cfg.backends)}")
            target.files.append(file)
    trt_ok, trt_why = _tensorrt_available() if any(b.startswith("trt") for b in cfg.backends) else (False, "")
    for target in groups.values():
        target.items = _items(target, cfg.backends, trt_ok, trt_why)
    return list(groups.values())


def _locate(path: Path) -> tuple[Path | None, Path, Path | None]:
    """(run folder or None, export folder, the artifact file or None for 'every artifact')."""
    if path.is_dir():
        if (path / "run.json").is_file():
            return path, path / "export", None
        if (path / "manifest.json").is_file():
            return (path.parent if (path.parent / "run.json").is_file() else None), path, None
        raise UsageError(f"{path}: neither a run folder (run.json) nor an export folder (manifest.json)")
    _backend_of(path)  # refuses unknown file types
    if path.suffix == ".pt":
        if not (path.parent / "run.json").is_file():
            raise ArtifactError(f"{path}: no run.json beside it says which model it is")
        return path.parent, path.parent / "export", path
    run = path.parent.parent if (path.parent.parent / "run.json").is_file() else None
    return run, path.parent, path


def _backend_of(path: Path) -> str:
    if path.suffix == ".pt":
        return "torch"
    if path.suffix in (".onnx", ".engine"):
        return f"{'ort' if path.suffix == '.onnx' else 'trt'}-{precision_of(path.name)}"
    raise UsageError(f"{path}: not something bench runs (a run folder, .onnx, .engine or .pt)")


def _items(target: Target, backends: tuple[str, ...], trt_ok: bool, trt_why: str) -> list[Item]:
    items: list[Item] = []
    for backend in backends:
        if backend == "torch":  # the original (best.pt unless a checkpoint was named): the reference
            named = [f for f in target.files if f.suffix == ".pt"]
            if named or target.run:
                items.extend(Item("torch", "fp32", f) for f in named or [target.run / "best.pt"])
            else:
                items.append(Item("torch", "fp32", None, f"no run folder (best.pt, run.json) next to {target.export}"))
            continue
        kind, precision = backend.split("-")
        suffix = ".onnx" if kind == "ort" else ".engine"
        if target.all_artifacts:
            found = sorted(p for p in target.export.glob(f"*{suffix}")
                           if not p.name.startswith(".") and precision_of(p.name) == precision)
        else:
            found = [f for f in target.files if _backend_of(f) == backend]
        if kind == "trt" and not trt_ok:
            items.extend(Item(backend, precision, f, f"TensorRT cannot run here: {trt_why}") for f in found)
            if not found and target.all_artifacts:
                items.append(Item(backend, precision, None, f"TensorRT cannot run here: {trt_why}"))
            continue
        items.extend(Item(backend, precision, f) for f in found)
        if not found and target.all_artifacts:
            items.append(Item(backend, precision, None, _missing(target, kind, precision)))
    return items


def _missing(target: Target, kind: str, precision: str) -> str:
    run = target.run or "RUN"
    if kind == "ort":
        name = "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"
        how = f"edgetl export {run}" + ("" if precision == "fp32" else f" --{precision}")
        return f"no {name} in {target.export} (make it with `{how}`)"
    return (f"no model.{precision}.engine in {target.export} (build it here with "
            f"`edgetl build {target.export / f'model.{precision}.onnx'} --{precision}`)")


def _tensorrt_available() -> tuple[bool, str]:
    from .runtime.tensorrt import available

    return available()


# --- the validation images ----------------------------------------------------------------------------

def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def validation_images(target: Target, data: str | None, torch_ok: bool) -> tuple[str, list[ImageSource], list[int]]:
    """The images accuracy is measured on, with labels in the target's class order.

    With PyTorch and a run folder: exactly `edgetl eval`'s (the run's validation split, or ``data``).
    Otherwise an ImageFolder (``data``, or the run's own data folder when it has a val/ part).
    """
    if torch_ok and target.run is not None:
        from .evaluate import eval_split, load_run_model

        where, split = eval_split(load_run_model(target.run), data)
        return where, list(split.items), list(split.labels)
    spec = data
    if spec is None:
        cfg = (target.info or {}).get("config", {})
        source = Path(str(cfg.get("data", "")))
        if cfg.get("val_split") is None and (source / "val").is_dir():
            spec = str(source)
        else:
            need = "PyTorch and the run folder" if target.run is None or not torch_ok else "PyTorch"
            raise DataError(f"{target.name}: its validation split needs {need} to rebuild; "
                            "pass --data FOLDER (an ImageFolder of validation images, or its root with val/)")
    if spec in ("digits", "cifar10"):
        raise DataError(f"--data {spec} needs PyTorch and the run folder here; pass --data FOLDER, an ImageFolder")
    return _folder_images(Path(spec), target.classes)


def _folder_images(root: Path, classes: list[str]) -> tuple[str, list[ImageSource], list[int]]:
    """An ImageFolder's images (its val/ when present) labelled by class name, without PyTorch."""
    from .runtime.predictor import expand_images

    folder = root / "val" if (root / "val").is_dir() else root
    if not folder.is_dir():
        raise DataError(f"{root}: no such data folder")
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    unknown = [c for c in names if c not in classes]
    if unknown:
        raise DataError(f"{folder}: classes {unknown[:5]} are not among the model's classes")
    items: list[ImageSource] = []
    labels: list[int] = []
    for name in names:
        files = expand_images([folder / name])
        items.extend(files)
        labels.extend([classes.index(name)] * len(files))
    return str(folder), items, labels


def _preprocess(items: list[ImageSource], pp: Preprocess, torch_ok: bool) -> np.ndarray:
    """Normalized NCHW float32, through the accuracy path's preprocessing."""
    if torch_ok:
        import torch

        from .data.sources import eval_transform

        tf = eval_transform(pp)
        return torch.stack([tf(load_rgb(s)) for s in items]).numpy()
    return np.stack([pp.to_array(load_rgb(s)) for s in items])


def accuracy(runner: Any, items: list[ImageSource], labels: list[int], pp: Preprocess, num_classes: int,
             torch_ok: bool) -> EvalResult:
    """Top-1/top-5 of any runner: `edgetl eval`'s code path with PyTorch, the deploy preprocessing without."""
    if torch_ok:
        from .data.sources import Split
        from .evaluate import evaluate_runner

        return evaluate_runner(runner, Split(items, labels), pp, num_classes, ACCURACY_BATCH)
    scorer = Scorer(num_classes)
    for i in range(0, len(items), ACCURACY_BATCH):
        scorer.update(runner.run(_preprocess(items[i:i + ACCURACY_BATCH], pp, False)),
                      np.asarray(labels[i:i + ACCURACY_BATCH]))
    return scorer.result()


class Inputs:
    """Real validation images for timing: a preprocessed pool to rotate over, and image files for end-to-end."""

    def __init__(self, items: list[ImageSource], pp: Preprocess, max_batch: int, torch_ok: bool, tmp: Path) -> None:
        pick = _spread(len(items), min(len(items), max(64, max_batch * POOL_BATCHES), 512))
        self.pool = _preprocess([items[i] for i in pick], pp, torch_ok)
        self.preprocess = pp
        self.files: list[Path] = []
        for n, i in enumerate(_spread(len(items), min(len(items), max(32, 4 * max_batch)))):
            src = items[i]
            if isinstance(src, (str, Path)):
                self.files.append(Path(src))
            else:  # in-memory data sets (digits, cifar10): encode real files so decoding is measured
                tmp.mkdir(parents=True, exist_ok=True)
                f = tmp / f"{n:04d}.png"
                load_rgb(src).save(f)
                self.files.append(f)

    def batches(self, batch_size: int) -> list[np.ndarray]:
        pool = self.pool if len(self.pool) >= batch_size else np.resize(self.pool, (batch_size, *self.pool.shape[1:]))
        n = max(1, min(POOL_BATCHES, len(pool) // batch_size))
        return [np.ascontiguousarray(pool[i * batch_size:(i + 1) * batch_size]) for i in range(n)]


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, so every class shows up in the timed inputs."""
    return sorted(set(np.linspace(0, n - 1, num=max(k, 1)).round().astype(int).tolist())) if n else []


# --- timing -------------------------------------------------------------------------------------------

Timed = Callable[[int], float]  # i -> milliseconds of the i-th call


def host_timer(runner: Any, batches: list[np.ndarray]) -> Timed:
    def timed(i: int) -> float:
        x = batches[i % len(batches)]
        t0 = time.perf_counter_ns()
        runner.run(x)
        return (time.perf_counter_ns() - t0) / 1e6
    return timed


def cuda_event_timer(runner: Any, batches: list[np.ndarray]) -> Timed:
    """PyTorch on CUDA: inputs already on the device, the model's own time between two CUDA events."""
    import torch

    inputs = [torch.from_numpy(b).to(runner.device) for b in batches]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(i: int) -> float:
        with torch.inference_mode():
            start.record()
            runner.model(inputs[i % len(inputs)])
            end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    return timed


def e2e_timer(runner: Any, files: list[Path], batch_size: int, pp: Preprocess) -> Timed:
    """Decode + the deploy preprocessing of `edgetl predict` + inference, from image files."""
    def timed(i: int) -> float:
        chosen = [files[(i * batch_size + j) % len(files)] for j in range(batch_size)]
        t0 = time.perf_counter_ns()
        runner.run(np.stack([pp.to_array(load_rgb(f)) for f in chosen]))
        return (time.perf_counter_ns() - t0) / 1e6
    return timed


def sample(timed: Timed, warmup: int, iters: int | None, min_seconds: float, min_samples: int) -> list[float]:
    """Warm up, then time ``iters`` calls, or at least ``min_samples`` calls and ``min_seconds``."""
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for i in range(warmup):
            timed(i)
        out: list[float] = []
        start = time.perf_counter()
        while True:
            out.append(timed(len(out)))
            elapsed = time.perf_counter() - start
            if iters is not None:
                if len(out) >= iters:
                    return out
            elif (len(out) >= min_samples and elapsed >= min_seconds) or elapsed >= max(min_seconds, MAX_ROUND_SECONDS):
                return out
    finally:
        if gc_was_on:
            gc.enable()


def latency_stats(rounds: list[list[float]], batch_size: int) -> dict[str, Any]:
    """p50 = median of the rounds' medians; p90/p99/mean/std over every sample of every round."""
    allv = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds])
    mean = float(allv.mean())
    p90, p99 = np.percentile(allv, [90, 99])
    return {"p50_ms": _r(float(np.median([np.median(r) for r in rounds]))), "p90_ms": _r(p90), "p99_ms": _r(p99),
            "mean_ms": _r(mean), "std_ms": _r(float(allv.std(ddof=1)) if len(allv) > 1 else 0.0),
            "min_ms": _r(float(allv.min())), "throughput": round(batch_size * 1000.0 / mean, 2),
            "samples": int(len(allv)), "p50_rounds_ms": [_r(float(np.median(r))) for r in rounds]}


def _r(v: float) -> float:
    return round(float(v), 4)


@dataclass
class Live:
    """An opened runner with its accuracy and the samples collected so far, per batch size."""

    target: Target
    item: Item
    runner: Any
    acc: EvalResult
    numerics: str
    timer: str
    model_timers: dict[int, Timed]
    e2e_timers: dict[int, Timed]
    rounds: dict[int, list[list[float]]] = field(default_factory=dict)
    e2e: dict[int, list[float]] = field(default_factory=dict)

    def row_id(self, batch_size: int) -> dict[str, Any]:
        return {"artifact": _artifact_name(self.item), "backend": self.item.backend,
                "precision": self.runner.precision, "batch_size": batch_size, "device": self.runner.device}


def planned_device(backend: str, cfg: BenchConfig, torch_ok: bool) -> str:
    """TensorRT: cuda. PyTorch: cuda when asked, or with --device auto when it sees a GPU. ONNX Runtime:
    cpu unless --device cuda (its CPU path is a first-class target and every test runs it)."""
    if backend.startswith("trt"):
        return "cuda"
    if cfg.device != "auto" or backend != "torch":
        return "cuda" if cfg.device == "cuda" else "cpu"
    if not torch_ok:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- the whole bench ----------------------------------------------------------------------------------

def run_bench(cfg: BenchConfig, log: Log | None = None) -> dict[str, Any]:
    """Measure every row, gate against the baseline when one is given, return the report (see README).

    With ``save_baseline`` the report is written there too, unless the gate failed: a regression must
    not become the next baseline by accident.
    """
    cfg.validate()
    baseline = load_report(Path(cfg.baseline)) if cfg.baseline else None  # a bad baseline fails before the work
    session = _Session(cfg, log or (lambda _m: None))
    targets = plan(cfg)
    if cfg.verify:
        from .runtime.verify import verify_artifact

        for target in targets:
            for item in target.items:
                if item.artifact is not None and not item.skip and item.artifact.is_file():
                    verify_artifact(item.artifact)
    env = environment(session.threads, session.torch_ok)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "edgetl_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"targets": list(cfg.targets), "data": cfg.data, "backends": list(cfg.backends),
                     "batch_sizes": list(cfg.batch_sizes), "warmup": cfg.warmup, "iters": cfg.iters,
                     "min_seconds": cfg.seconds, "min_samples": MIN_SAMPLES, "rounds": cfg.n_rounds,
                     "threads": session.threads, "device": cfg.device, "e2e": cfg.e2e},
        "environment": env, "targets": [], "rows": [], "contention": None, "roofline": None, "gate": None,
    }
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        try:
            report["targets"] = [session.prepare(t, Path(tmp) / str(n)) for n, t in enumerate(targets)]
            session.measure(session.lives, range(cfg.n_rounds))
            rows = session.rows(targets)
            if baseline is not None:
                rows, report["gate"] = session.judge(targets, rows, env, baseline)
            report["rows"] = rows
            report["contention"] = session.meter.to_dict()
            if cfg.roofline:
                report["roofline"] = _roofline(targets, rows, session.threads, session.log)
        finally:
            session.close()
    if cfg.save_baseline and (report["gate"] is None or report["gate"]["passed"]):
        save_report(Path(cfg.save_baseline), report)
    return report


class _Session:
    """The runners opened for one bench, their samples, and the rows and verdict made from them."""

    def __init__(self, cfg: BenchConfig, log: Log) -> None:
        self.cfg, self.log = cfg, log
        self.threads = cfg.threads or machine.usable_cores()
        self.torch_ok = _have_torch()
        if self.torch_ok:
            import torch

            torch.set_num_threads(self.threads)
        self.lives: list[Live] = []
        self.status: dict[int, str] = {}  # id(item) -> why it has no live runner
        self.meter = CpuMeter()

    def prepare(self, target: Target, tmp: Path) -> dict[str, Any]:
        """Load the validation images, open every runner and measure its accuracy; the target's report entry."""
        where, items, labels = validation_images(target, self.cfg.data, self.torch_ok)
        self.log(f"{target.name}: {len(items)} validation images from {where}")
        inputs = Inputs(items, target.preprocess, max(self.cfg.batch_sizes), self.torch_ok, tmp)
        for item in target.items:
            live = f"skipped: {item.skip}" if item.skip else self._open(item, target, items, labels, inputs)
            if isinstance(live, str):
                self.status[id(item)] = live
            else:
                self.lives.append(live)
        target.reference = _reference(target, self._torch_live(target), self.cfg.data)
        return {"run": target.name, "model": target.model, "data": where, "images": len(items),
                "reference": target.reference}

    def _open(self, item: Item, target: Target, items: list[ImageSource], labels: list[int],
              inputs: Inputs) -> Live | str:
        """Open the runner and measure its accuracy; one that cannot run here becomes a status string."""
        assert item.artifact is not None  # internal invariant: items without an artifact carry a skip reason
        device = planned_device(item.backend, self.cfg, self.torch_ok)
        try:
            if item.backend == "torch" and not self.torch_ok:
                raise UsageError("PyTorch is not installed here")
            if item.backend == "torch" and device == "cuda":
                import torch

                if not torch.cuda.is_available():
                    raise UsageError("PyTorch sees no CUDA GPU")
            if item.backend == "torch":  # rebuilding the model needs the training code; nothing else does
                from .evaluate import open_runner
            else:
                from .runtime import open_runner
            runner = open_runner(item.artifact, device=device, threads=self.threads)
        except UsageError as e:  # cannot run here: no GPU, no provider, no PyTorch
            return f"skipped: {one_line(e)}"
        except EdgetlError as e:  # an untrusted or broken artifact
            self.log(f"{item.backend} ({item.artifact.name}): {one_line(e)}")
            return f"failed: {one_line(e)}"
        try:
            self.log(f"{item.backend} ({item.artifact.name}): accuracy on {len(items)} images")
            judge, numerics = _accuracy_runner(runner)
            try:
                acc = accuracy(judge, items, labels, target.preprocess, len(target.classes), self.torch_ok)
            finally:
                if judge is not runner:
                    judge.close()
            cuda_torch = item.backend == "torch" and runner.device == "cuda"
            make = cuda_event_timer if cuda_torch else host_timer
            bss = self.cfg.batch_sizes
            model_timers = {bs: make(runner, inputs.batches(bs)) for bs in bss}
            e2e = {bs: e2e_timer(runner, inputs.files, bs, inputs.preprocess) for bs in bss} if self.cfg.e2e else {}
        except EdgetlError as e:
            runner.close()
            return f"failed: {one_line(e)}"
        return Live(target, item, runner, acc, numerics, "cuda-event" if cuda_torch else "host", model_timers, e2e)

    def _torch_live(self, target: Target) -> Live | None:
        return next((lv for lv in self.lives if lv.target is target and lv.item.backend == "torch"), None)

    def measure(self, lives: list[Live], rounds: range, only: set[tuple] | None = None) -> None:
        """Time every live row in each round; rows interleaved, their order rotated from round to round."""
        with self.meter.timing():
            self._measure(lives, rounds, only)

    def _measure(self, lives: list[Live], rounds: range, only: set[tuple] | None) -> None:
        cfg = self.cfg
        per_round = math.ceil(MIN_SAMPLES / cfg.n_rounds)
        for r in rounds:
            shift = r % max(len(lives), 1)
            for lv in lives[shift:] + lives[:shift]:
                for bs in cfg.batch_sizes:
                    if only is not None and _key(lv.row_id(bs)) not in only:
                        continue
                    samples = sample(lv.model_timers[bs], cfg.warmup, cfg.iters, cfg.seconds, per_round)
                    lv.rounds.setdefault(bs, []).append(samples)
                    if r == 0 and lv.e2e_timers:
                        lv.e2e[bs] = sample(lv.e2e_timers[bs], min(cfg.warmup, 2), cfg.iters, cfg.seconds / 2,
                                            E2E_MIN_SAMPLES)
                    self.log(f"round {r + 1}: {lv.item.backend} ({_artifact_name(lv.item)}) batch {bs}: "
                             f"p50 {np.median(samples):.3f} ms")

    def judge(self, targets: list[Target], rows: list[dict[str, Any]], env: dict[str, Any],
              baseline: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Gate the rows; rows over the latency limit get more rounds, up to RECHECKS times, and are judged
        on all of them (a real regression stays over the limit however often it is timed)."""
        cfg = self.cfg
        result = gate(rows, env, baseline, str(cfg.baseline), cfg.max_regression, cfg.max_drop, cfg.allow_empty)
        rechecked: set[tuple] = set()
        done = cfg.n_rounds
        for _ in range(RECHECKS):
            suspects = {_key(f) for f in result.failures if f["kind"] == "latency"}
            if not suspects:
                break
            self.log(f"gate: {len(suspects)} row(s) look slower than the baseline; "
                     f"{cfg.n_rounds} more round(s) for them before judging")
            again = [lv for lv in self.lives if any(_key(lv.row_id(bs)) in suspects for bs in cfg.batch_sizes)]
            self.measure(again, range(done, done + cfg.n_rounds), only=suspects)
            done += cfg.n_rounds
            rechecked |= suspects
            rows = self.rows(targets)
            result = gate(rows, env, baseline, str(cfg.baseline), cfg.max_regression, cfg.max_drop, cfg.allow_empty)
        if rechecked:
            result.notes.append(f"{len(rechecked)} row(s) over the limit after {cfg.n_rounds} round(s) were timed "
                                f"again, up to {done} rounds in all, and judged on all of them")
        contention = self.meter.to_dict()
        if busy_share(contention) > BUSY:
            result.notes.append(contention_line(contention))
        return rows, result.to_dict()

    def rows(self, targets: list[Target]) -> list[dict[str, Any]]:
        """One row per item and batch size, in plan order; every row has every ROW_FIELDS key."""
        by_item = {id(lv.item): lv for lv in self.lives}
        rows: list[dict[str, Any]] = []
        for target in targets:
            torch_live = self._torch_live(target)
            for item in target.items:
                lv = by_item.get(id(item))
                for bs in self.cfg.batch_sizes:
                    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
                    row.update(run=target.name, model=target.model, backend=item.backend,
                               runtime=RUNTIMES[item.backend.split("-")[0]], precision=item.precision,
                               artifact=_artifact_name(item), batch_size=bs,
                               device=planned_device(item.backend, self.cfg, self.torch_ok))
                    if item.artifact is not None and item.artifact.is_file():
                        row["sha256"] = file_sha256(item.artifact)
                        row["size_mb"] = round(item.artifact.stat().st_size / 1e6, 3)
                    if lv is None:
                        row["status"] = self.status[id(item)]
                    else:
                        row.update(self._measured(lv, bs, target.reference, torch_live))
                    rows.append(row)
        return rows

    @staticmethod
    def _measured(lv: Live, bs: int, ref: dict[str, Any], torch_live: Live | None) -> dict[str, Any]:
        out: dict[str, Any] = {**lv.row_id(bs), "status": "ok", "timer": lv.timer, "top1": round(lv.acc.top1, 3),
                               "top5": round(lv.acc.top5, 3), "images": lv.acc.images, "numerics": lv.numerics}
        if ref["top1"] is not None:
            out["delta_top1"] = round(out["top1"] - ref["top1"], 3)
        out.update(latency_stats(lv.rounds[bs], bs))
        if bs in lv.e2e:
            e2e = latency_stats([lv.e2e[bs]], bs)
            out.update({f"e2e_{k}": e2e[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")},
                       e2e_throughput=e2e["throughput"], e2e_samples=e2e["samples"])
        if torch_live is not None and bs in torch_live.rounds:
            out["speedup"] = round(latency_stats(torch_live.rounds[bs], bs)["p50_ms"] / out["p50_ms"], 3)
        return out

    def close(self) -> None:
        for lv in self.lives:
            lv.runner.close()


def _accuracy_runner(runner: Any) -> tuple[Any, str]:
    """The runner whose numbers count for accuracy, and which numerics those are. A TensorRT-layout INT8
    file on a CPU is judged in float simulation (what TensorRT approximates), never by the host's
    integer kernels; latency is still timed on ``runner``."""
    from .runtime.numerics import SIMULATED, TENSORRT

    if runner.backend == "tensorrt":
        return runner, TENSORRT
    if runner.backend == "onnxruntime":
        if runner.int8_layout == "tensorrt" and runner.device == "cpu":
            from .runtime.onnxruntime import OrtRunner

            return OrtRunner(runner.path, threads=runner.threads, own=True, simulate=True), SIMULATED
        return runner, runner.numerics
    return runner, f"torch-{runner.device}"


def _artifact_name(item: Item) -> str | None:
    return item.artifact.name if item.artifact else None


def _key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in ROW_KEY)


def _reference(target: Target, torch_live: Live | None, data: str | None) -> dict[str, Any]:
    """The original model's accuracy that Δ top-1 is taken against."""
    if torch_live is not None:
        return {"top1": round(torch_live.acc.top1, 3), "top5": round(torch_live.acc.top5, 3),
                "source": "torch row (best.pt, measured now)"}
    metrics = (target.info or {}).get("metrics") or {}
    if data is None and metrics.get("val_top1") is not None:
        return {"top1": metrics["val_top1"], "top5": metrics.get("val_top5"),
                "source": "run.json metrics (best.pt on the same validation split, at training)"}
    return {"top1": None, "top5": None, "source": "none: no torch row and --data differs from the run's split"}


def _roofline(targets: list[Target], rows: list[dict[str, Any]], threads: int, log: Log) -> dict[str, Any]:
    """Peaks of this machine, FLOPs per image of each model, and achieved GFLOP/s per row."""
    from .roofline import count_flops, measure_peaks, peak_for

    cuda = any(r["device"] == "cuda" and r["status"] == "ok" for r in rows) and _have_torch()
    log("roofline: measuring matrix-multiply peaks")
    peaks = measure_peaks(threads, cuda)
    flops: dict[str, Any] = {}
    for target in targets:
        onnx_path = target.export / "model.onnx"
        if onnx_path.is_file():
            count = count_flops(onnx_path)
            flops[target.name] = {"flops_per_image": count.flops, "by_op": count.by_op, "source": str(onnx_path)}
        else:
            flops[target.name] = {"flops_per_image": None, "by_op": {}, "source": f"no {onnx_path} to count from"}
    for row in rows:
        per_image = flops[row["run"]]["flops_per_image"]
        if row["status"] != "ok" or not per_image:
            continue
        row["gflops"] = round(per_image * row["batch_size"] / (row["p50_ms"] / 1e3) / 1e9, 2)
        peak = peak_for(peaks, row["device"], row["precision"])
        if peak:
            row["peak_kind"], row["peak_gflops"] = f"{row['device']} {peak[0]}", peak[1]
            row["peak_fraction"] = round(row["gflops"] / peak[1], 4)
    return {"peaks": peaks, "models": flops}


# --- environment ----------------------------------------------------------------------------------------

class CpuMeter:
    """CPU time taken by other processes and by the hypervisor (steal) while rows are timed, as shares of
    all the machine's CPU time, from /proc/stat and /proc/self/stat (Linux; elsewhere it reports nothing)."""

    def __init__(self) -> None:
        self.total = self.others = self.steal = 0
        self.seconds = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        before, t0 = _cpu_ticks(), time.perf_counter()
        try:
            yield
        finally:
            after = _cpu_ticks()
            if before is not None and after is not None:
                total, busy, steal, own = (a - b for a, b in zip(after, before))
                self.total += total
                self.steal += steal
                self.others += max(0, busy - steal - own)
                self.seconds += time.perf_counter() - t0

    def to_dict(self) -> dict[str, Any] | None:
        if not self.total:
            return None
        return {"other_processes": round(self.others / self.total, 4), "steal": round(self.steal / self.total, 4),
                "seconds": round(self.seconds, 1)}


def _cpu_ticks() -> tuple[int, int, int, int] | None:
    """(all ticks, busy ticks, steal ticks) summed over the machine's CPUs, and this process's ticks."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        own = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
    except (OSError, ValueError, IndexError):
        return None
    total, idle, iowait, steal = sum(fields), fields[3], fields[4], fields[7]  # user nice system idle iowait irq softirq steal
    return total, total - idle - iowait, steal, int(own[11]) + int(own[12])  # utime, stime: fields 14, 15


def busy_share(c: dict[str, Any] | None) -> float:
    """Share of the CPU time others took while timing, from a report's ``contention`` (0 when unknown)."""
    return c["other_processes"] + c["steal"] if c else 0.0


def contention_line(c: dict[str, Any]) -> str:
    return (f"other processes took {c['other_processes']:.0%} of the CPU time while rows were timed "
            f"(hypervisor steal {c['steal']:.0%}): latencies are inflated; measure on a quiet or dedicated machine")


def environment(threads: int, torch_ok: bool, root: Path = Path("/")) -> dict[str, Any]:
    """Hardware, versions and, on a Jetson, power mode and clock lock; plus the fingerprint baselines match on."""
    root = Path(root)
    cpuinfo = machine.read_file(root / "proc/cpuinfo") or ""
    model = machine.cpu_model(cpuinfo)
    flags = machine.cpu_flags(cpuinfo)
    cpu = {"model": model, "cores": os.cpu_count(), "usable_cores": machine.usable_cores(), "threads": threads,
           "flags": [f for f in machine.CPU_FLAGS if f in flags],
           "governor": machine.read_file(root / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")}
    jetson = machine.jetson_info(root)
    if jetson is not None:
        jetson["clocks"] = machine.jetson_clocks(root)
    import onnxruntime as ort

    trt_ok, trt_why = _tensorrt_available()
    env: dict[str, Any] = {
        "hostname": platform.node(), "os": platform.platform(), "python": platform.python_version(),
        "cpu": cpu, "gpus": _gpus(torch_ok), "jetson": jetson,
        "versions": {"edgetl": __version__, "numpy": np.__version__, "torch": _version("torch"),
                     "torchvision": _version("torchvision"), "onnxruntime": ort.__version__,
                     "tensorrt": _tensorrt_version(trt_ok)},
        "onnxruntime_providers": ort.get_available_providers(),
        "tensorrt": {"usable": trt_ok, "detail": trt_why},
        "accuracy_preprocessing": ("torchvision, as `edgetl eval`" if torch_ok else
                                   "PIL/numpy, as `edgetl predict` (PyTorch is not installed)"),
    }
    fields = {"version": FINGERPRINT_VERSION, "machine": platform.machine(), "cpu": model, "isa": cpu["flags"],
              "usable_cores": cpu["usable_cores"], "threads": threads,
              "gpus": [g["name"] for g in env["gpus"]],
              "jetson": None if jetson is None else {"model": jetson.get("model"), "power_mode": jetson.get("power_mode"),
                                                     "clocks_locked": jetson["clocks"]["locked"]}}
    env["fingerprint_fields"] = fields
    env["fingerprint"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return env


def _gpus(torch_ok: bool) -> list[dict[str, Any]]:
    """Name and compute capability from PyTorch (or cuda-python), driver version from nvidia-smi."""
    found: list[dict[str, Any]] = []
    if torch_ok:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                found.append({"name": p.name, "compute_capability": f"{p.major}.{p.minor}"})
    if not found:
        try:
            from .runtime.cuda import gpu_info

            name, cc = gpu_info()
            found.append({"name": name, "compute_capability": cc})
        except EdgetlError:
            pass
    smi = machine.nvidia_smi_gpus()
    for g in found:
        g["driver"] = smi[0][1] if smi else None
    return found


def _tensorrt_version(usable: bool) -> str | None:
    version = _version("tensorrt")
    if version is None and usable:  # JetPack's apt bindings carry no pip metadata
        from .runtime.tensorrt import import_tensorrt

        version = str(import_tensorrt().__version__)
    return version


def _version(dist: str) -> str | None:
    for name in (dist, f"{dist}-gpu", f"{dist}-cu12", f"{dist}-cu13"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


# --- the regression gate ---------------------------------------------------------------------------------

@dataclass
class GateResult:
    """Rows compared against a baseline, the offending ones with a reason, and what could not be compared."""

    baseline: str
    fingerprint_match: bool
    max_regression: float
    max_drop: float
    compared: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    allow_empty: bool = False

    @property
    def passed(self) -> bool:
        """No row regressed, and some row was compared: a gate that checked nothing fails closed."""
        return not self.failures and (self.compared > 0 or self.allow_empty)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def load_report(path: Path) -> dict[str, Any]:
    """An earlier ``--json`` report (a baseline), checked for the fields the gate reads."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such baseline (write one with --save-baseline)") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable bench report ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or not isinstance(doc.get("environment"), dict):
        raise ArtifactError(f"{path}: not an edgetl bench report (no rows or environment)")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ArtifactError(f"{path}: bench schema_version {version!r}; this edgetl reads 1..{SCHEMA_VERSION}")
    for i, row in enumerate(doc["rows"]):
        why = _bad_row(row)
        if why:
            raise ArtifactError(f"{path}: row {i} {why}; not a report edgetl wrote")
    return doc


def _bad_row(row: Any) -> str | None:
    """Why a baseline row cannot be gated on (a latency of 0 would divide by zero), or None."""
    if not isinstance(row, dict) or not all(isinstance(row.get(k), (str, int, type(None))) for k in ROW_KEY):
        return "is not a bench row"
    if row.get("status") != "ok":
        return None
    times = [row.get("p50_ms"), *(row.get("p50_rounds_ms") or [])]
    if not all(isinstance(t, (int, float)) and math.isfinite(t) and t > 0 for t in times):
        return f"has latencies {times!r}, not positive numbers of milliseconds"
    top1 = row.get("top1")
    if top1 is not None and not (isinstance(top1, (int, float)) and math.isfinite(top1)):
        return f"has top-1 {top1!r}, not a number"
    return None


def gate(rows: list[dict[str, Any]], env: dict[str, Any], baseline: dict[str, Any], name: str,
         max_regression: float, max_drop: float, allow_empty: bool = False) -> GateResult:
    """Compare rows with the baseline's rows of the same key, on the same machine only.

    A row fails when its fastest round's median (``best_round_ms``) grew by more than ``max_regression``
    (a fraction) over the baseline's fastest round and is slower than every baseline round (a change
    within the baseline's own round-to-round spread is noise, not evidence), when its top-1 fell by more
    than ``max_drop`` points, or when it ran in the baseline and does not run now.
    """
    base_env = baseline["environment"]
    result = GateResult(name, base_env.get("fingerprint") == env["fingerprint"], max_regression, max_drop,
                        allow_empty=allow_empty)
    base_fields = base_env.get("fingerprint_fields") or {}
    if not result.fingerprint_match and base_fields.get("version", 1) < FINGERPRINT_VERSION:
        result.notes.append(f"{name} has a version {base_fields.get('version', 1)} machine fingerprint, which does not "
                            "know the CPU's instruction set (an AVX2-only and an AVX-512 VNNI EPYC looked alike); "
                            "rows not compared. Record it again on its machine with --save-baseline")
        return result
    if not result.fingerprint_match:
        differs = _differences(base_fields, env["fingerprint_fields"])
        result.notes.append(f"{name} was measured on another machine (fingerprint {base_env.get('fingerprint')} vs "
                            f"{env['fingerprint']} here: {differs}); rows not compared. "
                            "Record this machine's baseline with --save-baseline")
        return result
    base = _index(baseline["rows"], name)
    now = _index(rows, "this run")
    new: list[str] = []
    noisy: list[str] = []
    for key, row in now.items():
        b = base.get(key)
        if b is None:
            new.append(_label(row))
            continue
        if b.get("status") != "ok":
            continue
        result.compared += 1
        ident = {k: row[k] for k in ROW_KEY}
        if row["status"] != "ok":
            result.failures.append({**ident, "kind": "status", "reason": f"ran in the baseline, now {row['status']}"})
            continue
        now_ms, base_ms = best_round_ms(row), best_round_ms(b)
        base_worst = max(b.get("p50_rounds_ms") or [base_ms])
        change = now_ms / base_ms - 1.0
        if base_worst / base_ms - 1.0 > max_regression:
            noisy.append(f"{_label(row)} {base_worst / base_ms - 1.0:+.0%}")
        if change > max_regression and now_ms > base_worst:
            result.failures.append({**ident, "kind": "latency", "p50_ms": row["p50_ms"], "baseline_p50_ms": b["p50_ms"],
                                    "best_round_ms": now_ms, "baseline_best_round_ms": base_ms,
                                    "change": round(change, 4), "p50_rounds_ms": row["p50_rounds_ms"],
                                    "reason": f"fastest round {now_ms:.3f} ms vs {base_ms:.3f} ms "
                                              f"({change:+.1%}, limit +{max_regression:.0%}), slower than every "
                                              f"baseline round; p50 {row['p50_ms']:.3f} vs {b['p50_ms']:.3f} ms"})
        if row["top1"] is not None and b.get("top1") is not None and b["top1"] - row["top1"] > max_drop:
            result.failures.append({**ident, "kind": "accuracy", "top1": row["top1"], "baseline_top1": b["top1"],
                                    "reason": f"top-1 {row['top1']:.2f}% vs {b['top1']:.2f}% "
                                              f"({row['top1'] - b['top1']:+.2f} points, limit -{max_drop:.2f})"})
    if new:
        result.notes.append(f"no baseline for: {', '.join(new)}")
    if noisy:
        result.notes.append(f"the baseline's own rounds varied by more than the +{max_regression:.0%} limit for "
                            f"{', '.join(noisy)}: such rows fail only when slower than every baseline round, since "
                            "smaller changes are within this machine's noise (a quieter baseline gates tighter)")
    gone = [_label(b) for k, b in base.items() if k not in now and b.get("status") == "ok"]
    if gone:
        result.notes.append(f"in the baseline but not measured now: {', '.join(gone)}")
    if result.compared == 0:
        result.notes.append("no row matched the baseline: nothing was compared"
                            + ("" if allow_empty else f" (exit {GATE_EMPTY_EXIT}; --allow-empty accepts that)"))
    return result


def best_round_ms(row: dict[str, Any]) -> float:
    """The statistic the gate compares: the fastest round's median (p50 for a report without rounds)."""
    return float(min(row.get("p50_rounds_ms") or [row["p50_ms"]]))


def _index(rows: list[dict[str, Any]], name: str) -> dict[tuple, dict[str, Any]]:
    out: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = _key(row)
        if key in out:
            raise UsageError(f"{name}: two rows for {_label(row)} (from {out[key].get('run')} and {row.get('run')}); "
                             "gate one model at a time")
        out[key] = row
    return out


def _label(row: dict[str, Any]) -> str:
    return f"{row.get('backend')} {row.get('artifact') or '-'} batch {row.get('batch_size')} ({row.get('device') or '-'})"


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    diffs = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; ".join(diffs) or "no fingerprint fields in the baseline"


# --- output ----------------------------------------------------------------------------------------------

def save_report(path: Path, report: dict[str, Any]) -> None:
    atomic_write_json(Path(path), report)


COLUMNS = (  # (header, row -> text); the terminal table and the markdown share them
    ("backend", lambda r: r["backend"]),
    ("artifact", lambda r: r["artifact"] or "-"),
    ("batch", lambda r: str(r["batch_size"])),
    ("top-1 %", lambda r: _f(r["top1"], ".2f") + ("ˢ" if r.get("numerics") == "simulated" else "")),
    ("Δ top-1", lambda r: _f(r["delta_top1"], "+.2f")),
    ("p50 ms", lambda r: _f(r["p50_ms"], ".3f")),
    ("p90 ms", lambda r: _f(r["p90_ms"], ".3f")),
    ("p99 ms", lambda r: _f(r["p99_ms"], ".3f")),
    ("mean±std ms", lambda r: "-" if r["mean_ms"] is None else f"{r['mean_ms']:.3f}±{r['std_ms']:.3f}"),
    ("img/s", lambda r: _f(r["throughput"], ".1f")),
    ("e2e p50 ms", lambda r: _f(r["e2e_p50_ms"], ".3f")),
    ("MB", lambda r: _f(r["size_mb"], ".1f")),
    ("speed-up", lambda r: "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"),
)
ROOFLINE_COLUMNS = (
    ("GFLOP/s", lambda r: _f(r["gflops"], ".1f")),
    ("% of peak", lambda r: "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}% {r['peak_kind']}"),
)


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _columns(report: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    cols = list(COLUMNS)
    if len(report["targets"]) > 1:
        cols.insert(0, ("run", lambda r: r["run"]))
    if report["roofline"]:
        cols.extend(ROOFLINE_COLUMNS)
    return [*cols, ("status", lambda r: r["status"])]


def _display_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows that did not run are shown once, not once per batch size."""
    shown, seen = [], set()
    for r in report["rows"]:
        if r["status"] != "ok":
            key = (r["run"], r["backend"], r["artifact"])
            if key in seen:
                continue
            seen.add(key)
            r = {**r, "batch_size": "-"}
        shown.append(r)
    return shown


def environment_line(report: dict[str, Any]) -> str:
    env = report["environment"]
    cpu, v = env["cpu"], env["versions"]
    parts = [f"{cpu['model']} ({cpu['usable_cores']} cores, {cpu['threads']} threads)"]
    parts += [f"{g['name']} (driver {g['driver'] or '?'})" for g in env["gpus"]]
    if env["jetson"]:
        j = env["jetson"]
        clocks = {True: "locked", False: "not locked", None: "unknown"}[j["clocks"]["locked"]]
        parts.append(f"{j.get('model')} power mode {j.get('power_mode') or 'unknown'}, clocks {clocks}")
    parts.append(", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "tensorrt") if v.get(k)))
    parts.append(f"fingerprint {env['fingerprint']}")
    return "; ".join(parts)


def settings_line(report: dict[str, Any]) -> str:
    s = report["settings"]
    how = f"{s['iters']} iterations" if s["iters"] else f">= {s['min_samples']} samples and >= {s['min_seconds']:g} s"
    line = (f"warm-up {s['warmup']}, {how} per row, {s['rounds']} round(s), p50 = median of round medians; "
            f"accuracy preprocessing: {report['environment']['accuracy_preprocessing']}")
    if any(r.get("numerics") == "simulated" for r in report["rows"]):
        line += ("; ˢ TensorRT-layout INT8 accuracy in float simulation of its Q/DQ nodes (what TensorRT "
                 "approximates), never with this CPU's integer kernels; its latency is ONNX Runtime's own")
    c = report.get("contention")
    if c:
        line += (f"; while timing, other processes took {c['other_processes']:.0%} of the CPU time"
                 f" (steal {c['steal']:.0%})" + (": latencies inflated" if busy_share(c) > BUSY else ""))
    return line


OPTIONAL = ("mean±std ms", "p90 ms", "e2e p50 ms", "GFLOP/s", "MB", "% of peak")  # dropped first, in this order


def table(report: dict[str, Any], width: int | None = None) -> Any:
    """The rich table of every row; on a terminal narrower than all columns, the OPTIONAL ones are left out
    (the JSON and markdown keep them) rather than every number being cut to an ellipsis."""
    from rich.markup import escape
    from rich.table import Table

    cols = _columns(report)
    rows = _display_rows(report)

    def needed(cs: list[tuple[str, Callable[[dict[str, Any]], str]]]) -> int:
        # status text may wrap; every other column wants its header or widest cell, plus 3 for padding and rule
        return 1 + sum(3 + max([len(h)] + [len(fn(r)) for r in rows if r["status"] == "ok"])
                       for h, fn in cs if h != "status") + 3 + len("status")

    for name in OPTIONAL:
        if width is None or needed(cols) <= width:
            break
        cols = [c for c in cols if c[0] != name]
    t = Table(title="edgetl bench", caption=escape(f"{environment_line(report)}\n{settings_line(report)}"))
    for header, _ in cols:
        t.add_column(header, justify="left" if header in ("run", "backend", "artifact", "status") else "right",
                     overflow="fold")  # a narrow terminal wraps a cell rather than hiding its end
    for r in rows:
        style = None if r["status"] == "ok" else "dim" if r["status"].startswith("skipped") else "red"
        t.add_row(*[escape(fn(r)) for _, fn in cols], style=style)
    return t


def gate_lines(report: dict[str, Any]) -> list[str]:
    """What the gate decided, one line each: the verdict, then the offending rows, then notes."""
    g = report["gate"]
    if g is None:
        return []
    verdict = "PASS" if g["passed"] else "FAIL" if g["failures"] else "FAIL (nothing compared)"
    lines = [f"gate {verdict} against {g['baseline']}: {g['compared']} row(s) compared, "
             f"{len(g['failures'])} offending (limits: latency +{g['max_regression']:.0%}, top-1 -{g['max_drop']:.2f} points)"]
    lines += [f"  {_label(f)}: {f['reason']}" for f in g["failures"]]
    lines += [f"  note: {n}" for n in g["notes"]]
    return lines


def markdown(report: dict[str, Any]) -> str:
    """A pull-request-ready table, with the environment and the gate's verdict."""
    cols = _columns(report)
    out = [f"**edgetl bench** ({report['created']}): {environment_line(report)}", "",
           f"_{settings_line(report)}_", "",
           "| " + " | ".join(h for h, _ in cols) + " |",
           "|" + "|".join("---" if h in ("run", "backend", "artifact", "status") else "---:" for h, _ in cols) + "|"]
    for r in _display_rows(report):
        out.append("| " + " | ".join(fn(r).replace("|", "\\|") for _, fn in cols) + " |")
    if report["roofline"]:
        peaks = report["roofline"]["peaks"]
        out += ["", "Matrix-multiply peaks: " + "; ".join(f"{dev} {kind} {p['gflops']:.0f} GFLOP/s ({p['method']})"
                                                         for dev, kinds in peaks.items() for kind, p in kinds.items())]
    lines = gate_lines(report)
    if lines:
        out += ["", f"**{lines[0]}**", *[f"- {ln.strip()}" for ln in lines[1:]]]
    return "\n".join(out) + "\n"
