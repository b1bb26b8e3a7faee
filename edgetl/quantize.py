"""INT8 for TensorRT and ONNX Runtime: calibrated Q/DQ ONNX plus an accuracy guard.

TensorRT-shaped Q/DQ (explicit quantization is what TensorRT 10 keeps; implicit calibration is
deprecated there): symmetric INT8 activations and weights (zero point 0),
per-channel weights, bias left in float, made with ONNX Runtime's quantize_static as NVIDIA's
ModelOpt does. Calibration ranges are cached in ``calib.cache`` (ONNX Runtime's JSON ranges
plus an ``edgetl_key``), so exporting again with the same model and data skips calibration.

Longer than this project's 400-line guide because calibration, quantization, the INT8 share, bias
correction and the guard share one hand-off (``Int8Job``); the restructuring issue moves them to
``export/int8/{calibrate,guard}.py``.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import limits
from .data.check import calibration_listing
from .data.sources import DataSet, Split, eval_transform, load_data, make_loader, stratified_sample, without
from .errors import DataError, UsageError
from .fileio import atomic_folder, atomic_write_bytes, atomic_write_json, sha256_file
from .metrics import EvalResult
from .runtime.numerics import SIMULATED

CALIB_METHODS = ("minmax", "entropy", "percentile")
CALIBRATOR_VERSION = 3  # bump when calibrate() changes, so old calib.cache files are not reused
PROBE_PIXELS = 64 * 64 * 64  # calibration pixels whose FP32 logits rank layer sensitivity: 64 images at 64 px
PROBE_MIN_IMAGES = 16
BIAS_PIXELS = 32 * 96 * 96  # calibration pixels for bias correction: 32 images at 96 px, 16 at 224 and above
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
    share: dict[str, Any] | None = None


def calibration_split(ds: DataSet, calib: str | None, size: int, seed: int = 0) -> Split:
    """``--calib DIR`` (an ImageFolder or a flat folder of images) or a seeded, class-stratified
    sample of ``--calib-size`` training images."""
    if calib:
        root = Path(calib)
        if not root.is_dir():
            raise DataError(f"{root}: no such calibration folder")
        listing = calibration_listing(root)  # symlinks leaving the folder are refused
        if listing.errors():
            raise DataError(str(listing.errors()[0]))
        unknown = sorted(set(listing.classes) - set(ds.classes))
        if unknown:
            raise DataError(f"{root}: calibration classes {unknown[:5]} are not among the run's classes")
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
    fail on batches larger than 1 (their histograms are collected per sample)."""

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


def quantized_nodes(model: Any) -> list[str]:
    """Names of the float nodes whose inputs received Q/DQ pairs: the guard's candidates."""
    g = model.graph
    dq_outputs = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in g.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dq_outputs for i in n.input)]


@dataclass
class Int8Share:
    """How much of a Q/DQ model really runs in INT8: weighted layers whose activation and weight
    both come through DequantizeLinear, counted and weighted by multiply-accumulates."""

    weighted_layers: int
    int8_layers: int
    macs: int
    int8_macs: int
    int8_names: tuple[str, ...] = ()

    @property
    def mac_share(self) -> float:
        return self.int8_macs / self.macs if self.macs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"weighted_layers": self.weighted_layers, "int8_layers": self.int8_layers,
                "macs_per_image": self.macs, "int8_mac_share": round(self.mac_share, 4)}

    def line(self) -> str:
        return (f"{self.int8_layers}/{self.weighted_layers} weighted layers in INT8, "
                f"{100 * self.mac_share:.1f}% of the MACs")


def layer_macs(prep: Any) -> dict[str, int]:
    """Multiply-accumulates per image of each weighted layer, from the shapes in the prepared model."""
    g = prep.graph
    inits = {t.name: tuple(t.dims) for t in g.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.output) + list(g.input)}
    macs: dict[str, int] = {}
    for n in g.node:
        if n.op_type not in WEIGHTED_OPS or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = int(np.prod(inits[n.input[1]]))
        out, inp = shapes.get(n.output[0], []), shapes.get(n.input[0], [])
        if n.op_type == "Conv":  # each output pixel of each output channel: Cin/groups x kh x kw
            per = int(np.prod(out[2:])) if out[2:] and all(out[2:]) else 1
        elif n.op_type == "ConvTranspose":  # each input pixel scatters the whole kernel
            per = int(np.prod(inp[2:])) if inp[2:] and all(inp[2:]) else 1
        elif n.op_type == "MatMul":
            per = int(np.prod(out[1:-1])) if out[1:-1] and all(out[1:-1]) else 1
        else:  # Gemm: one row per image
            per = 1
        macs[n.name] = w * per
    return macs


def int8_share(model: Any, macs: dict[str, int]) -> Int8Share:
    g = model.graph
    dq_outputs = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8 = [n.name for n in g.node if n.name in macs and n.input[0] in dq_outputs and n.input[1] in dq_outputs]
    return Int8Share(len(macs), len(int8), sum(macs.values()), sum(macs[n] for n in int8), tuple(int8))


class Floater:
    """Copies of a Q/DQ model with chosen nodes back in float, by rewiring their inputs to the float
    tensors of the prepared model: milliseconds, where a quantize_static call per guess took seconds."""

    def __init__(self, q: Any, prep: Any) -> None:
        self.q = q
        self.nodes = {n.name: n for n in prep.graph.node}
        self.inits = {t.name: t for t in prep.graph.initializer}

    def floated(self, names: list[str]) -> Any:
        import onnx

        m = onnx.ModelProto()
        m.CopyFrom(self.q)
        have = {t.name for t in m.graph.initializer}
        wanted = set(names)
        for node in m.graph.node:
            if node.name in wanted:
                orig = self.nodes[node.name]
                del node.input[:]
                node.input.extend(orig.input)
                for i in orig.input:
                    if i in self.inits and i not in have:
                        m.graph.initializer.append(self.inits[i])
                        have.add(i)
        _prune(m.graph)
        return m


def _prune(g: Any) -> None:
    """Drop nodes whose outputs nobody reads (Q/DQ pairs of floated layers) and unused initializers.
    Deleted by index: ``remove`` compares whole protos, weights included."""
    keep_out = {o.name for o in g.output}
    while True:
        used = keep_out | {i for n in g.node for i in n.input}
        dead = [k for k, n in enumerate(g.node) if not any(o in used for o in n.output)]
        if not dead:
            break
        for k in reversed(dead):
            del g.node[k]
    used = {i for n in g.node for i in n.input}
    for k in reversed([k for k, t in enumerate(g.initializer) if t.name not in used]):
        del g.initializer[k]


class ValFeed:
    """The validation split preprocessed once (when it fits in MAX_VAL_BYTES), so that the guard's
    evaluations after the first cost inference only."""

    MAX_VAL_BYTES = 1 << 30

    def __init__(self, split: Split, pp: Any, num_classes: int) -> None:
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

    def evaluate(self, runner: Any) -> EvalResult:
        from .metrics import Scorer

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
    cfg: Any
    calib: Split
    val: ValFeed
    fp32: EvalResult
    macs: dict[str, int]
    log: Any
    fast_rank: bool = True  # rank on NCHWc kernels: the order is what matters there

    def simulated(self, model: Any, name: str) -> EvalResult:
        """Top-1 of ``model`` with Q/DQ simulated in float: what TensorRT approximates, on any CPU."""
        from .runtime.onnxruntime import OrtRunner

        path = self.work / name
        path.write_bytes(model.SerializeToString())
        return self.val.evaluate(OrtRunner(path, own=True, simulate=True))


def build_int8(rm: Any, ds: DataSet, onnx_path: Path, out: Path, cfg: Any, fp32_acc: EvalResult, log: Any) -> Int8Result:
    """Calibrate (or reuse calib.cache), quantize, evaluate in simulated numerics; if the drop exceeds
    ``cfg.max_drop``, keep the fewest, most sensitive layers in float until it fits, as long as at
    least ``cfg.min_int8`` of the MACs stay in INT8."""
    import onnx

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
        q, prep_model = onnx.load(str(work / "q.onnx")), onnx.load(str(prep))
        job = Int8Job(prep, work, cache, cfg, split, ValFeed(ds.val, rm.preprocess, len(rm.classes)), fp32_acc,
                      layer_macs(prep_model), log)
        if cfg.bias_correction:
            t0 = time.perf_counter()
            n = correct_biases(job, q, prep_model)
            calibration["bias_correction"] = {"layers": n, "seconds": round(time.perf_counter() - t0, 1)}
            log(f"bias correction: {n} layer(s) in {calibration['bias_correction']['seconds']:.0f} s")
        acc = job.simulated(q, "q-eval.onnx")
        drop = fp32_acc.top1 - acc.top1
        log(f"top-1 on {acc.images} validation images (INT8 simulated in float): FP32 {fp32_acc.top1:.2f}%, "
            f"INT8 {acc.top1:.2f}% (drop {drop:+.2f} points, budget {cfg.max_drop})")
        guard: dict[str, Any] = {"max_drop": cfg.max_drop, "min_int8": cfg.min_int8, "initial_drop": drop,
                                 "float_layers": []}
        best = q
        if drop > cfg.max_drop:
            found = _guard(job, q, prep_model, drop)
            guard.update(found["guard"])
            if found["model"] is None:
                return Int8Result(False, _acc(acc, fp32_acc), calibration, guard, found["message"])
            best, acc = found["model"], found["accuracy"]
        share = int8_share(best, job.macs)
        guard["final_drop"] = fp32_acc.top1 - acc.top1
        result = Int8Result(True, {**_acc(acc, fp32_acc), "numerics": SIMULATED}, calibration, guard,
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


NEXT_STEPS = ("Try --calib-method percentile or entropy, a larger --calib-size, a looser --max-drop, or "
              "--min-int8 0 to accept a partly float model")


def _cpu_variant(job: Int8Job, floats: list[str], out: Path) -> dict[str, Any]:
    """model.int8-cpu.onnx: the same ranges and float layers in ONNX Runtime's fast CPU layout, measured
    with the kernels edgetl's runtime picks for this CPU. Written only when its drop is within the budget."""
    import onnx

    from .runtime.numerics import int8_isa, kernel_config
    from .runtime.onnxruntime import OrtRunner

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

    info = {"accuracy": {**_acc(acc, job.fp32), "numerics": runner.numerics, "isa": isa,
                         "ort_session_config": kernel_config(isa)},
            "int8": int8_share(onnx.load(str(q)), job.macs).to_dict(),
            "float_layers": floats, "written": drop <= job.cfg.max_drop}
    if info["written"]:
        atomic_write_bytes(out / "model.int8-cpu.onnx", q.read_bytes())
    else:
        job.log(f"model.int8-cpu.onnx not written: its drop exceeds --max-drop {job.cfg.max_drop}")
    return info


def correct_biases(job: Int8Job, q: Any, prep: Any) -> int:
    """Shift each quantized Conv's float bias by the per-channel mean error of its output against FP32,
    in graph order, each measured after the corrections before it (sequential bias correction, as NNCF
    and the AdaRound/DFQ papers do; correcting every layer at once from one pass diverged). Biases stay
    float, so the Q/DQ shape TensorRT needs is unchanged. Returns the number of layers corrected.

    On cifar10-mini at 96 px it took the TensorRT layout from -0.90 to -0.10 points (RESULTS.md).
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    n = max(PROBE_MIN_IMAGES, BIAS_PIXELS // job.val.pp.size ** 2)
    split = job.calib.subset(range(min(n, len(job.calib))))
    x = np.concatenate([b.numpy() for b, _ in make_loader(split, eval_transform(job.val.pp), 64, shuffle=False,
                                                          workers=0)])
    biases = _Biases(q)
    in_prep = {c.name: c for c in prep.graph.node if c.op_type == "Conv"}
    convs = [c for c in q.graph.node if c.op_type == "Conv" and biases.has(c) and c.name in in_prep]
    names = [c.output[0] for c in convs]
    # the same layer's output in FP32: the CPU layout drops a Clip after a Conv and gives the Conv its name
    ref_names = [in_prep[c.name].output[0] for c in convs]

    def means(model: Any, simulate: bool, only: list[str]) -> list[np.ndarray]:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        del m.graph.output[:]
        m.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in only)
        opts = ort.SessionOptions()
        if simulate:  # NCHWc float simulation: its rounding moves means by nothing that matters
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        session = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outs = session.run(only, {"input": x})
        return [o.astype(np.float64).mean(axis=(0, 2, 3)) for o in outs]

    ref = means(prep, False, ref_names)
    for k, conv in enumerate(convs):
        biases.shift(conv, ref[k] - means(q, True, [names[k]])[0])
        if (k + 1) % max(1, len(convs) // 4) == 0:
            job.log(f"  bias correction: {k + 1}/{len(convs)} layers")
    return len(convs)


class _Biases:
    """A Conv's bias as a float initializer (TensorRT layout: biases stay float) or as an int32
    initializer behind a DequantizeLinear (ONNX Runtime's CPU layout), read and shifted in float."""

    def __init__(self, model: Any) -> None:
        self.inits = {t.name: t for t in model.graph.initializer}
        self.dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}

    def has(self, conv: Any) -> bool:
        if len(conv.input) < 3:
            return False
        name = conv.input[2]
        return name in self.inits or (name in self.dq and self.dq[name].input[0] in self.inits
                                      and self.dq[name].input[1] in self.inits)

    def shift(self, conv: Any, delta: np.ndarray) -> None:
        from onnx import numpy_helper

        name = conv.input[2]
        if name in self.inits:
            t = self.inits[name]
            t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) + delta).astype(np.float32), t.name))
            return
        q, scale = self.inits[self.dq[name].input[0]], numpy_helper.to_array(self.inits[self.dq[name].input[1]])
        values = numpy_helper.to_array(q).astype(np.int64) + np.round(delta / scale).astype(np.int64)
        q.CopyFrom(numpy_helper.from_array(np.clip(values, -2 ** 31, 2 ** 31 - 1).astype(np.int32), q.name))


def _acc(acc: EvalResult, ref: EvalResult) -> dict[str, Any]:
    return {"top1": acc.top1, "top5": acc.top5, "delta_top1": acc.top1 - ref.top1}


def _cache_key(cache: Path) -> str | None:
    try:
        return json.loads(cache.read_text()).get("edgetl_key")
    except (OSError, ValueError, AttributeError):
        return None


def _guard(job: Int8Job, q: Any, prep_model: Any, initial_drop: float) -> dict[str, Any]:
    """Rank quantized layers by how much floating each alone brings the simulated INT8 logits back to
    FP32 on calibration images (one pass, one cheap model copy per layer), then float the top k,
    growing k until the validation drop fits; k stops where less than ``min_int8`` of the MACs
    would stay in INT8."""
    from .runtime.onnxruntime import OrtRunner

    cfg, log = job.cfg, job.log
    t0 = time.perf_counter()
    floater = Floater(q, prep_model)
    n = max(PROBE_MIN_IMAGES, PROBE_PIXELS // job.val.pp.size ** 2)
    probe = job.calib.subset(range(min(n, len(job.calib))))
    probe = np.concatenate([b.numpy() for b, _ in make_loader(probe, eval_transform(job.val.pp), 64, shuffle=False,
                                                              workers=0)])
    ref = OrtRunner(job.prep, own=True).run(probe)

    def error(model: Any) -> float:
        path = job.work / "probe.onnx"
        path.write_bytes(model.SerializeToString())
        return float(np.mean((OrtRunner(path, own=True, simulate=True, fast=job.fast_rank).run(probe) - ref) ** 2))

    base_err = error(q)
    candidates = quantized_nodes(q)
    log(f"accuracy guard: ranking the sensitivity of {len(candidates)} quantized layers on {len(probe)} images")
    gains: dict[str, float] = {}
    step = max(1, len(candidates) // 5)
    for i, name in enumerate(candidates, 1):
        gains[name] = base_err - error(floater.floated([name]))
        if i % step == 0 or i == len(candidates):
            log(f"  ranked {i}/{len(candidates)} layers ({time.perf_counter() - t0:.0f} s)")
    order = sorted(candidates, key=lambda n: -gains[n])
    # the most layers that can float while min_int8 of the MACs stay in INT8
    base = int8_share(q, job.macs)
    int8_now = set(base.int8_names)
    k_max, left = 0, base.int8_macs
    for name in order:
        left -= job.macs[name] if name in int8_now else 0
        if left < cfg.min_int8 * base.macs:
            break
        k_max += 1
    tried: dict[int, float] = {}
    results: dict[int, tuple[Any, EvalResult]] = {}

    def attempt(k: int) -> bool:
        model = floater.floated(order[:k])
        acc = job.simulated(model, f"guard-{k}.onnx")
        tried[k], results[k] = job.fp32.top1 - acc.top1, (model, acc)
        log(f"  {k} layer(s) in float: INT8 top-1 {acc.top1:.2f}% (drop {tried[k]:+.2f})")
        return tried[k] <= cfg.max_drop

    # Grow k geometrically until the drop fits, then bisect down to the fewest layers that still fit.
    lo, k, hi = 0, 1, None
    while k <= k_max:
        if attempt(k):
            hi = k
            break
        lo, k = k, (min(2 * k, k_max) if k < k_max else k_max + 1)
    info: dict[str, Any] = {"tried": tried, "candidates": len(candidates), "sensitivity": _top(gains, order),
                            "seconds": 0.0}
    if hi is None:
        info["seconds"] = round(time.perf_counter() - t0, 1)
        limit = (f"floating up to {k_max} layer(s), the most that keep {cfg.min_int8:.0%} of the MACs in INT8 "
                 f"(--min-int8)," if k_max < len(order) else f"floating any of the {len(order)} layers")
        drop = tried[max(tried)] if tried else initial_drop
        return {"model": None, "guard": info,
                "message": f"INT8 misses the --max-drop {cfg.max_drop:g} budget: {limit} still leaves a drop of "
                           f"{drop:.2f} points; no model.int8.onnx written, the other artifacts are kept. "
                           f"{NEXT_STEPS}"}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    model, acc = results[hi]
    info["seconds"] = round(time.perf_counter() - t0, 1)
    macs = sum(job.macs.values()) or 1
    layers = [{"name": n, "op": floater.nodes[n].op_type, "sensitivity_mse": gains[n],
               "mac_share": round(job.macs.get(n, 0) / macs, 4)} for n in order[:hi]]
    info["float_layers"] = layers
    log(f"accuracy guard: {hi} layer(s) kept in float after {info['seconds']:.0f} s")
    log(_float_table(layers))
    return {"model": model, "accuracy": acc, "guard": info}


def _float_table(layers: list[dict[str, Any]]) -> str:
    """The floated layers as a short aligned table: what each costs in MACs and what it bought."""
    width = min(48, max(len(x["name"]) for x in layers))
    lines = [f"  {'layer':<{width}}  {'op':<14} {'MACs':>6}  {'sensitivity (logit MSE gain)':>28}"]
    for x in layers:
        name = x["name"] if len(x["name"]) <= width else "…" + x["name"][-width + 1:]
        lines.append(f"  {name:<{width}}  {x['op']:<14} {100 * x['mac_share']:5.1f}%  {x['sensitivity_mse']:28.4g}")
    return "\n".join(lines)


def _top(gains: dict[str, float], order: list[str], n: int = 10) -> list[dict[str, Any]]:
    return [{"name": k, "sensitivity_mse": gains[k]} for k in order[:n]]


def write_calibration_set(data: str, size: int, out: Path, seed: int = 0, val_split: float | None = None) -> dict[str, Any]:
    """`edgetl calib`: copy a seeded, class-stratified sample of training images into ``out/<class>/``.

    Files `check-data` calls bad are left out, replaced from the rest, and listed in calib.json. The
    folder is filled under a temporary name and renamed into place, so a failure leaves nothing.
    """
    import shutil

    from .images import load_rgb

    limits.check({"--size": (size, limits.COUNT), "--seed": (seed, limits.SEED), "--val-split": (val_split, limits.FRACTION_OPEN)})
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: already exists and is not empty; pick another --out")
    ds = load_data(data, val_split, seed)
    split, skipped = _readable_sample(ds, size, seed)
    files = []
    with atomic_folder(out) as tmp:
        for i, (item, label) in enumerate(zip(split.items, split.labels)):
            d = tmp / ds.classes[label]
            d.mkdir(exist_ok=True)
            if isinstance(item, np.ndarray):
                dst = d / f"{i:06d}.png"
                load_rgb(item).save(dst)
            else:
                dst = d / f"{i:06d}_{Path(item).name}"
                shutil.copyfile(item, dst)
            files.append(str(dst.relative_to(tmp)))
        info = {"source": ds.name, "size": len(files), "seed": seed, "classes": ds.classes,
                "per_class": {c: split.labels.count(i) for i, c in enumerate(ds.classes)}, "files": files,
                "skipped": skipped}
        atomic_write_json(tmp / "calib.json", info)
    return info


def _readable_sample(ds: DataSet, size: int, seed: int) -> tuple[Split, dict[str, str]]:
    """The stratified sample, drawn again without the files check-data calls bad until all of it
    decodes; only newly drawn files are decoded. Returns the sample and {bad file: reason}."""
    from .data.check import decode_all

    bad: dict[str, str] = {}
    checked: set[str] = set()
    while True:
        split = calibration_split(replace(ds, train=without(ds.train, bad)), None, size, seed)
        new = [Path(it) for it in split.items if not isinstance(it, np.ndarray) and str(it) not in checked]
        found = False
        for p, (_, _, finding) in zip(new, decode_all(new)):
            checked.add(str(p))
            if finding is not None and finding.level == "bad":
                bad[str(p)] = finding.message
                found = True
        if not found:
            return split, bad
