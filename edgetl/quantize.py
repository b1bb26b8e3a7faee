"""INT8 for TensorRT and ONNX Runtime: calibrated Q/DQ ONNX plus an accuracy guard.

TensorRT-shaped Q/DQ (DESIGN.md): symmetric INT8 activations and weights (zero point 0),
per-channel weights, bias left in float, made with ONNX Runtime's quantize_static as NVIDIA's
ModelOpt does. Calibration ranges are cached in ``calib.cache`` (ONNX Runtime's JSON ranges
plus an ``edgetl_key``), so exporting again with the same model and data skips calibration.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkdata import flat_image_files
from .data import DataSet, Split, eval_transform, make_loader, scan_image_folder, stratified_sample
from .errors import DataError, UsageError
from .io import atomic_write_bytes, atomic_write_json, sha256_file
from .metrics import EvalResult

CALIB_METHODS = ("minmax", "entropy", "percentile")
CALIBRATOR_VERSION = 3  # bump when calibrate() changes, so old calib.cache files are not reused
PROBE_IMAGES = 64  # calibration images whose FP32 logits rank layer sensitivity
QUANT_SETTINGS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
# ONNX Runtime's x86 integer kernels (VNNI vpdpbusd) multiply u8 activations by s8 weights: on this
# project's CPU that layout ran 2-4x faster than FP32, the TensorRT layout 0.5-0.9x (RESULTS.md).
CPU_SETTINGS = {"ActivationSymmetric": False, "WeightSymmetric": True}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Int8Result:
    ok: bool
    accuracy: dict[str, float]
    calibration: dict[str, Any]
    guard: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    cpu: dict[str, Any] | None = None


def calibration_split(ds: DataSet, calib: str | None, size: int, seed: int = 0) -> Split:
    """``--calib DIR`` (an ImageFolder or a flat folder of images) or a seeded, class-stratified
    sample of ``--calib-size`` training images."""
    if calib:
        root = Path(calib)
        if not root.is_dir():
            raise DataError(f"{root}: no such calibration folder")
        if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
            classes, split = scan_image_folder(root)
            unknown = sorted(set(classes) - set(ds.classes))
            if unknown:
                raise DataError(f"{root}: calibration classes {unknown[:5]} are not among the run's classes")
        else:
            listing = flat_image_files(root)  # symlinks leaving the folder are refused
            if listing.errors():
                raise DataError(str(listing.errors()[0]))
            split = Split(listing.files, listing.labels)
        if len(split) == 0:
            raise DataError(f"{root}: no images to calibrate with")
        return split if len(split) <= size else split.subset(range(size))
    n = len(ds.train)
    if size >= n:
        return ds.train
    return ds.train.subset(stratified_sample(ds.train.labels, size, seed))


def _split_fingerprint(split: Split) -> str:
    h = hashlib.sha256()
    for item in split.items:
        if isinstance(item, np.ndarray):
            h.update(item.tobytes())
        else:
            h.update(str(Path(item).resolve()).encode())
            st = Path(item).stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile}[name]


class CalibrationReader:
    """Feeds calibration images one at a time: ONNX Runtime's Entropy and Percentile calibrators
    fail on batches larger than 1 (DESIGN.md)."""

    def __init__(self, split: Split, pp: Any) -> None:
        self.loader = make_loader(split, eval_transform(pp), 1, shuffle=False, workers=0)
        self.it: Iterator[Any] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.it is None:
            self.it = iter(self.loader)
        batch = next(self.it, None)
        return None if batch is None else {"input": batch[0].numpy()}

    def rewind(self) -> None:
        self.it = None


def prepare(onnx_path: Path, work: Path) -> Path:
    """Shape inference and basic graph optimization, as ONNX Runtime asks before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = work / "prep.onnx"
    quant_pre_process(str(onnx_path), str(prep), skip_symbolic_shape=True)
    return prep


def calibrate(prep: Path, split: Split, pp: Any, method: str, work: Path) -> dict[str, Any]:
    """Activation ranges as ONNX Runtime's JSON (TensorsData.to_dict).

    Called directly rather than through quantize_static, whose Entropy calibrator keeps 128
    histogram bins for 128 quantized bins and so returns plain min/max; here entropy is
    TensorRT's algorithm (KL divergence over 2,048 bins) and percentile clips at 99.999%.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    options: dict[str, Any] = {}  # minmax ranges stay asymmetric: the CPU variant's UINT8 activations use both ends
    if method == "entropy":
        options.update(symmetric=True, num_bins=2048, num_quantized_bins=128)
    elif method == "percentile":
        options.update(symmetric=True, num_bins=2048, percentile=99.999)
    calibrator = create_calibrator(prep, sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),
                                   augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=_method(method), extra_options=options)
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
        calibrator.collect_data(CalibrationReader(split, pp))
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, work / "ranges.json")
    return json.loads((work / "ranges.json").read_text())


def quantize(prep: Path, dst: Path, cache: Path, method: str, exclude: list[str], cpu: bool = False) -> None:
    """One quantize_static call with the ranges in ``cache``: cheap, so the guard can repeat it.
    ``cpu`` makes the UINT8-activation layout for ONNX Runtime on x86/ARM CPUs instead of TensorRT's."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # ORT's pre-processing advice is noise here
    quantize_static(
        str(prep), str(dst), calibration_data_reader=None, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8, weight_type=QuantType.QInt8,
        calibrate_method=_method(method), nodes_to_exclude=exclude,
        extra_options=dict(CPU_SETTINGS if cpu else QUANT_SETTINGS), calibration_cache_path=str(cache),
    )


def stem_nodes(model_path: Path) -> list[str]:
    """The first weighted layers after the input (through Pad, Cast, ...): they see raw pixels, and
    keeping them in float took the INT8 drop on cifar10-mini from 0.9 to 0.0 points (RESULTS.md)."""
    import onnx

    g = onnx.load(str(model_path)).graph
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    frontier, seen, found = [g.input[0].name], set(), []
    while frontier:
        for n in consumers.get(frontier.pop(), []):
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.op_type in WEIGHTED_OPS:
                found.append(n.name)
            else:
                frontier.extend(n.output)
    return found


def quantized_nodes(model_path: Path) -> list[str]:
    """Names of the float nodes whose inputs received Q/DQ pairs: the guard's candidates."""
    import onnx

    g = onnx.load(str(model_path)).graph
    dq_outputs = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in g.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dq_outputs for i in n.input)]


def build_int8(rm: Any, ds: DataSet, onnx_path: Path, out: Path, cfg: Any, fp32_acc: EvalResult, log: Any) -> Int8Result:
    """Calibrate (or reuse calib.cache), quantize, evaluate; if the drop exceeds ``cfg.max_drop``,
    keep the fewest, most sensitive layers in float until it fits."""
    from .evaluate import evaluate_runner
    from .runtime.onnxruntime import OrtRunner

    split = calibration_split(ds, cfg.calib, cfg.calib_size, cfg.seed)
    key = hashlib.sha256(json.dumps({
        "onnx": sha256_file(onnx_path), "calib": _split_fingerprint(split), "method": cfg.calib_method,
        "preprocess": rm.preprocess.to_dict(), "settings": QUANT_SETTINGS, "calibrator": CALIBRATOR_VERSION,
    }, sort_keys=True).encode()).hexdigest()
    cache = out / "calib.cache"
    reused = _cache_key(cache) == key
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
            log(f"calibrating on {len(split)} images ({cfg.calib_method})")
            cache.unlink(missing_ok=True)
            atomic_write_json(cache, {**calibrate(prep, split, rm.preprocess, cfg.calib_method, work), "edgetl_key": key})
        calibration["seconds"] = round(time.perf_counter() - t0, 2)
        floats = [] if cfg.quantize_stem else stem_nodes(prep)
        calibration["float_stem"] = floats
        quantize(prep, work / "q.onnx", cache, cfg.calib_method, floats)
        acc = evaluate_runner(OrtRunner(work / "q.onnx"), ds.val, rm.preprocess, len(rm.classes))
        drop = fp32_acc.top1 - acc.top1
        log(f"top-1 on {acc.images} validation images: FP32 {fp32_acc.top1:.2f}%, INT8 {acc.top1:.2f}% "
            f"(drop {drop:+.2f} points, budget {cfg.max_drop})")
        guard: dict[str, Any] = {"max_drop": cfg.max_drop, "initial_drop": drop, "float_layers": []}
        best = work / "q.onnx"
        if drop > cfg.max_drop:
            found = _guard(prep, work, cache, cfg, split, rm, ds, fp32_acc, onnx_path, floats, log)
            guard.update(found["guard"])
            if found["path"] is None:
                return Int8Result(False, _acc(acc, fp32_acc), calibration, guard,
                                  f"INT8 loses {drop:.2f} points of top-1 (budget {cfg.max_drop}) and no set of float "
                                  f"layers brings it within budget; model.onnx and model.fp16.onnx are kept, "
                                  f"no model.int8.onnx written (try another --calib-method or more --calib-size)")
            best, acc = found["path"], found["accuracy"]
        atomic_write_bytes(dst, best.read_bytes())
        guard["final_drop"] = fp32_acc.top1 - acc.top1
        result = Int8Result(True, _acc(acc, fp32_acc), calibration, guard)
        if cfg.int8_cpu:
            result.cpu = _cpu_variant(prep, work, cache, cfg, floats + [x["name"] for x in guard["float_layers"]],
                                      rm, ds, fp32_acc, out, log)
    return result


def _cpu_variant(prep: Path, work: Path, cache: Path, cfg: Any, floats: list[str], rm: Any, ds: DataSet,
                 fp32_acc: EvalResult, out: Path, log: Any) -> dict[str, Any]:
    """model.int8-cpu.onnx: the same ranges and float layers in ONNX Runtime's fast CPU layout.
    Written only when its drop is within the budget too; the result says either way."""
    from .evaluate import evaluate_runner
    from .runtime.onnxruntime import OrtRunner

    q = work / "cpu.onnx"
    quantize(prep, q, cache, cfg.calib_method, floats, cpu=True)
    acc = evaluate_runner(OrtRunner(q), ds.val, rm.preprocess, len(rm.classes))
    drop = fp32_acc.top1 - acc.top1
    log(f"CPU INT8 (u8 activations, s8 weights): top-1 {acc.top1:.2f}% (drop {drop:+.2f} points)")
    info = {"accuracy": _acc(acc, fp32_acc), "float_layers": floats, "written": drop <= cfg.max_drop}
    if info["written"]:
        atomic_write_bytes(out / "model.int8-cpu.onnx", q.read_bytes())
    else:
        log(f"model.int8-cpu.onnx not written: its drop exceeds --max-drop {cfg.max_drop}")
    return info


def _acc(acc: EvalResult, ref: EvalResult) -> dict[str, float]:
    return {"top1": acc.top1, "top5": acc.top5, "delta_top1": acc.top1 - ref.top1}


def _cache_key(cache: Path) -> str | None:
    try:
        return json.loads(cache.read_text()).get("edgetl_key")
    except (OSError, ValueError, AttributeError):
        return None


def _guard(prep: Path, work: Path, cache: Path, cfg: Any, split: Split, rm: Any, ds: DataSet,
           fp32_acc: EvalResult, onnx_path: Path, floats: list[str], log: Any) -> dict[str, Any]:
    """Rank quantized layers by how much keeping each alone in float brings the INT8 logits back to
    FP32 (on calibration images), then float the top k, growing k until the validation drop fits."""
    from .evaluate import evaluate_runner
    from .runtime.onnxruntime import OrtRunner

    probe = split.subset(range(min(PROBE_IMAGES, len(split))))
    x = np.concatenate([b.numpy() for b, _ in make_loader(probe, eval_transform(rm.preprocess), 64, shuffle=False, workers=0)])
    ref = OrtRunner(onnx_path, own=True).run(x)

    def error(path: Path) -> float:
        return float(np.mean((OrtRunner(path, own=True).run(x) - ref) ** 2))

    base_err = error(work / "q.onnx")
    candidates = quantized_nodes(work / "q.onnx")
    log(f"accuracy guard: measuring the sensitivity of {len(candidates)} quantized layers")
    gains: dict[str, float] = {}
    for name in candidates:
        q = work / "probe.onnx"
        quantize(prep, q, cache, cfg.calib_method, floats + [name])
        gains[name] = base_err - error(q)
    order = sorted(candidates, key=lambda n: -gains[n])
    tried: dict[int, float] = {}

    def attempt(k: int) -> tuple[Path, EvalResult]:
        q = work / f"guard-{k}.onnx"
        quantize(prep, q, cache, cfg.calib_method, floats + order[:k])
        acc = evaluate_runner(OrtRunner(q), ds.val, rm.preprocess, len(rm.classes))
        tried[k] = fp32_acc.top1 - acc.top1
        log(f"  {k} layer(s) in float: INT8 top-1 {acc.top1:.2f}% (drop {tried[k]:+.2f})")
        return q, acc

    # Grow k geometrically until the drop fits, then bisect down to the fewest layers that still fit.
    lo, k, fit = 0, 1, None
    while k <= len(order):
        q, acc = attempt(k)
        if tried[k] <= cfg.max_drop:
            fit = (k, q, acc)
            break
        lo, k = k, (min(2 * k, len(order)) if k < len(order) else len(order) + 1)
    if fit is None:
        return {"path": None, "guard": {"tried": tried, "sensitivity": _top(gains, order)}}
    hi = fit[0]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        q, acc = attempt(mid)
        if tried[mid] <= cfg.max_drop:
            hi, fit = mid, (mid, q, acc)
        else:
            lo = mid
    k, q, acc = fit
    layers = [{"name": n, "op": _op_type(prep, n), "sensitivity_mse": gains[n]} for n in order[:k]]
    log(f"accuracy guard: kept {k} layer(s) in float: {', '.join(n for n in order[:k])}")
    return {"path": q, "accuracy": acc,
            "guard": {"float_layers": layers, "tried": tried, "candidates": len(candidates)}}


def _top(gains: dict[str, float], order: list[str], n: int = 10) -> list[dict[str, Any]]:
    return [{"name": k, "sensitivity_mse": gains[k]} for k in order[:n]]


def _op_type(model_path: Path, node: str) -> str:
    import onnx

    return next((n.op_type for n in onnx.load(str(model_path)).graph.node if n.name == node), "?")


def write_calibration_set(data: str, size: int, out: Path, seed: int = 0, val_split: float | None = None) -> dict[str, Any]:
    """`edgetl calib`: copy a seeded, class-stratified sample of training images into ``out/<class>/``."""
    import shutil

    from .data import load_data
    from .preprocess import load_rgb

    if size < 1:
        raise UsageError("--size must be at least 1")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: already exists and is not empty; pick another --out")
    ds = load_data(data, val_split, seed)
    split = calibration_split(ds, None, size, seed)
    files = []
    for i, (item, label) in enumerate(zip(split.items, split.labels)):
        d = out / ds.classes[label]
        d.mkdir(parents=True, exist_ok=True)
        if isinstance(item, np.ndarray):
            dst = d / f"{i:06d}.png"
            load_rgb(item).save(dst)
        else:
            dst = d / f"{i:06d}_{Path(item).name}"
            shutil.copyfile(item, dst)
        files.append(str(dst.relative_to(out)))
    info = {"source": ds.name, "size": len(files), "seed": seed, "classes": ds.classes,
            "per_class": {c: split.labels.count(i) for i, c in enumerate(ds.classes)}, "files": files}
    atomic_write_json(out / "calib.json", info)
    return info
