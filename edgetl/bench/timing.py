"""Timing: host and CUDA-event timers (TensorRT: device-resident inputs, optionally a CUDA graph), end-to-end
timing from image files, sampling to a count or a time, latency statistics, and the CPU time other processes
took meanwhile (/proc/stat)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable  # typing's Callable subscripts on Python 3.8 (the runtime's floor)

import numpy as np

from ..images import Preprocess, load_rgb
from ..runtime.base import Runner
from .config import MAX_ROUND_SECONDS

BUSY = 0.10  # share of CPU time taken by others while timing above which the report warns


Timed = Callable[[int], float]  # i -> milliseconds of the i-th call


def host_timer(runner: Runner, batches: list[np.ndarray]) -> Timed:
    def timed(i: int) -> float:
        x = batches[i % len(batches)]
        t0 = time.perf_counter_ns()
        runner.run(x)
        return (time.perf_counter_ns() - t0) / 1e6
    return timed


def cuda_event_timer(runner: Runner, batches: list[np.ndarray]) -> Timed:
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


class EventTimed:
    """A TensorRT engine timed alone: device-resident inputs (no copies), its own stream, CUDA events
    around each launch (the sample), the host's wall time of the same calls beside them in ``host``."""

    def __init__(self, runner: Any, batches: list[np.ndarray], cuda_graph: bool) -> None:
        from ..runtime.cuda import EventTimer

        self.resident = runner.resident(batches, cuda_graph)
        self.events = EventTimer(self.resident.stream)
        self.host: list[float] = []
        self.timer = "cuda-graph" if self.resident.graphs else "cuda-event"

    def __call__(self, i: int) -> float:
        gpu, host = self.events.time(lambda: self.resident.launch(i))
        self.host.append(host)
        return gpu

    def close(self) -> None:
        self.events.close()
        self.resident.free()


def e2e_timer(runner: Runner, files: list[Path], batch_size: int, pp: Preprocess) -> Timed:
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
        if isinstance(timed, EventTimed):
            timed.host.clear()  # the host times of the samples only
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
