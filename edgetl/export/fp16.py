"""FP16 ONNX: float16 weights and compute behind float32 inputs and outputs, checked against FP32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..fileio import atomic_write_bytes

MIN_FP16_AGREEMENT = 0.97  # top-1 agreement of FP16 vs FP32 on the verification images


def to_fp16(src: Path, dst: Path) -> None:
    """float16 weights and compute, float32 inputs and outputs (casts at the edges)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _toposort(half.graph)
    onnx.checker.check_model(half)
    atomic_write_bytes(dst, half.SerializeToString())


def _toposort(graph: Any) -> None:
    """The converter appends its input casts at the end of the node list; the checker wants order."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ArtifactError(f"FP16 graph has a cycle or a dangling input at node {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
