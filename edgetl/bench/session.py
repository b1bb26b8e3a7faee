"""One `edgetl bench` run: open every row's runner, measure its accuracy, time the rows in interleaved
rounds, recheck rows a gate would fail, and assemble the report (JSON schema v1)."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, machine
from ..errors import EdgetlError, UsageError, one_line
from ..images import ImageSource
from ..metrics import EvalResult
from ..progress import Log, as_log
from ..runtime.base import Runner
from ..runtime.numerics import judging_runner
from ..runtime.verify import file_sha256
from .config import E2E_MIN_SAMPLES, MIN_SAMPLES, RUNTIMES, SCHEMA_VERSION, BenchConfig
from .environment import environment
from .gate import RECHECKS, gate, key_of
from .inputs import Inputs, accuracy, have_torch, validation_images
from .plan import Item, Target, plan, planned_device
from .schema import ROW_FIELDS, Report, load_report
from .timing import (
    BUSY,
    CpuMeter,
    EventTimed,
    Timed,
    busy_share,
    contention_line,
    cuda_event_timer,
    e2e_timer,
    host_timer,
    latency_stats,
    sample,
)
from .trtexec import find_trtexec, gpu_median_ms


def run_bench(cfg: BenchConfig, log: Log | Callable[[str], None] | None = None) -> Report:
    """Measure every row, gate against the baseline when one is given, return the report (see README).

    With ``save_baseline`` the report is written there too, unless `baseline_refusal` says why not: a
    regression, or latencies inflated by other processes, must not become the next baseline by accident.
    """
    cfg.validate()
    baseline = load_report(Path(cfg.baseline)) if cfg.baseline else None  # a bad baseline fails before the work
    trtexec = find_trtexec() if cfg.vs_trtexec else None  # asked for and missing: refused before the work
    session = _Session(cfg, as_log(log))
    targets = plan(cfg)
    if cfg.verify:
        from ..runtime.verify import verify_artifact

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
                     "threads": session.threads, "device": cfg.device, "e2e": cfg.e2e,
                     "cuda_graph": cfg.cuda_graph, "vs_trtexec": cfg.vs_trtexec},
        "environment": env, "targets": [], "rows": [], "contention": None, "roofline": None, "gate": None,
    }
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        try:
            report["targets"] = [session.prepare(t, Path(tmp) / str(n)) for n, t in enumerate(targets)]
            session.measure(session.lives, range(cfg.n_rounds))
            if trtexec is not None:
                session.trtexec(trtexec)
            rows = session.rows(targets)
            if baseline is not None:
                rows, report["gate"] = session.judge(targets, rows, env, baseline)
            report["rows"] = rows
            report["contention"] = session.meter.to_dict()
            if cfg.roofline:
                report["roofline"] = _roofline(targets, rows, session.threads, session.log)
        finally:
            session.close()
    result = Report.from_dict(report)
    if cfg.save_baseline and baseline_refusal(result, cfg) is None:
        result.save(Path(cfg.save_baseline))
    return result


def baseline_refusal(report: Report, cfg: BenchConfig) -> str | None:
    """Why ``report`` is not saved as a baseline, or None: the gate failed, or other processes took more
    than BUSY of the CPU while it was timed (unless ``cfg.force``)."""
    if report.gate is not None and not report.gate.passed:
        return "the gate failed"
    busy = busy_share(report.contention)
    if busy > BUSY and not cfg.force:
        return (f"other processes took {busy:.0%} of the CPU time while it was timed (limit {BUSY:.0%}), so its "
                "latencies are inflated; record it on a quiet machine, or pass --force")
    return None


@dataclass
class Live:
    """An opened runner with its accuracy and the samples collected so far, per batch size."""

    target: Target
    item: Item
    runner: Runner
    acc: EvalResult
    numerics: str
    timer: str
    model_timers: dict[int, Timed]
    e2e_timers: dict[int, Timed]
    rounds: dict[int, list[list[float]]] = field(default_factory=dict)
    e2e: dict[int, list[float]] = field(default_factory=dict)
    host: dict[int, list[float]] = field(default_factory=dict)  # TensorRT: host wall time of the timed calls
    trtexec: dict[int, float] = field(default_factory=dict)  # --vs-trtexec: its GPU compute median per batch

    def row_id(self, batch_size: int) -> dict[str, Any]:
        return {"artifact": _artifact_name(self.item), "backend": self.item.backend,
                "precision": self.runner.precision, "batch_size": batch_size, "device": self.runner.device}


class _Session:
    """The runners opened for one bench, their samples, and the rows and verdict made from them."""

    def __init__(self, cfg: BenchConfig, log: Log) -> None:
        self.cfg, self.log = cfg, log
        self.threads = cfg.threads or machine.usable_cores()
        self.torch_ok = have_torch()
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
                from ..evaluate import open_runner
            else:
                from ..runtime import open_runner
            runner = open_runner(item.artifact, device=device, threads=self.threads)
        except UsageError as e:  # cannot run here: no GPU, no provider, no PyTorch
            return f"skipped: {one_line(e)}"
        except EdgetlError as e:  # an untrusted or broken artifact
            self.log(f"{item.backend} ({item.artifact.name}): {one_line(e)}")
            return f"failed: {one_line(e)}"
        try:
            self.log(f"{item.backend} ({item.artifact.name}): accuracy on {len(items)} images")
            judge, numerics = judging_runner(runner)
            try:
                acc = accuracy(judge, items, labels, target.preprocess, len(target.classes), self.torch_ok)
            finally:
                if judge is not runner:
                    judge.close()
            cuda_torch = item.backend == "torch" and runner.device == "cuda"
            bss = self.cfg.batch_sizes
            model_timers = {bs: self._model_timer(item, runner, inputs.batches(bs), cuda_torch) for bs in bss}
            e2e = {bs: e2e_timer(runner, inputs.files, bs, inputs.preprocess) for bs in bss} if self.cfg.e2e else {}
        except EdgetlError as e:
            runner.close()
            return f"failed: {one_line(e)}"
        return Live(target, item, runner, acc, numerics, "cuda-event" if cuda_torch else "host", model_timers, e2e)

    def _model_timer(self, item: Item, runner: Runner, batches: list[np.ndarray], cuda_torch: bool) -> Timed:
        """TensorRT: CUDA events around device-resident launches (a CUDA graph with --cuda-graph), as
        trtexec times; PyTorch on CUDA: CUDA events; everything else, and an engine whose batch range
        does not hold this batch (run() chunks or pads it): the host clock."""
        if runner.backend == "tensorrt":
            lo, hi = getattr(runner, "min_batch", 1), getattr(runner, "max_batch", 0)
            if lo <= len(batches[0]) <= hi:
                timed = EventTimed(runner, batches, self.cfg.cuda_graph)
                if timed.resident.graph_error:
                    self.log(f"{item.backend} ({_artifact_name(item)}) batch {len(batches[0])}: CUDA graph "
                             f"capture failed ({timed.resident.graph_error}); timing plain enqueues")
                return timed
        return (cuda_event_timer if cuda_torch else host_timer)(runner, batches)

    def _torch_live(self, target: Target) -> Live | None:
        return next((lv for lv in self.lives if lv.target is target and lv.item.backend == "torch"), None)

    def measure(self, lives: list[Live], rounds: range, only: set[tuple] | None = None) -> None:
        """Time every live row in each round; rows interleaved, their order rotated from round to round."""
        with self.meter.timing():
            self._measure(lives, rounds, only)

    def _measure(self, lives: list[Live], rounds: range, only: set[tuple] | None) -> None:
        cfg = self.cfg
        per_round = math.ceil(MIN_SAMPLES / cfg.n_rounds)
        todo = {(id(lv), bs) for lv in lives for bs in cfg.batch_sizes if only is None or key_of(lv.row_id(bs)) in only}
        with self.log.task(f"timing {len(todo)} row(s) x {len(rounds)} round(s)", len(todo) * len(rounds)) as tick:
            for r in rounds:
                shift = r % max(len(lives), 1)
                for lv in lives[shift:] + lives[:shift]:
                    for bs in cfg.batch_sizes:
                        if (id(lv), bs) not in todo:
                            continue
                        timed = lv.model_timers[bs]
                        samples = sample(timed, cfg.warmup, cfg.iters, cfg.seconds, per_round)
                        lv.rounds.setdefault(bs, []).append(samples)
                        if isinstance(timed, EventTimed):
                            lv.host.setdefault(bs, []).extend(timed.host)
                        if r == 0 and lv.e2e_timers:
                            lv.e2e[bs] = sample(lv.e2e_timers[bs], min(cfg.warmup, 2), cfg.iters, cfg.seconds / 2,
                                                E2E_MIN_SAMPLES)
                        self.log(f"round {r + 1}: {lv.item.backend} ({_artifact_name(lv.item)}) batch {bs}: "
                                 f"p50 {np.median(samples):.3f} ms")
                        tick()

    def trtexec(self, trtexec: Path) -> None:
        """--vs-trtexec: trtexec's median GPU compute time for every TensorRT row timed by CUDA events."""
        for lv in self.lives:
            for bs, timed in lv.model_timers.items():
                if not isinstance(timed, EventTimed):
                    continue
                engine = timed.resident.runner
                self.log(f"trtexec ({_artifact_name(lv.item)}) batch {bs}")
                lv.trtexec[bs] = gpu_median_ms(trtexec, engine.path, engine.input_name, (bs, *engine.input_shape[1:]),
                                               engine.meta.get("dla_core"))

    def judge(self, targets: list[Target], rows: list[dict[str, Any]], env: dict[str, Any],
              baseline: Report) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Gate the rows; rows over the latency limit get more rounds, up to RECHECKS times, and are judged
        on all of them (a real regression stays over the limit however often it is timed)."""
        cfg = self.cfg
        result = gate(rows, env, baseline, str(cfg.baseline), cfg.max_regression, cfg.max_drop, cfg.allow_empty)
        rechecked: set[tuple] = set()
        done = cfg.n_rounds
        for _ in range(RECHECKS):
            suspects = {key_of(f) for f in result.failures if f["kind"] == "latency"}
            if not suspects:
                break
            self.log(f"gate: {len(suspects)} row(s) look slower than the baseline; "
                     f"{cfg.n_rounds} more round(s) for them before judging")
            again = [lv for lv in self.lives if any(key_of(lv.row_id(bs)) in suspects for bs in cfg.batch_sizes)]
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
        timer = getattr(lv.model_timers.get(bs), "timer", lv.timer)
        out: dict[str, Any] = {**lv.row_id(bs), "status": "ok", "timer": timer, "top1": round(lv.acc.top1, 3),
                               "top5": round(lv.acc.top5, 3), "images": lv.acc.images, "numerics": lv.numerics}
        if ref["top1"] is not None:
            out["delta_top1"] = round(out["top1"] - ref["top1"], 3)
        out.update(latency_stats(lv.rounds[bs], bs))
        if bs in lv.e2e:
            e2e = latency_stats([lv.e2e[bs]], bs)
            out.update({f"e2e_{k}": e2e[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")},
                       e2e_throughput=e2e["throughput"], e2e_samples=e2e["samples"])
        if lv.host.get(bs):
            out["host_p50_ms"] = round(float(np.median(lv.host[bs])), 4)
        if bs in lv.trtexec:
            out["trtexec_p50_ms"] = round(lv.trtexec[bs], 4)
            out["vs_trtexec"] = round(out["p50_ms"] / lv.trtexec[bs], 3)
        if torch_live is not None and bs in torch_live.rounds:
            out["speedup"] = round(latency_stats(torch_live.rounds[bs], bs)["p50_ms"] / out["p50_ms"], 3)
        return out

    def close(self) -> None:
        for lv in self.lives:
            for timed in lv.model_timers.values():
                if isinstance(timed, EventTimed):
                    timed.close()
            lv.runner.close()


def _artifact_name(item: Item) -> str | None:
    return item.artifact.name if item.artifact else None


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
    from ..roofline import count_flops, measure_peaks, peak_for

    cuda = any(r["device"] == "cuda" and r["status"] == "ok" for r in rows) and have_torch()
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
