"""TensorRT and CUDA plumbing shared by the engine builder and the runner.

Everything heavy is imported inside functions: importing this module costs nothing and works on a
machine without TensorRT, CUDA or PyTorch. Device memory goes through cuda-python (``cudart``), not
PyTorch, because a Jetson deployment has no PyTorch.
"""

from __future__ import annotations

import re
import sys
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import EdgetlError, UsageError, one_line

TRT_INSTALL_HINT = "pip install 'edgetl[trt]'"
MIN_TRT = (8, 5)

_logger: Any = None


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a UsageError that says how to install it."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as e:
        raise UsageError(f"tensorrt is not installed: {TRT_INSTALL_HINT}") from e
    except ImportError as e:  # installed, but its native libraries do not load
        raise UsageError(f"tensorrt cannot be imported ({one_line(e)})") from e
    if trt_version(trt)[:2] < MIN_TRT:
        raise UsageError(f"TensorRT {trt.__version__} is too old: edgetl needs TensorRT 8.5 or newer")
    return trt


def trt_version(trt: ModuleType) -> tuple[int, ...]:
    """``"10.3.0.26"`` → ``(10, 3, 0, 26)``; non-numeric suffixes (``"11.0.0b1"``) are cut off."""
    parts = []
    for p in str(trt.__version__).split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
        if m.end() != len(p):
            break
    return tuple(parts)


def logger(trt: ModuleType) -> Any:
    """One process-wide TensorRT logger: TensorRT warns when a builder and a runtime get different ones.

    It prints warnings and errors to stderr and remembers the last error, so a failed build or
    deserialization can name TensorRT's own reason in the one-line message.
    """
    global _logger
    if _logger is None:
        severity = trt.ILogger.Severity
        shown = (severity.INTERNAL_ERROR, severity.ERROR, severity.WARNING)
        errors = (severity.INTERNAL_ERROR, severity.ERROR)

        class _Logger(trt.ILogger):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.last_error = ""

            def log(self, sev: Any, msg: str) -> None:
                if sev in errors:
                    self.last_error = " ".join(str(msg).split())
                if sev in shown:
                    sys.stderr.write(f"[TensorRT] {msg}\n")

        _logger = _Logger()
    return _logger


def last_error() -> str:
    return _logger.last_error if _logger is not None else ""


def cudart() -> ModuleType:
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (cuda-python ≥ 12.6, the only path in 13)
    or ``cuda.cudart`` (older releases, e.g. the JetPack 5 era)."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime  # type: ignore[no-redef]
        return runtime
    except ImportError as e:
        raise UsageError(f"cuda-python is not installed: {TRT_INSTALL_HINT} (or pip install cuda-python)") from e


def cuda_call(result: tuple, what: str) -> Any:
    """Unpack cuda-python's ``(error, *values)`` return, raising EdgetlError with CUDA's error name."""
    err, *values = result
    rt = cudart()
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise EdgetlError(f"CUDA error in {what}: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_info() -> tuple[str, str]:
    """(name, compute capability as ``"8.7"``) of the current CUDA device; UsageError when there is none."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or not count:
        why = rt.cudaGetErrorName(err)[1] if err != rt.cudaError_t.cudaSuccess else b"0 devices"
        why = why.decode() if isinstance(why, bytes) else str(why)
        raise UsageError(f"no CUDA GPU is visible ({why})")
    device = cuda_call(rt.cudaGetDevice(), "cudaGetDevice")
    prop = cuda_call(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.strip("\x00").strip(), f"{prop.major}.{prop.minor}"


class DeviceBuffer:
    """A cudaMalloc'd block that grows on demand (it is only ever replaced by a larger one)."""

    def __init__(self) -> None:
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(cuda_call(cudart().cudaMalloc(nbytes), "cudaMalloc"))
            self.nbytes = nbytes
        return self.ptr

    def upload(self, host: np.ndarray, stream: Any = None) -> int:
        """Copy a C-contiguous array in; synchronous without a stream, ordered on ``stream`` with one."""
        rt = cudart()
        ptr = self.ensure(host.nbytes)
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            cuda_call(rt.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, kind), "cudaMemcpy")
        else:
            cuda_call(rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync")
        return ptr

    def download(self, host: np.ndarray, stream: Any) -> None:
        rt = cudart()
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(rt.cudaMemcpyAsync(host.ctypes.data, self.ptr, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def free(self) -> None:
        if self.ptr:
            cudart().cudaFree(self.ptr)
            self.ptr, self.nbytes = 0, 0


