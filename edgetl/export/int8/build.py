"""`model.int8.onnx` (and `model.int8-cpu.onnx`): calibrate, quantize, correct biases, guard the
accuracy on simulated numerics, and record what share runs in INT8."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ...data.sources import DataSet
from ...evaluate import RunModel
from ...fileio import atomic_write_bytes, atomic_write_json, sha256_file
from ...metrics import EvalResult
from ...progress import Log
from ...runtime.numerics import SIMULATED
from ..config import ExportConfig
from .bias import correct_biases
from .calibrate import CALIBRATOR_VERSION, cache_key, calibrate, calibration_split, prepare, split_fingerprint
from .guard import NEXT_STEPS, run_guard
from .job import Int8Job, Int8Result, ValFeed, accuracy_entry
from .qdq import QUANT_SETTINGS, int8_share, layer_macs, quantize, stem_nodes


def build_int8(rm: RunModel, ds: DataSet, onnx_path: Path, out: Path, cfg: ExportConfig, fp32_acc: EvalResult,
               log: Log) -> Int8Result:
    """Calibrate (or reuse calib.cache), quantize, evaluate in simulated numerics; if the drop exceeds
    ``cfg.max_drop``, keep the fewest, most sensitive layers in float until it fits, as long as at
    least ``cfg.min_int8`` of the MACs stay in INT8."""
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
        guard: dict[str, Any] = {"max_drop": cfg.max_drop, "min_int8": cfg.min_int8, "initial_drop": drop,
                                 "float_layers": []}
        best = q
        if drop > cfg.max_drop:
            found = run_guard(job, q, prep_model, drop)
            guard.update(found["guard"])
            if found["model"] is None:
                return Int8Result(False, accuracy_entry(acc, fp32_acc), calibration, guard, found["message"])
            best, acc = found["model"], found["accuracy"]
        share = int8_share(best, job.macs)
        guard["final_drop"] = fp32_acc.top1 - acc.top1
        result = Int8Result(True, {**accuracy_entry(acc, fp32_acc), "numerics": SIMULATED}, calibration, guard,
                            share=share.to_dict())
        if share.mac_share < cfg.min_int8:
            result.ok = False
            result.message = (f"model.int8.onnx would be mostly float: {share.line()}, under --min-int8 "
                              f"{cfg.min_int8:g}; not written. {NEXT_STEPS}")
            return result
        log(f"INT8: {share.line()}")
        atomic_write_bytes(dst, best.SerializeToString())
        if cfg.int8_cpu:
            result.cpu = _cpu_variant(job, floats + [x["name"] for x in guard["float_layers"]], out)
    return result


def _cpu_variant(job: Int8Job, floats: list[str], out: Path) -> dict[str, Any]:
    """model.int8-cpu.onnx: the same ranges and float layers in ONNX Runtime's fast CPU layout, measured
    with the kernels edgetl's runtime picks for this CPU. Written only when its drop is within the budget."""
    import onnx

    from ...runtime.numerics import int8_isa, kernel_config
    from ...runtime.onnxruntime import OrtRunner

    q = job.work / "cpu.onnx"
    quantize(job.prep, q, job.cache, job.cfg.calib_method, floats, cpu=True)
    if job.cfg.bias_correction:
        model = onnx.load(str(q))
        correct_biases(job, model, onnx.load(str(job.prep)))
        q.write_bytes(model.SerializeToString())
    runner = OrtRunner(q, own=True)
    acc = job.val.evaluate(runner)
    drop = job.fp32.top1 - acc.top1
    isa = int8_isa()
    job.log(f"CPU INT8 (u8 activations, s8 weights, ONNX Runtime's kernels on {isa}"
            f"{', overflow-safe U8U8' if runner.session_config else ''}): top-1 {acc.top1:.2f}% (drop {drop:+.2f} points)")
    import onnx

    info = {"accuracy": {**accuracy_entry(acc, job.fp32), "numerics": runner.numerics, "isa": isa,
                         "ort_session_config": kernel_config(isa)},
            "int8": int8_share(onnx.load(str(q)), job.macs).to_dict(),
            "float_layers": floats, "written": drop <= job.cfg.max_drop}
    if info["written"]:
        atomic_write_bytes(out / "model.int8-cpu.onnx", q.read_bytes())
    else:
        job.log(f"model.int8-cpu.onnx not written: its drop exceeds --max-drop {job.cfg.max_drop}")
    return info
