"""ONNX Runtime runner: CPU everywhere, CUDA where onnxruntime-gpu is installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError, UsageError


class OrtRunner:
    backend = "onnxruntime"

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None, own: bool = False) -> None:
        """``own``: a file this process just wrote (export, calibration probes), so the safety check is skipped."""
        import onnxruntime as ort

        self.path = Path(path)
        self.device = device
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UsageError("ONNX Runtime has no CUDA provider here; pip install 'edgetl[gpu]' (onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        if not own:
            from ..onnx_check import check_onnx_file

            check_onnx_file(self.path)  # before ONNX Runtime parses anything: damaged graph, external data outside the folder
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
        self.precision = _precision_of(self.path.name)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0].astype(np.float32)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


def _precision_of(name: str) -> str:
    if ".int8" in name:
        return "int8"
    if ".fp16" in name:
        return "fp16"
    return "fp32"
