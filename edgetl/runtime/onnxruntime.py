"""ONNX Runtime runner: CPU everywhere, CUDA where onnxruntime-gpu is installed.

INT8 files run either with ORT's integer kernels, made overflow-safe for this CPU, or ``simulated``
(Q/DQ in float): see ``numerics``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import DISTRIBUTION
from ..artifacts.manifest import precision_of
from ..errors import ArtifactError, UsageError


def simulating(opts: Any, fast: bool = False) -> dict[str, str]:
    """Set ONNX Runtime session options ``opts`` to run Q/DQ nodes as float ops, the numerics TensorRT
    approximates, and return the session config entries set. Reported accuracy and bias correction
    both simulate through here, so they cannot drift apart. Not at ORT_ENABLE_ALL unless ``fast``:
    its NCHWc convolutions round differently and flip quantization steps."""
    import onnxruntime as ort

    from .numerics import SIMULATE_CONFIG

    if not fast:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    for key, value in SIMULATE_CONFIG.items():
        opts.add_session_config_entry(key, value)
    return dict(SIMULATE_CONFIG)


class OrtRunner:
    backend = "onnxruntime"

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None, own: bool = False,
                 simulate: bool = False, fast: bool = False) -> None:
        """``own``: a file this process just wrote (export, calibration probes), so the safety check is skipped.
        ``simulate``: run Q/DQ nodes as float ops, the numerics TensorRT approximates, on any CPU; with
        ``fast``, on ORT's NCHWc kernels (3x faster, but float rounding then flips a few quantization
        steps: for ranking layers, not for reported accuracy)."""
        import onnxruntime as ort

        from .numerics import ORT_CPU, ORT_CUDA, SIMULATED, int8_layout, kernel_config

        self.path = Path(path)
        self.device = device
        self.threads = threads
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UsageError(f"ONNX Runtime has no CUDA provider here; pip install '{DISTRIBUTION}[gpu]' (onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        if not own:
            from ..artifacts.onnx import check_onnx_file

            check_onnx_file(self.path)  # before ONNX Runtime parses anything: damaged graph, external data outside the folder
        self.int8_layout = int8_layout(self.path)
        self.session_config: dict[str, str] = {}
        if simulate:
            self.session_config = simulating(opts, fast)
        elif self.int8_layout and device == "cpu":
            self.session_config = kernel_config(path=self.path)
            for key, value in self.session_config.items():
                opts.add_session_config_entry(key, value)
        self.numerics = SIMULATED if simulate else ORT_CUDA if device == "cuda" else ORT_CPU
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ArtifactError(f"{self.path}: ONNX Runtime cannot load it ({first})") from e
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise UsageError(f"{self.path}: ONNX Runtime's CUDA provider failed to load (missing CUDA/cuDNN "
                             "libraries?); `edgetl doctor` says which")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = inp.shape
        self.output_name = self.session.get_outputs()[0].name
        self.precision = "int8" if self.int8_layout else precision_of(self.path.name)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0].astype(np.float32)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
