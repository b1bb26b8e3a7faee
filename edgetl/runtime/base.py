"""The runner interface every backend implements: normalized NCHW float32 in, logits out."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..artifacts.run import is_run
from ..errors import ArtifactError, UsageError


class Runner(Protocol):
    """One loaded model on one backend. ``run`` takes a float32 NCHW batch and returns float32 logits."""

    backend: str  # "torch" | "onnxruntime" | "tensorrt"
    precision: str  # "fp32" | "fp16" | "int8"
    device: str  # "cpu" | "cuda"

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def is_torch_artifact(path: Path) -> bool:
    """A checkpoint (``*.pt``) or a run folder: what only `edgetl.evaluate.open_runner` can open."""
    path = Path(path)
    return path.suffix == ".pt" or is_run(path)


def open_runner(path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
    """Pick the backend from the artifact: ``*.onnx`` → ONNX Runtime, ``*.engine`` → TensorRT. A PyTorch
    checkpoint is refused with a pointer to `edgetl.evaluate.open_runner`, which rebuilds the model."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such artifact")
    if path.suffix == ".onnx":
        from .onnxruntime import OrtRunner

        return OrtRunner(path, device=device, threads=threads)
    if path.suffix == ".engine":
        from .tensorrt import TrtRunner

        return TrtRunner(path)
    if is_torch_artifact(path):
        raise UsageError(f"{path}: a PyTorch checkpoint; open it with edgetl.evaluate.open_runner or "
                         "open_predictor (the deploy runtime does not load training code)")
    raise ArtifactError(f"{path}: unknown artifact type (expected .onnx, .engine, .pt or a run folder)")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
