"""Which numbers an INT8 ONNX file gives on this machine, and how to get honest ones.

Why this exists: ONNX Runtime's x86 u8s8 integer kernels multiply with ``vpmaddubsw``, which
saturates at int16 on CPUs without VNNI (AVX2-only EPYCs, AVX-512 without VNNI). There, the
TensorRT-layout file (signed activations, shifted to u8 by ORT) lost 70 points on digits while the
same graph simulated in float lost none. So:

- ``simulated``: Q/DQ run as float ops (``session.disable_quant_qdq=1`` at ORT_ENABLE_EXTENDED,
  bit-identical to ORT_DISABLE_ALL; ORT_ENABLE_ALL's NCHWc convolutions round differently). This is
  how every accuracy figure of the TensorRT artifact is computed on a CPU: TensorRT accumulates
  int8 x int8 in int32 and does not saturate like this.
- ``onnxruntime-cpu``: ORT's own integer kernels, with ``session.x64quantprecision=1`` (U8U8 where
  u8s8 can overflow) on CPUs whose kernels can saturate. It is not set elsewhere: on this project's
  AMX Xeon it made the CPU artifact 1.6x slower for identical accuracy (RESULTS.md). Nor is it set for
  an ``int16_safe`` file, such as export's model.int8-cpu.onnx: its per-channel weight scales keep every
  pair of weights that the kernels add in int16 within 128 in magnitude (255 x 128 = 32640 fits), so
  ORT's fast u8s8 kernels run it exactly on every CPU. (ORT's own setting would send any tensor with a
  weight beyond +-64 to the slower U8U8 kernels, safe or not.)

The instruction set is read from /proc/cpuinfo. ``EDGETL_INT8_ISA`` overrides it where that file does not
show what ONNX Runtime's CPUID check sees: under an emulator such as ``qemu-x86_64 -cpu EPYC-Rome`` (an
AVX2-only EPYC, whose saturation QEMU reproduces), /proc/cpuinfo still lists the host's flags.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UsageError
from ..machine import cpu_flags

if TYPE_CHECKING:
    from .base import Runner

SIMULATED = "simulated"
ORT_CPU = "onnxruntime-cpu"
ORT_CUDA = "onnxruntime-cuda"
TENSORRT = "tensorrt"
SIMULATE_CONFIG = {"session.disable_quant_qdq": "1"}
SAFE_KERNEL_CONFIG = {"session.x64quantprecision": "1"}
ISA_OVERRIDE = "EDGETL_INT8_ISA"
ISAS = ("amx", "avx512-vnni", "avx-vnni", "avx512", "avx2", "sse", "arm64-i8mm", "arm64-dotprod", "arm64")


def int8_isa(flags: set[str] | None = None, machine: str | None = None) -> str:
    """The instruction set ONNX Runtime's INT8 kernels use here: amx, avx512-vnni, avx-vnni, avx512,
    avx2, sse (x86), arm64-i8mm, arm64-dotprod, arm64 (Arm), or the machine name; ``EDGETL_INT8_ISA``
    when set (see the module's docstring)."""
    override = os.environ.get(ISA_OVERRIDE)
    if override:
        if override not in ISAS:
            raise UsageError(f"{ISA_OVERRIDE}={override!r} is not an INT8 instruction set edgetl knows: "
                             f"use one of {', '.join(ISAS)}, or unset it")
        return override
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "arm64-i8mm" if "i8mm" in flags else "arm64-dotprod" if "asimddp" in flags else "arm64"
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return machine
    for isa, flag in (("amx", "amx_int8"), ("avx512-vnni", "avx512_vnni"), ("avx-vnni", "avx_vnni"),
                      ("avx512", "avx512bw"), ("avx2", "avx2")):
        if flag in flags:
            return isa
    return "sse"


def int8_can_saturate(isa: str) -> bool:
    """True where ORT's u8s8 kernels use an int16 intermediate: x86 without VNNI (MLAS's own rule)."""
    return isa in ("avx512", "avx2", "sse")


def kernel_config(isa: str | None = None, path: Path | None = None) -> dict[str, str]:
    """The session config an INT8 model (``path``, where known) needs on this CPU for kernels that do not
    overflow: none with VNNI, none for an ``int16_safe`` file."""
    if not int8_can_saturate(isa or int8_isa()) or (path is not None and int16_safe(path)):
        return {}
    return dict(SAFE_KERNEL_CONFIG)


PAIR_LIMIT = 128  # 255 x 128 = 32640: two u8 x s8 products whose same-sign weights add up to this fit in int16


def paired_weights(graph: Any) -> dict[str, str]:
    """The weight initializers (behind DequantizeLinear in a Q/DQ graph) of every Conv but depthwise ones,
    Gemm and MatMul, each with the op that reads it (GemmT: a Gemm with transB). ONNX Runtime's x86
    u8s8 GEMM and convolution kernels add their products in pairs with vpmaddubsw where there is no
    VNNI, while its depthwise kernels widen to int32 first (MLAS qdwconv_avx2.cpp) and cannot saturate.
    Those take only one input and one output channel per group: a depth multiplier of 2 goes through
    the GEMM (and saturated on the emulated AVX2 EPYC)."""
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    found = {}
    for n in graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        weight = dequantized.get(n.input[1], n.input[1])
        if weight not in inits:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if n.op_type == "Conv" and 1 < group == inits[weight][0] and inits[weight][1] == 1:  # depthwise
            continue
        trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
        found[weight] = "GemmT" if n.op_type == "Gemm" and trans_b else n.op_type
    return found


def k_rows(w: np.ndarray, op: str) -> np.ndarray:
    """One row per output channel, in the order ONNX Runtime's x86 kernels walk the reduction (K): for a
    convolution kernel position, then input channel (MLAS packs NHWC-style); padded to an even length.
    Consecutive pairs (0,1), (2,3), ... are what vpmaddubsw adds in int16."""
    rows = (w.transpose(0, *range(2, w.ndim), 1).reshape(w.shape[0], -1) if op == "Conv"
            else w if op == "GemmT" else w.T)
    return np.pad(rows, ((0, 0), (0, rows.shape[1] % 2)))


def pair_sums(q: np.ndarray) -> np.ndarray:
    """|q_2i + q_2i+1| for each pair of each row of ``k_rows`` output: with u8 activations a in [0, 255],
    a_2i q_2i + a_2i+1 q_2i+1 reaches 255 x |q_2i + q_2i+1| when the two weights share a sign, and stays
    within 255 x 128 when they do not (one product is then at most 0). Only same-sign pairs saturate."""
    q = q.astype(np.int32)
    return np.abs(q[:, 0::2] + q[:, 1::2])


def int16_safe(path: Path) -> bool:
    """True where no pair of INT8 weights that x86 u8s8 kernels add in int16 exceeds ``PAIR_LIMIT``: ORT's
    fast kernels cannot saturate on this file on any CPU, so it needs no session setting."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    for name, op in paired_weights(graph).items():
        if inits[name].data_location == onnx.TensorProto.EXTERNAL:  # not read here: assume the worst
            return False
        w = numpy_helper.to_array(inits[name])
        if w.dtype == np.int8 and (w.ndim != 2 and op == "MatMul"  # a batched weight: not walked here
                                   or pair_sums(k_rows(w, op)).max(initial=0) > PAIR_LIMIT):
            return False
    return True


def int8_layout(path: Path) -> str | None:
    """``tensorrt`` (signed activations, zero points 0), ``cpu`` (uint8 activations) or None (no Q/DQ)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    types = {t.name: t.data_type for t in graph.initializer}
    zps = [types.get(n.input[2]) for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    if not zps:
        return None
    return "cpu" if onnx.TensorProto.UINT8 in zps else "tensorrt"


def judging_runner(runner: Runner) -> tuple[Runner, str]:
    """The runner whose numbers count for accuracy, and which numerics those are. A TensorRT-layout INT8
    file on a CPU is judged in float simulation (what TensorRT approximates), never by the host's
    integer kernels; latency is still timed on ``runner``."""
    if runner.backend == "tensorrt":
        return runner, TENSORRT
    if runner.backend == "onnxruntime":
        if runner.int8_layout == "tensorrt" and runner.device == "cpu":
            from .onnxruntime import OrtRunner

            return OrtRunner(runner.path, threads=runner.threads, own=True, simulate=True), SIMULATED
        return runner, runner.numerics
    return runner, f"torch-{runner.device}"
