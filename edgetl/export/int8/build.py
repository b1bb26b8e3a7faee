"""`model.int8.onnx` (and `model.int8-cpu.onnx`): calibrate, quantize, correct biases, guard the
accuracy on simulated numerics, and record what share runs in INT8."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...data.sources import DataSet
from ...evaluate import RunModel
from ...fileio import atomic_write_bytes, atomic_write_json, sha256_file
from ...metrics import EvalResult
from ...progress import Log
from ...runtime.numerics import SIMULATED
from ..config import ExportConfig
from . import qat
from .bias import correct_biases
from .calibrate import CALIBRATOR_VERSION, cache_key, calibrate, calibration_split, prepare, split_fingerprint
from .guard import NEXT_STEPS, fewest, float_records, float_table, prune, rank, run_guard, within_budget
from .job import Int8Job, Int8Result, ValFeed, accuracy_entry
from .qat import Trained
from .qdq import QUANT_SETTINGS, Floater, int8_share, layer_macs, quantize, stem_nodes


def build_int8(rm: RunModel, ds: DataSet, onnx_path: Path, out: Path, cfg: ExportConfig, fp32_acc: EvalResult,
               log: Log, trained: Trained | None = None, crew: qat.Crew | None = None) -> Int8Result:
    """Calibrate (or reuse calib.cache), quantize, evaluate in simulated numerics. Then, with ``trained``
    (--qat) or when the drop exceeds ``cfg.max_drop`` under --qat auto, the quantization-aware weights
    and ranges replace the post-training ones. If the drop still exceeds the budget, keep the fewest,
    most sensitive layers in float until it fits, as long as at least ``cfg.min_int8`` of the MACs stay
    in INT8. A ``crew`` (torchrun) trains QAT on every rank."""
    import onnx

    split = calibration_split(ds, cfg.calib, cfg.calib_size, cfg.seed)
    key = hashlib.sha256(json.dumps({
        "onnx": sha256_file(onnx_path), "calib": split_fingerprint(split), "method": cfg.calib_method,
        "preprocess": rm.preprocess.to_dict(), "settings": QUANT_SETTINGS, "calibrator": CALIBRATOR_VERSION,
    }, sort_keys=True).encode()).hexdigest()
    cache = out / "calib.cache"
    reused = cache_key(cache) == key
    calibration = {"method": cfg.calib_method, "images": len(split), "source": cfg.calib or "train split (stratified)",
                   "cache": cache.name, "key": key, "reused": reused}
    dst = out / "model.int8.onnx"
    with tempfile.TemporaryDirectory(dir=out, prefix=".quant-") as tmp:
        work = Path(tmp)
        prep = prepare(onnx_path, work)
        t0 = time.perf_counter()
        if reused:
            log(f"reusing calibration ranges from {cache} ({cfg.calib_method}, {len(split)} images)")
        else:
            cache.unlink(missing_ok=True)
            with log.task(f"calibrating on {len(split)} images ({cfg.calib_method})", len(split)) as tick:
                ranges = calibrate(prep, split, rm.preprocess, cfg.calib_method, work, tick)
            atomic_write_json(cache, {**ranges, "edgetl_key": key})
        calibration["seconds"] = round(time.perf_counter() - t0, 2)
        floats = [] if cfg.quantize_stem else stem_nodes(prep)
        calibration["float_stem"] = floats
        quantize(prep, work / "q.onnx", cache, cfg.calib_method, floats)
        q, prep_model = onnx.load(str(work / "q.onnx")), onnx.load(str(prep))
        job = Int8Job(prep, work, cache, cfg, split, ValFeed(ds.val, rm.preprocess, len(rm.classes)), fp32_acc,
                      layer_macs(prep_model), log)
        if cfg.bias_correction:
            t0 = time.perf_counter()
            n = correct_biases(job, q, prep_model)
            calibration["bias_correction"] = {"layers": n, "seconds": round(time.perf_counter() - t0, 1)}
        acc = job.simulated(q, "q-eval.onnx")
        drop = fp32_acc.top1 - acc.top1
        log(f"top-1 on {acc.images} validation images (INT8 simulated in float): FP32 {fp32_acc.top1:.2f}%, "
            f"INT8 {acc.top1:.2f}% (drop {drop:+.2f} points, budget {cfg.max_drop})")
        qat_info = None
        if trained is None and drop > cfg.max_drop:
            if cfg.qat == "auto":
                log(f"post-training INT8 misses --max-drop {cfg.max_drop:g}: quantization-aware training first "
                    "(--qat auto), before any layer is floated")
                trained = qat.train(rm, out, cfg, split, log, crew)
            else:
                log(qat.suggestion(rm, cfg))
        ptq = _Candidate(job, q, prep_model, acc, floats, False)
        candidates = [ptq]
        if trained is not None:
            made, qat_info = _with_qat(rm, trained, job, acc)
            candidates = [made, ptq] if made.acc.top1 >= acc.top1 else [ptq, made]
            if candidates[0] is ptq:
                log(f"QAT did not beat post-training INT8 ({made.acc.top1:.2f}% against {acc.top1:.2f}%): "
                    "going on with post-training INT8")
        cand, best, acc, guard, failure = _guarded(candidates, fp32_acc, cfg, log)
        if qat_info is not None:
            qat_info["used"] = cand.qat
        if failure:
            return Int8Result(False, accuracy_entry(acc, fp32_acc), calibration, guard, failure, qat=qat_info)
        job, floats = cand.job, cand.floats
        share = int8_share(best, job.macs)
        guard["final_drop"] = fp32_acc.top1 - acc.top1
        result = Int8Result(True, {**accuracy_entry(acc, fp32_acc), "numerics": SIMULATED}, calibration, guard,
                            share=share.to_dict(), qat=qat_info)
        if share.mac_share < cfg.min_int8:
            result.ok = False
            result.message = (f"model.int8.onnx would be mostly float: {share.line()}, under --min-int8 "
                              f"{cfg.min_int8:g}; not written. {NEXT_STEPS}")
            return result
        log(f"INT8: {share.line()}")
        atomic_write_bytes(dst, best.SerializeToString())
        if cfg.int8_cpu:
            result.cpu = _cpu_variant(cand, floats, guard["float_layers"], out)
    return result


@dataclass
class _Candidate:
    """A quantized model the guard can start from: post-training or quantization-aware."""

    job: Int8Job
    q: Any
    prep_model: Any
    acc: EvalResult
    floats: list[str]
    qat: bool


def _guarded(candidates: list[_Candidate], fp32: EvalResult, cfg: ExportConfig,
             log: Log) -> tuple[_Candidate, Any, EvalResult, dict[str, Any], str | None]:
    """The first candidate within --max-drop as it is or with the guard's fewest float layers: (it, the
    model to write, its accuracy, the guard's record, None), or the last one tried with the reason it
    failed. Floating QAT's layers restores QAT's float weights, not FP32's, so the next one may fit."""
    for k, cand in enumerate(candidates):
        drop = fp32.top1 - cand.acc.top1
        guard: dict[str, Any] = {"max_drop": cfg.max_drop, "min_int8": cfg.min_int8, "initial_drop": drop,
                                 "float_layers": []}
        if drop <= cfg.max_drop:
            return cand, cand.q, cand.acc, guard, None
        found = run_guard(cand.job, cand.q, cand.prep_model, drop)
        guard.update(found["guard"])
        if found["model"] is not None:
            return cand, found["model"], found["accuracy"], guard, None
        if k + 1 < len(candidates):
            log(f"{found['message'].split(';')[0]}; trying the {'QAT' if candidates[k + 1].qat else 'post-training'} "
                "model instead")
    return cand, cand.q, cand.acc, guard, found["message"]


def _with_qat(rm: RunModel, trained: Trained, ptq: Int8Job, ptq_acc: EvalResult) -> tuple[_Candidate, dict[str, Any]]:
    """The quantization-aware weights through the PTQ path: FP32 ONNX, calibration of the tensors QAT did
    not quantize, its learned input ranges put in, quantize. No bias correction: QAT trained the biases
    under quantization, and correcting them toward the float weights would undo that."""
    import onnx

    from ...runtime.onnxruntime import OrtRunner
    from ..onnx import export_onnx
    from .calibrate import calibrate

    cfg, log = ptq.cfg, ptq.log
    work = ptq.work / "qat"
    work.mkdir()
    model = qat.float_model(rm, trained)
    export_onnx(model, work / "qat.onnx", rm.preprocess.size, cfg.opset, cfg.batch)
    prep = prepare(work / "qat.onnx", work)
    with log.task(f"calibrating the QAT model's other tensors on {len(ptq.calib)} images ({cfg.calib_method})",
                  len(ptq.calib)) as tick:
        ranges = calibrate(prep, ptq.calib, rm.preprocess, cfg.calib_method, work, tick)
    prep_model = onnx.load(str(prep))
    amax = qat.input_ranges(model, prep_model, trained)
    trt, cpu = work / "trt.cache", work / "cpu.cache"
    atomic_write_json(trt, qat.apply_ranges(ranges, amax, symmetric=True))
    atomic_write_json(cpu, qat.apply_ranges(ranges, amax, symmetric=False))
    floats = [] if cfg.quantize_stem else stem_nodes(prep)
    quantize(prep, work / "q.onnx", trt, cfg.calib_method, floats)
    q = onnx.load(str(work / "q.onnx"))
    job = replace(ptq, prep=prep, work=work, cache=trt, cpu_cache=cpu, macs=layer_macs(prep_model),
                  cfg=replace(cfg, bias_correction=False))
    acc = job.simulated(q, "q-eval.onnx")
    float_acc = job.val.evaluate(OrtRunner(work / "qat.onnx", own=True))  # how much of a gain is training itself
    ptq_entry, qat_entry = accuracy_entry(ptq_acc, ptq.fp32), accuracy_entry(acc, ptq.fp32)
    log(f"QAT INT8 top-1 {acc.top1:.2f}% (drop {-qat_entry['delta_top1']:+.2f} points; post-training INT8 "
        f"{ptq_acc.top1:.2f}%, so QAT recovered {acc.top1 - ptq_acc.top1:+.2f}), simulated in float; the QAT "
        f"weights in FP32: {float_acc.top1:.2f}%")
    info = {**trained.record, "learned_ranges": len(amax),
            "ptq": {**ptq_entry, "numerics": SIMULATED}, "qat": {**qat_entry, "numerics": SIMULATED},
            "qat_weights_fp32": accuracy_entry(float_acc, ptq.fp32),
            "recovered_points": acc.top1 - ptq_acc.top1}
    return _Candidate(job, q, prep_model, acc, floats, True), info


def _cpu_variant(cand: _Candidate, stem: list[str], trt_layers: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """model.int8-cpu.onnx: the same ranges and float layers (``stem``, and ``trt_layers`` from
    model.int8.onnx's guard) in ONNX Runtime's fast CPU layout, measured
    with the kernels edgetl's runtime picks for this CPU. Its errors sit in other layers than the TensorRT
    layout's (uint8 activations, int16-safe weights, fused integer kernels), so past --max-drop more
    layers stay in float: ranked on this layout with this CPU's kernels (``rank``), as few as fit
    and as --min-int8 allows. Written only when its drop is within the budget."""
    import onnx

    from ...runtime.numerics import int16_safe, int8_isa
    from ...runtime.onnxruntime import OrtRunner

    job, isa = cand.job, int8_isa()
    floats = stem + [x["name"] for x in trt_layers]
    built: dict[tuple[str, ...], tuple[Path, EvalResult, dict[str, Any]]] = {}  # by extra float layers: no live sessions

    def build(extra: list[str]) -> float:
        q = job.work / f"cpu-{len(built)}.onnx"
        quantize(job.prep, q, job.cpu_cache or job.cache, job.cfg.calib_method, floats + extra, cpu=True)
        if job.cfg.bias_correction:
            model = onnx.load(str(q))
            correct_biases(job, model, onnx.load(str(job.prep)))
            q.write_bytes(model.SerializeToString())
        runner = OrtRunner(q, own=True)
        kernels = {"numerics": runner.numerics, "ort_session_config": runner.session_config}
        built[tuple(extra)] = q, job.val.evaluate(runner), kernels
        return job.fp32.top1 - built[tuple(extra)][1].top1

    drop = build([])
    q, acc, kernels = built[()]
    safe = int16_safe(q)
    job.log(f"CPU INT8 (u8 activations, s8 weights{', scaled so that no int16 pair can saturate' if safe else ''}, "
            f"ONNX Runtime's kernels on {isa}{', overflow-safe U8U8' if kernels['ort_session_config'] else ''}): "
            f"top-1 {acc.top1:.2f}% (drop {drop:+.2f} points)")
    extra: list[dict[str, Any]] = []
    guard: dict[str, Any] = {}
    limit = "the most --min-int8 allows"
    if drop > job.cfg.max_drop:
        # ranked before bias correction, which tunes each bias to the INT8 layers before it
        quantize(job.prep, job.work / "cpu-rank.onnx", job.cpu_cache or job.cache, job.cfg.calib_method, floats, cpu=True)
        model = onnx.load(str(job.work / "cpu-rank.onnx"))
        floater = Floater(model, cand.prep_model, in_place=True)
        share = int8_share(model, job.macs)
        ranked, gains = rank(job, floater, list(share.int8_names), kernels=True)
        order = within_budget(ranked, share, job.macs, job.cfg.min_int8)
        tried: dict[int, float] = {}

        def fits(extra: list[str], what: str) -> bool:
            drop = build(extra)
            job.log(f"  CPU INT8 {what}: top-1 {built[tuple(extra)][1].top1:.2f}% (drop {drop:+.2f})")
            return drop <= job.cfg.max_drop

        def attempt(k: int) -> bool:
            ok = fits(order[:k], f"with {k} more layer(s) in float")
            tried[k] = job.fp32.top1 - built[tuple(order[:k])][1].top1
            return ok

        limit = limit if len(order) < len(ranked) else "every layer it has in INT8"
        k = fewest(len(order), attempt)
        guard = {"tried": tried}
        if k is not None:
            added = prune(order[:k], job.macs, lambda rest, name: fits(rest, f"with {name} back in INT8"))
            q, acc, kernels = built[tuple(added)]
            drop = job.fp32.top1 - acc.top1
            extra = float_records(job, floater, added, gains)
            guard.update(added=added, back_in_int8=[n for n in order[:k] if n not in added])
            job.log(f"CPU INT8: {len(added)} more layer(s) kept in float")
            job.log(float_table(extra))

    info = {"accuracy": {**accuracy_entry(acc, job.fp32), "numerics": kernels["numerics"], "isa": isa,
                         "ort_session_config": kernels["ort_session_config"], "int16_safe": int16_safe(q)},
            "int8": int8_share(onnx.load(str(q)), job.macs).to_dict(),
            "float_layers": trt_layers + extra, "guard": guard, "written": drop <= job.cfg.max_drop}
    if info["written"]:
        atomic_write_bytes(out / "model.int8-cpu.onnx", q.read_bytes())
    else:
        drops = guard.get("tried") or {0: drop}  # by count of extra float layers; none where none could float
        info["message"] = (f"model.int8-cpu.onnx misses the --max-drop {job.cfg.max_drop:g} budget on this CPU's "
                           f"kernels ({isa}): a drop of {drops[max(drops)]:.2f} points with {max(drops)} more layer(s) "
                           f"in float, {limit}; not written, the other artifacts are kept. "
                           f"{NEXT_STEPS}")
    return info
