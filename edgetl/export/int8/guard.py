"""The accuracy guard: rank quantized layers by how much floating each alone brings the simulated INT8
logits back to FP32, then float the fewest that bring the validation drop within ``--max-drop``,
never so many that less than ``--min-int8`` of the MACs stays in INT8."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...data.sources import eval_transform, make_loader
from ...metrics import EvalResult
from .bias import correct_biases
from .job import PROBE_MIN_IMAGES, Int8Job
from .qdq import Floater, Int8Share, int8_share, quantized_nodes

PROBE_PIXELS = 64 * 64 * 64  # calibration pixels whose FP32 logits rank layer sensitivity: 64 images at 64 px
NEXT_STEPS = ("Try --calib-method percentile or entropy, a larger --calib-size, a looser --max-drop, or "
              "--min-int8 0 to accept a partly float model")


def rank(job: Int8Job, floater: Floater, candidates: list[str], kernels: bool = False
         ) -> tuple[list[str], dict[str, float]]:
    """``candidates``, most sensitive first, with each one's gain: how much floating it alone
    (``floater``, one cheap model copy per layer) brings the INT8 logits back to FP32 on calibration
    images. The TensorRT layout runs in float simulation; the CPU layout (``kernels``, a Floater built
    with ``in_place``) on the kernels edgetl's runtime runs it with on this CPU, whose fused integer
    rounding is as much of its error as its ranges."""
    from ...runtime.onnxruntime import OrtRunner

    n = max(PROBE_MIN_IMAGES, PROBE_PIXELS // job.val.pp.size ** 2)
    probe = job.calib.sample(n)
    probe = np.concatenate([b.numpy() for b, _ in make_loader(probe, eval_transform(job.val.pp), 64, shuffle=False,
                                                              workers=0)])
    ref = OrtRunner(job.prep, own=True).run(probe)
    path = job.work / "probe.onnx"

    def error(names: list[str]) -> float:
        path.write_bytes(floater.floated(names).SerializeToString())
        runner = OrtRunner(path, own=True) if kernels else OrtRunner(path, own=True, simulate=True, fast=job.fast_rank)
        return float(np.mean((runner.run(probe) - ref) ** 2))

    base = error([])
    gains: dict[str, float] = {}
    task = f"ranking the sensitivity of {len(candidates)} quantized layers on {len(probe)} images"
    task = f"CPU INT8: {task} with this CPU's kernels" if kernels else f"accuracy guard: {task}"
    with job.log.task(task, len(candidates)) as tick:
        for name in candidates:
            gains[name] = base - error([name])
            tick()
    return sorted(candidates, key=lambda n: -gains[n]), gains


def float_records(job: Int8Job, floater: Floater, names: list[str], gains: dict[str, float]) -> list[dict[str, Any]]:
    """The manifest's ``float_layers`` entries of ``names``: op, sensitivity and share of the MACs."""
    macs = sum(job.macs.values()) or 1
    return [{"name": n, "op": floater.nodes[n].op_type, "sensitivity_mse": gains[n],
             "mac_share": round(job.macs.get(n, 0) / macs, 4)} for n in names]


def within_budget(order: list[str], share: Int8Share, macs: dict[str, int], min_int8: float) -> list[str]:
    """``order`` less each layer that, floated with the ones kept before it, would leave less than
    ``min_int8`` of the MACs in INT8 (``share``: the model as it is): a layer too large for the budget
    does not end the search, since smaller ones further down the ranking can still float."""
    int8_now = set(share.int8_names)
    kept, left = [], share.int8_macs
    for name in order:
        cost = macs.get(name, 0) if name in int8_now else 0
        if left - cost >= min_int8 * share.macs:
            kept.append(name)
            left -= cost
    return kept


def fewest(k_max: int, fits: Callable[[int], bool]) -> int | None:
    """The least k in 1..k_max with ``fits(k)`` (assumed monotonic): k grows geometrically until it fits,
    then bisects down; None where even k_max does not fit. Each k is tried at most once."""
    lo, k, hi = 0, 1, None
    while k <= k_max:
        if fits(k):
            hi = k
            break
        lo, k = k, (min(2 * k, k_max) if k < k_max else k_max + 1)
    if hi is None:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def run_guard(job: Int8Job, q: Any, prep_model: Any, initial_drop: float) -> dict[str, Any]:
    """Rank quantized layers (``rank``, simulated), then float the top k of those ``within_budget`` of
    ``min_int8``, growing k until the validation drop fits. Each try corrects the biases
    after its float layers again (with bias correction on). Then each floated layer, the most MACs
    first, goes back to INT8 where the drop still fits without it: a prefix of the ranking is rarely
    the smallest set (on the demo, k=4 missed by one image and k=5 fitted, with only one of the five needed)."""
    cfg, log = job.cfg, job.log
    t0 = time.perf_counter()
    floater = Floater(q, prep_model)
    ranked, gains = rank(job, floater, quantized_nodes(q))
    order = within_budget(ranked, int8_share(q, job.macs), job.macs, cfg.min_int8)
    tried: dict[int, float] = {}  # by k, the prefix search
    got: dict[tuple[str, ...], tuple[Any, EvalResult, float]] = {}

    def fits(names: list[str], what: str) -> bool:
        model = floater.floated(names)
        if cfg.bias_correction:  # the INT8 layers after the floated ones were corrected for their error
            correct_biases(job, model, prep_model, names)
        acc = job.simulated(model, "guard.onnx")
        got[tuple(names)] = model, acc, job.fp32.top1 - acc.top1
        log(f"  {what}: INT8 top-1 {acc.top1:.2f}% (drop {job.fp32.top1 - acc.top1:+.2f})")
        return job.fp32.top1 - acc.top1 <= cfg.max_drop

    def attempt(k: int) -> bool:
        ok = fits(order[:k], f"{k} layer(s) in float")
        tried[k] = got[tuple(order[:k])][2]
        return ok

    hi = fewest(len(order), attempt)
    info: dict[str, Any] = {"tried": tried, "candidates": len(ranked), "within_min_int8": len(order),
                            "sensitivity": _top(gains, ranked)}
    if hi is None:
        info["seconds"] = round(time.perf_counter() - t0, 1)
        limit = (f"floating up to {len(order)} of the {len(ranked)} layers, the most sensitive that keep "
                 f"{cfg.min_int8:.0%} of the MACs in INT8 (--min-int8)," if len(order) < len(ranked)
                 else f"floating any of the {len(order)} layers")
        drop = tried[max(tried)] if tried else initial_drop
        return {"model": None, "guard": info,
                "message": f"INT8 misses the --max-drop {cfg.max_drop:g} budget: {limit} still leaves a drop of "
                           f"{drop:.2f} points; no model.int8.onnx written, the other artifacts are kept. "
                           f"{NEXT_STEPS}"}
    floats = prune(order[:hi], job.macs, lambda rest, name: fits(rest, f"{len(rest)} in float, {name} back in INT8"))
    model, acc, _ = got[tuple(floats)]
    layers = float_records(job, floater, floats, gains)
    info.update(float_layers=layers, back_in_int8=[n for n in order[:hi] if n not in floats],
                seconds=round(time.perf_counter() - t0, 1))
    log(f"accuracy guard: {len(floats)} layer(s) kept in float after {info['seconds']:.0f} s")
    log(float_table(layers))
    return {"model": model, "accuracy": acc, "guard": info}


def prune(names: list[str], macs: dict[str, int], fits: Callable[[list[str], str], bool]) -> list[str]:
    """``names`` less each layer that, the most MACs first, can go back to INT8 with ``fits`` still true
    (one evaluation per layer): a prefix of the ranking is rarely the smallest set that fits."""
    keep = list(names)
    for name in sorted(names, key=lambda n: -macs.get(n, 0)):
        rest = [n for n in keep if n != name]
        if rest and fits(rest, _short(name)):
            keep = rest
    return keep


def _short(name: str) -> str:
    """``/blocks/blocks.1/blocks.1.0/conv_dw/Conv`` as ``blocks.1.0/conv_dw``: enough to tell layers apart."""
    parts = [p for p in name.split("/") if p and p not in ("Conv", "Gemm", "MatMul", "inner")]
    return "/".join(parts[-2:]) or name


def float_table(layers: list[dict[str, Any]]) -> str:
    """The floated layers as a short aligned table: what each costs in MACs and what it bought."""
    width = min(48, max(len(x["name"]) for x in layers))
    lines = [f"  {'layer':<{width}}  {'op':<14} {'MACs':>6}  {'sensitivity (logit MSE gain)':>28}"]
    for x in layers:
        name = x["name"] if len(x["name"]) <= width else "…" + x["name"][-width + 1:]
        lines.append(f"  {name:<{width}}  {x['op']:<14} {100 * x['mac_share']:5.1f}%  {x['sensitivity_mse']:28.4g}")
    return "\n".join(lines)


def _top(gains: dict[str, float], order: list[str], n: int = 10) -> list[dict[str, Any]]:
    return [{"name": k, "sensitivity_mse": gains[k]} for k in order[:n]]
