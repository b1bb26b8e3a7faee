"""CUDA plumbing for the TensorRT runner and builder, through cuda-python (``cudart``), not PyTorch:
a Jetson deployment has no PyTorch. Importing this module imports nothing heavy."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import numpy as np

from .. import DISTRIBUTION
from ..errors import EdgetlError, UsageError

INSTALL_HINT = f"pip install '{DISTRIBUTION}[trt]'"


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
        raise UsageError(f"cuda-python is not installed: {INSTALL_HINT} (or pip install cuda-python)") from e


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




class EventTimer:
    """GPU time of the work enqueued on ``stream`` between two CUDA events, and the host's wall time of
    the same call (enqueue to completion), as trtexec measures with --useSpinWait: completion is polled
    rather than waited for, so the host clock is not stretched by the driver's sleep."""

    def __init__(self, stream: Any) -> None:
        rt = cudart()
        self.stream = stream
        self.start = cuda_call(rt.cudaEventCreate(), "cudaEventCreate")
        self.end = cuda_call(rt.cudaEventCreate(), "cudaEventCreate")

    def time(self, enqueue: Any) -> tuple[float, float]:
        """(GPU ms, host ms) of one ``enqueue()``, which only enqueues work on the stream."""
        rt = cudart()
        not_ready = rt.cudaError_t.cudaErrorNotReady
        t0 = time.perf_counter_ns()
        cuda_call(rt.cudaEventRecord(self.start, self.stream), "cudaEventRecord")
        enqueue()
        cuda_call(rt.cudaEventRecord(self.end, self.stream), "cudaEventRecord")
        while True:
            (err,) = rt.cudaEventQuery(self.end)
            if err != not_ready:
                cuda_call((err,), "cudaEventQuery")
                break
        host = (time.perf_counter_ns() - t0) / 1e6
        return float(cuda_call(rt.cudaEventElapsedTime(self.start, self.end), "cudaEventElapsedTime")), host

    def close(self) -> None:
        rt = cudart()
        for event in (self.start, self.end):
            rt.cudaEventDestroy(event)


class CudaGraph:
    """The work one ``enqueue()`` puts on ``stream``, captured once into a CUDA graph and then launched
    as one unit (trtexec's --useCudaGraph). Enqueue once, uncaptured, before: TensorRT does its
    first-run allocations then, and those may not be captured."""

    def __init__(self, stream: Any, enqueue: Any) -> None:
        rt = cudart()
        self.stream = stream
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_call(rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            ok = enqueue()
        except BaseException:
            err, graph = rt.cudaStreamEndCapture(stream)  # end the capture, keep the enqueue's own error
            if err == rt.cudaError_t.cudaSuccess:
                rt.cudaGraphDestroy(graph)
            raise
        graph = cuda_call(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            if ok is False:
                raise EdgetlError("the enqueue cannot be captured in a CUDA graph (TensorRT refused it)")
            # ...WithFlags: one signature, (graph, flags) -> (err, exec), in cuda-python 11, 12 and 13
            self.exec = cuda_call(rt.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
        finally:
            rt.cudaGraphDestroy(graph)

    def launch(self) -> None:
        cuda_call(cudart().cudaGraphLaunch(self.exec, self.stream), "cudaGraphLaunch")

    def close(self) -> None:
        cudart().cudaGraphExecDestroy(self.exec)
