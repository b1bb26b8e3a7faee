"""Sequential bias correction: each quantized conv's bias is corrected for the mean error INT8 adds to
its output, layer by layer on calibration images (float biases in the TensorRT layout, int32 biases
behind their own DequantizeLinear in the CPU layout)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from ...data.sources import eval_transform, make_loader
from .job import PROBE_MIN_IMAGES, Int8Job

BIAS_PIXELS = 32 * 96 * 96  # calibration pixels for bias correction: 32 images at 96 px, 16 at 224 and above


def correct_biases(job: Int8Job, q: Any, prep: Any, floated: Collection[str] = ()) -> int:
    """Shift each quantized Conv's float bias by the per-channel mean error of its output against FP32,
    in graph order, each measured after the corrections before it (sequential bias correction, as NNCF
    and the AdaRound/DFQ papers do; correcting every layer at once from one pass diverged). Biases stay
    float, so the Q/DQ shape TensorRT needs is unchanged. Returns the number of layers corrected.

    On cifar10-mini at 96 px it took the TensorRT layout from -0.90 to 0.00 points (RESULTS.md).

    ``floated``: layers the guard has just put back in float in an already corrected ``q``. The convs
    after them were corrected for those layers' INT8 error, which is gone, so they are corrected again
    (a shift is the residual mean error, so correcting twice changes nothing); the ones before the first
    floated layer in graph order cannot read its output and keep their biases.
    """
    biases = _Biases(q)
    in_prep = {c.name: c for c in prep.graph.node if c.op_type == "Conv"}
    start = next((k for k, n in enumerate(q.graph.node) if n.name in floated), 0)
    convs = [c for c in list(q.graph.node)[start:] if c.op_type == "Conv" and biases.has(c) and c.name in in_prep]
    if not convs:
        return 0
    # the same layer's output in FP32: the CPU layout drops a Clip after a Conv and gives the Conv its name
    ref_names = [in_prep[c.name].output[0] for c in convs]
    n = max(PROBE_MIN_IMAGES, BIAS_PIXELS // job.val.pp.size ** 2)
    x = np.concatenate([b.numpy() for b, _ in make_loader(job.calib.sample(n), eval_transform(job.val.pp), 64,
                                                          shuffle=False, workers=0)])
    ref = _session(_upto(prep, ref_names), simulate=False).run(ref_names, {"input": x})
    task = (f"bias correction of the {len(convs)} convolutions after the float layers" if floated
            else f"bias correction of {len(convs)} quantized convolutions")
    walk = _Walk(q, x)
    with job.log.task(task, len(convs)) as tick:
        for k, conv in enumerate(convs):
            out = walk.upto(conv, biases.source(convs[k - 1]) if k else None)
            biases.shift(conv, _mean(ref[k]) - _mean(out))
            tick()
    return len(convs)


def _mean(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=(0, 2, 3), dtype=np.float64)


def _session(model: Any, simulate: bool) -> Any:
    """A session on ``model``: FP32 as it is, or Q/DQ simulated in float as reported accuracy is."""
    import onnxruntime as ort

    from ...runtime.onnxruntime import simulating

    opts = ort.SessionOptions()
    if simulate:
        simulating(opts)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _upto(model: Any, outputs: list[str]) -> Any:
    """``model`` cut to the nodes ``outputs`` depend on, which become its outputs: ONNX Runtime runs every
    node of a graph whatever outputs a run asks for."""
    import onnx
    from onnx import helper

    need, keep = set(outputs), []
    for node in reversed(model.graph.node):
        if need.intersection(node.output):
            keep.append(node)
            need.update(node.input)
    g = model.graph
    graph = helper.make_graph(list(reversed(keep)), g.name, [i for i in g.input if i.name in need],
                              [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in outputs],
                              [t for t in g.initializer if t.name in need])
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


class _Walk:
    """Runs a Q/DQ graph (simulated) one segment at a time, from the last corrected conv to the next, on
    the tensors earlier segments left: one pass through the network in all, where running the graph
    from its input for each conv cost depth times that (15 s of 17 at 224 px). Every tensor made before
    the last shifted conv is final, because a bias shift changes only what comes after it."""

    def __init__(self, q: Any, x: np.ndarray) -> None:
        import onnx

        self.q, self.nodes = q, list(q.graph.node)
        self.inits = {t.name: t for t in q.graph.initializer}
        self.pos = {n.name: k for k, n in enumerate(self.nodes)}
        self.last_use: dict[str, int] = {}
        for k, node in enumerate(self.nodes):
            for name in node.input:
                self.last_use[name] = k
        self.values = {q.graph.input[0].name: x}
        inferred = onnx.shape_inference.infer_shapes(q).graph.value_info  # the int8/uint8 tensors' types
        self.types = {v.name: v.type.tensor_type.elem_type for v in inferred}
        self.done = 0  # nodes before this index have their final outputs in ``values`` where still read

    def upto(self, conv: Any, shifted_source: Any | None) -> np.ndarray:
        """``conv``'s output; ``shifted_source``: the node that reads the last shifted bias where that is
        not its conv (the CPU layout's DequantizeLinear), run again too."""
        import onnx
        from onnx import helper

        hi = self.pos[conv.name]
        seg = [self.nodes[k] for k in range(self.done, hi + 1)]
        if shifted_source is not None and self.pos[shifted_source.name] < self.done:
            seg.insert(0, shifted_source)
        made = {o for node in seg for o in node.output}
        reads = {i for node in seg for i in node.input if i and i not in made}
        keep = [o for node in seg[:-1] for o in node.output if self.last_use.get(o, -1) >= hi]
        outputs = [conv.output[0], *keep]
        graph = helper.make_graph(
            seg, "segment",
            [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(self.values[i].dtype), None)
             for i in sorted(reads - self.inits.keys())],
            [helper.make_tensor_value_info(o, self.types.get(o, onnx.TensorProto.FLOAT), None) for o in outputs],
            [self.inits[i] for i in sorted(reads & self.inits.keys())])
        model = helper.make_model(graph, opset_imports=self.q.opset_import, ir_version=self.q.ir_version)
        got = _session(model, simulate=True).run(outputs, {i: self.values[i] for i in reads - self.inits.keys()})
        self.values.update(zip(keep, got[1:]))
        self.values = {k: v for k, v in self.values.items() if self.last_use.get(k, -1) >= hi}
        self.done = hi
        return got[0]


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

    def source(self, conv: Any) -> Any | None:
        """The DequantizeLinear the conv reads its bias from, None where the bias is an initializer."""
        return self.dq.get(conv.input[2])

    def shift(self, conv: Any, delta: np.ndarray) -> None:
        from onnx import numpy_helper

        name = conv.input[2]
        if name in self.inits:
            t = self.inits[name]
            t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) + delta).astype(np.float32), t.name))
            return
        q, scale = self.inits[self.dq[name].input[0]], numpy_helper.to_array(self.inits[self.dq[name].input[1]])
        with np.errstate(divide="ignore", invalid="ignore"):  # a dead channel's bias scale can be 0 or tiny
            steps = np.nan_to_num(np.round(delta / scale), nan=0.0)
        steps = np.clip(steps, -2 ** 31, 2 ** 31 - 1).astype(np.int64)
        values = numpy_helper.to_array(q).astype(np.int64) + steps
        q.CopyFrom(numpy_helper.from_array(np.clip(values, -2 ** 31, 2 ** 31 - 1).astype(np.int32), q.name))
