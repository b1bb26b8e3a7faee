"""TensorRT-shaped Q/DQ: symmetric INT8 activations and weights (zero point 0), per-channel weights,
bias left in float, made with ONNX Runtime's quantize_static as NVIDIA's ModelOpt does (explicit
quantization is what TensorRT 10 keeps; implicit calibration is deprecated there). Also what share
of the model runs in INT8, and `Floater`, which returns chosen layers to float by rewiring the graph."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibrate import calib_method

QUANT_SETTINGS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


# ONNX Runtime's x86 integer kernels (VNNI vpdpbusd) multiply u8 activations by s8 weights: on this
# project's CPU that layout ran 2-4x faster than FP32, the TensorRT layout 0.5-0.9x (RESULTS.md).
CPU_SETTINGS = {"ActivationSymmetric": False, "WeightSymmetric": True}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def quantize(prep: Path, dst: Path, cache: Path, method: str, exclude: list[str], cpu: bool = False) -> None:
    """One quantize_static call with the ranges in ``cache``: cheap, so the guard can repeat it.
    ``cpu`` makes the UINT8-activation layout for ONNX Runtime on x86/ARM CPUs instead of TensorRT's, with
    weight scales that x86 kernels without VNNI cannot saturate on (``int16_safe_scales``), so that one
    file is exact and fast on every CPU."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    options: dict[str, Any] = dict(CPU_SETTINGS if cpu else QUANT_SETTINGS)
    if cpu:
        options["TensorQuantOverrides"] = int16_safe_overrides(onnx.load(str(prep)).graph)
    root = logging.getLogger()  # ORT's quantizer logs its pre-processing advice there: noise here
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(prep), str(dst), calibration_data_reader=None, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8 if cpu else QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=calib_method(method), nodes_to_exclude=exclude, extra_options=options,
            calibration_cache_path=str(cache),
        )
    finally:
        root.setLevel(level)
    model = onnx.load(str(dst))
    if float_outputs(model.graph):
        onnx.save(model, str(dst))


def float_outputs(g: Any) -> bool:
    """Drop the QuantizeLinear/DequantizeLinear pair quantize_static puts on each graph output (the
    logits): nothing reads them in INT8, and rounding logits to 8 bits only ties close classes (ModelOpt
    quantizes layer inputs and weights, never outputs). Returns whether the graph changed."""
    outputs = {o.name for o in g.output}
    made = {o: n for n in g.node for o in n.output}
    pairs = [(made[dq.input[0]], dq) for dq in g.node if dq.op_type == "DequantizeLinear" and dq.output[0] in outputs
             and made.get(dq.input[0]) is not None and made[dq.input[0]].op_type == "QuantizeLinear"]
    drop = set()
    for q, dq in pairs:
        producer = made.get(q.input[0])
        if producer is None or sum(q.input[0] in n.input for n in g.node) > 1:  # an input, or read elsewhere
            continue
        producer.output[list(producer.output).index(q.input[0])] = dq.output[0]
        drop |= {id(q), id(dq)}
    for k in reversed([k for k, n in enumerate(g.node) if id(n) in drop]):  # by index: see _prune
        del g.node[k]
    _prune(g)
    return bool(drop)


def int16_safe_overrides(graph: Any) -> dict[str, list[dict[str, Any]]]:
    """quantize_static's per-channel weight scales for the CPU layout: ``int16_safe_scales`` of every
    Conv, Gemm and 2-D MatMul weight that ONNX Runtime's x86 kernels pair in int16 (a batched MatMul
    weight keeps the default and, where it could saturate, the runtime's overflow-safe setting)."""
    from onnx import numpy_helper

    from ...runtime.numerics import k_rows, paired_weights

    inits = {t.name: t for t in graph.initializer}
    overrides = {}
    for name, op in paired_weights(graph).items():
        if op == "MatMul" and len(inits[name].dims) != 2:
            continue
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        axis = 1 if op in ("Gemm", "MatMul") else 0  # the output channel: K x N weights hold it in axis 1
        overrides[name] = [{"axis": axis, "scale": np.float32(s), "zero_point": np.int8(0)}
                           for s in int16_safe_scales(k_rows(w, op))]
    return overrides


def int16_safe_scales(rows: np.ndarray, steps: int = 24) -> np.ndarray:
    """Per row (output channel) of float weights in kernel order, the smallest symmetric INT8 scale at
    which every consecutive pair adds up to at most 127 in magnitude once rounded (``pair_sums``: only
    pairs of one sign add up): 255 x 128 = 32640 fits int16 with one step to spare for rounding, where
    plain max|w|/127 scales let a pair reach 254 and saturate. A channel whose pairs already fit keeps
    its full 8 bits; the worst case is 7 bits."""
    from ...runtime.numerics import pair_sums

    rows = np.pad(rows, ((0, 0), (0, rows.shape[1] % 2)))
    def fits(scale: np.ndarray) -> np.ndarray:
        return pair_sums(np.rint(rows / scale[:, None])).max(axis=1) <= 127

    full = np.maximum(np.abs(rows).max(axis=1), np.finfo(np.float32).tiny) / 127
    lo, hi = full.copy(), np.maximum(full, np.abs(rows[:, 0::2] + rows[:, 1::2]).max(axis=1) / 126.5)
    hi = np.where(fits(full), full, hi)
    for _ in range(steps):  # bisection per row: lo does not fit (or is hi), hi fits
        mid = (lo + hi) / 2
        ok = fits(mid)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return hi.astype(np.float32)


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
    """Copies of a Q/DQ model with chosen nodes back in float, by rewiring their inputs to float
    tensors: milliseconds, where a quantize_static call per guess took seconds. By default the inputs
    are the prepared model's own tensors (the TensorRT layout keeps its names). ``in_place`` rewires
    each input read through a DequantizeLinear to what was quantized: an activation to its
    QuantizeLinear's input in this graph, clamped to that range (``_clamp``), and a weight or bias to
    the prepared model's. The CPU layout needs this, because it renames tensors where it folds a Relu
    or Clip into the range of the QuantizeLinear after it."""

    def __init__(self, q: Any, prep: Any, in_place: bool = False) -> None:
        self.q, self.in_place = q, in_place
        self.nodes = {n.name: n for n in prep.graph.node}
        self.inits = {t.name: t for t in prep.graph.initializer}

    def floated(self, names: list[str]) -> Any:
        import onnx

        m = onnx.ModelProto()
        m.CopyFrom(self.q)
        have = {t.name for t in m.graph.initializer}
        made = {o: n for n in m.graph.node for o in n.output}
        rewire = self._in_place if self.in_place else self._to_prep
        nodes = []
        for node in m.graph.node:
            if node.name in names:
                nodes += rewire(m.graph, node, self.nodes[node.name], have, made)
            nodes.append(node)
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        _prune(m.graph)
        return m

    def _to_prep(self, g: Any, node: Any, orig: Any, have: set[str], made: dict[str, Any]) -> list[Any]:
        """The prepared model's inputs, its own bias included: the one in this graph was shifted by bias
        correction for the INT8 layer's error, which a float layer does not make (with every layer
        floated, those shifts alone cost a tiny model 2 points)."""
        del node.input[:]
        node.input.extend(orig.input)
        for k, i in enumerate(orig.input):
            if i in self.inits:
                node.input[k] = _add_copy(g, self.inits[i], f"{i}/float" if i in have else i, have)
        return []

    def _in_place(self, g: Any, node: Any, orig: Any, have: set[str], made: dict[str, Any]) -> list[Any]:
        """Rewires ``node``; returns the Clip nodes that must run before it."""
        clips = []
        for k, i in enumerate(list(node.input)):
            dq = made.get(i)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] not in have:  # an activation: the tensor its QuantizeLinear read, clamped as it was
                clips.append(_clamp(g, made[dq.input[0]], f"{node.name}/input{k}"))
                node.input[k] = clips[-1].output[0]
                continue
            # the DQ may output the float tensor's name
            node.input[k] = _add_copy(g, self.inits[orig.input[k]], f"{orig.input[k]}/float", have)
        return clips


def _add_copy(g: Any, init: Any, name: str, have: set[str]) -> str:
    """``init`` as initializer ``name`` of ``g`` (once); returns ``name``."""
    import onnx

    if name not in have:
        t = onnx.TensorProto()
        t.CopyFrom(init)
        t.name = name
        g.initializer.append(t)
        have.add(name)
    return name


def _clamp(g: Any, quant: Any, name: str) -> Any:
    """A Clip node of the input of QuantizeLinear ``quant`` to the range it quantizes to (its
    initializers added to ``g``): where the CPU layout folded a Relu or Clip into that range, the
    clamp is all that is left of it."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in g.initializer}
    scale = float(numpy_helper.to_array(inits[quant.input[1]]))
    zp = numpy_helper.to_array(inits[quant.input[2]])
    info = np.iinfo(zp.dtype)
    lo, hi = ((np.float32((b - int(zp)) * scale)) for b in (info.min, info.max))
    g.initializer.extend([numpy_helper.from_array(np.array(lo, np.float32), f"{name}/lo"),
                          numpy_helper.from_array(np.array(hi, np.float32), f"{name}/hi")])
    return helper.make_node("Clip", [quant.input[0], f"{name}/lo", f"{name}/hi"], [name], name=f"{name}/clip")


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
