"""The physical limit next to the measurement: this machine's matrix-multiply peak and a model's FLOPs.

A latency number alone does not say whether a backend is good or just on fast hardware; achieved
GFLOP/s as a fraction of what this machine's best matrix multiply reaches does. The peak is measured,
not looked up: a VM's cores, its clock and the libraries installed decide it, not the CPU's data sheet.

FLOPs are counted from the FP32 ONNX graph (Conv, ConvTranspose, Gemm, MatMul; 2 FLOPs per
multiply-accumulate) at batch 1, with ONNX Runtime, so this works without PyTorch. Element-wise
work (activations, BatchNorm left unfolded, pooling) is not counted: it is memory-bound, and the
matrix-multiply roof is the one these layers can reach.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError
from .runtime.numerics import cpu_flags

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
PEAK_SECONDS = 1.0  # per measurement: the best of as many repetitions as fit (a neighbour may steal some)
# Without one of these, bf16 matrix multiplies are emulated in fp32 and there is no bf16 roof to report.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@dataclass
class FlopCount:
    """FLOPs of one image (batch 1), in total and per operator type."""

    flops: int
    by_op: dict[str, int] = field(default_factory=dict)


def count_flops(onnx_path: Path) -> FlopCount:
    """2 x multiply-accumulates of every Conv/ConvTranspose/Gemm/MatMul for one image.

    Shapes come from one ONNX Runtime pass at batch 1 with every operand exposed as an output:
    ONNX shape inference cannot follow padding that the graph computes at run time (the Pad in front
    of timm's 'same' convolutions is fed by ConstantOfShape/Concat/Slice chains).
    """
    import onnx
    import onnxruntime as ort

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise ArtifactError(f"{path}: cannot read the ONNX graph to count FLOPs ({e})") from e
    shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in MAC_OPS]
    wanted = {t for n in nodes for t in (*n.input[:2], n.output[0]) if t and t not in shapes}
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in sorted(wanted - known))
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if any(d <= 0 for d in dims[1:]):
        raise ArtifactError(f"{path}: input {inp.name!r} has no fixed C x H x W; FLOPs cannot be counted")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor name
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        values = sess.run(names, {inp.name: np.zeros([1, *dims[1:]], dtype=dtype)})
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise ArtifactError(f"{path}: ONNX Runtime cannot run it to count FLOPs ({str(e).splitlines()[0][:160]})") from e
    shapes.update({n: list(v.shape) for n, v in zip(names, values)})
    by_op: dict[str, int] = {}
    for node in nodes:
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * _macs(node, shapes)
    return FlopCount(sum(by_op.values()), by_op)


def _macs(node: Any, shapes: dict[str, list[int]]) -> int:
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":  # W: [C_out, C_in/groups, k...]; each output element costs C_in/groups * k... MACs
        w = shapes[node.input[1]]
        return int(np.prod(shapes[node.output[0]])) * int(np.prod(w[1:]))
    if node.op_type == "ConvTranspose":  # W: [C_in, C_out/groups, k...]; each input element scatters C_out/groups * k...
        w = shapes[node.input[1]]
        return int(np.prod(shapes[node.input[0]])) * int(np.prod(w[1:]))
    if node.op_type == "Gemm":
        a, b = shapes[node.input[0]], shapes[node.input[1]]
        m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
        n = b[0] if attrs.get("transB", 0) else b[1]
        return m * n * k
    a, out = shapes[node.input[0]], shapes[node.output[0]]  # MatMul: [..., M, K] x [..., K, N]
    return int(np.prod(out)) * a[-1]


# --- peaks ----------------------------------------------------------------------------------------

def measure_peaks(threads: int, cuda: bool) -> dict[str, dict[str, dict[str, Any]]]:
    """Best matrix-multiply GFLOP/s per device and data type: ``{"cpu": {"fp32": {"gflops", "method"}}, ...}``.

    CPU fp32: the better of ONNX Runtime's MatMul and torch.mm; int8: ONNX Runtime's MatMulInteger
    (u8 x s8, the kernel its quantized convolutions use); bf16: torch.mm where the CPU has bf16
    instructions. CUDA (with PyTorch): fp32, fp16, bf16 and int8 (torch._int_mm).
    """
    cpu = {"fp32": _best([_ort_matmul("float32", 1024, threads), _torch_mm("float32", 1024, threads, "cpu")]),
           "int8": _ort_matmul("int8", 1024, threads),
           "bf16": _torch_mm("bfloat16", 1024, threads, "cpu") if cpu_flags() & BF16_FLAGS else None}
    peaks = {"cpu": {k: v for k, v in cpu.items() if v}}
    if cuda:
        gpu = {dt: _torch_mm(dt, 4096, threads, "cuda") for dt in ("float32", "float16", "bfloat16", "int8")}
        peaks["cuda"] = {_short(dt): v for dt, v in gpu.items() if v}
    return peaks


def peak_for(peaks: dict[str, dict[str, dict[str, Any]]], device: str, precision: str) -> tuple[str, float] | None:
    """The roof a row is judged against: INT8 rows against the int8 peak, FP16 against fp16 on a GPU and
    against fp32 on a CPU (ONNX Runtime's CPU provider computes FP16 graphs in FP32 between casts)."""
    table = peaks.get(device, {})
    kind = precision if precision == "int8" or (precision == "fp16" and device == "cuda") else "fp32"
    if kind not in table:
        return None
    return kind, float(table[kind]["gflops"])


def _short(dtype: str) -> str:
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8"}[dtype]


def _best(candidates: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    found = [c for c in candidates if c]
    return max(found, key=lambda c: c["gflops"]) if found else None


def _repeat(fn: Any, flops: float, sync: Any = None) -> float:
    """Best GFLOP/s of ``fn()`` over PEAK_SECONDS after two warm-up calls."""
    fn()
    fn()
    if sync:
        sync()
    best = float("inf")
    end = time.perf_counter() + PEAK_SECONDS
    while time.perf_counter() < end or best == float("inf"):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def _ort_matmul(dtype: str, n: int, threads: int) -> dict[str, Any]:
    """A one-node ONNX graph: MatMul (float32) or MatMulInteger (uint8 x int8 -> int32)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    if dtype == "int8":
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 127, (n, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        types = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
        method = f"onnxruntime MatMulInteger u8s8 {n}x{n}"
    else:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        types = (TensorProto.FLOAT,) * 3
        method = f"onnxruntime MatMul fp32 {n}x{n}"
    graph = helper.make_graph([node], "peak",
                              [helper.make_tensor_value_info("a", types[0], [n, n]),
                               helper.make_tensor_value_info("b", types[1], [n, n])],
                              [helper.make_tensor_value_info("c", types[2], [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"a": a, "b": b}
    gflops = _repeat(lambda: sess.run(None, feed), 2.0 * n ** 3)
    return {"gflops": round(gflops, 1), "method": method, "threads": threads}


def _torch_mm(dtype: str, n: int, threads: int, device: str) -> dict[str, Any] | None:
    """torch.mm (torch._int_mm for int8); None without PyTorch or where the type has no kernel here."""
    try:
        import torch
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    if device == "cpu":
        torch.set_num_threads(threads)
    g = torch.Generator(device="cpu").manual_seed(0)
    try:
        if dtype == "int8":
            a = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=g).to(device)
            b = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=g).to(device)
            fn = lambda: torch._int_mm(a, b)  # noqa: E731
        else:
            t = getattr(torch, dtype)
            a = torch.randn(n, n, generator=g).to(device, t)
            b = torch.randn(n, n, generator=g).to(device, t)
            fn = lambda: torch.mm(a, b)  # noqa: E731
        with torch.inference_mode():
            gflops = _repeat(fn, 2.0 * n ** 3, torch.cuda.synchronize if device == "cuda" else None)
    except RuntimeError:  # no kernel for this type on this device
        return None
    return {"gflops": round(gflops, 1), "method": f"torch.{'_int_mm' if dtype == 'int8' else 'mm'} {_short(dtype)} "
                                                  f"{n}x{n} on {device}", "threads": threads if device == "cpu" else None}
