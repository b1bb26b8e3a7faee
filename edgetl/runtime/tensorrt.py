"""TensorRT in the runtime: importing it with a clear error, one logger, the machine facts an engine's
provenance is checked against, and `TrtRunner`, which checks an engine's provenance and then runs it.

No PyTorch (a Jetson deployment has none), and nothing heavy at import: tensorrt and cuda-python are
imported inside functions. The runner uses the name-based I/O API (``num_io_tensors``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), the one API that exists in
TensorRT 8.5, 10 and 11.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..artifacts.engine import check_engine, load_engine_meta, rebuild_command
from ..errors import ArtifactError, EdgetlError, UsageError, one_line
from .cuda import INSTALL_HINT, DeviceBuffer, cuda_call, cudart, gpu_info

MIN_TRT = (8, 5)

_logger: Any = None


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a UsageError that says how to install it."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as e:
        raise UsageError(f"tensorrt is not installed: {INSTALL_HINT}") from e
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



def available() -> tuple[bool, str]:
    """Whether engines can be built and run here: tensorrt imports and a CUDA GPU is visible.

    The string is the reason when not (with the install hint), else what was found.
    """
    try:
        trt = import_tensorrt()
        name, cc = gpu_info()
    except EdgetlError as e:
        return False, str(e)
    return True, f"TensorRT {trt.__version__} on {name} (compute capability {cc})"


def current_environment() -> dict[str, str]:
    """The values an engine's provenance is checked against: TensorRT version, GPU name, compute capability."""
    trt = import_tensorrt()
    name, cc = gpu_info()
    return {"tensorrt_version": str(trt.__version__), "gpu": name, "compute_capability": cc}


class TrtRunner:
    """One engine on the current CUDA device with its own stream; device buffers grow with the batch.

    Batches larger than the engine's maximum are run in chunks; a chunk smaller than its minimum (a
    fixed-batch engine) is padded by repeating the last image and the padding is cut from the output.
    Engines with FP16 input or output take and return float32 here; the conversion happens on the host.
    """

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        meta = load_engine_meta(self.path)  # no provenance, no deserialization
        env = current_environment()
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise ArtifactError(f"{self.path}: cannot read it ({e.strerror or e})") from e
        check_engine(self.path, meta, data=data, **env)
        self.precision = str(meta.get("precision") or "fp32")
        self.meta = meta

        trt = import_tensorrt()
        log = logger(trt)
        log.last_error = ""
        self._runtime = trt.Runtime(log)
        if meta.get("dla_core") is not None:
            self._runtime.DLA_core = int(meta["dla_core"])
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise ArtifactError(f"{self.path}: TensorRT {trt.__version__} cannot deserialize it "
                                f"({last_error() or 'see the TensorRT messages above'}); "
                                f"rebuild it: {rebuild_command(self.path, meta)}")
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not self._outputs:
            raise ArtifactError(f"{self.path}: has {len(inputs)} inputs and {len(self._outputs)} outputs; "
                                f"an edgetl classifier engine has one image input and a logits output")
        self._input = inputs[0]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.input_shape = tuple(int(d) for d in engine.get_tensor_shape(self._input))
        if self.input_shape[0] >= 0:
            self.min_batch = self.max_batch = self.input_shape[0]
        else:
            low, _, high = engine.get_tensor_profile_shape(self._input, 0)
            self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EdgetlError(f"{self.path}: TensorRT could not create an execution context "
                              f"({last_error() or 'out of GPU memory?'})")
        self._buffers = {n: DeviceBuffer() for n in names}
        self.stream = cuda_call(cudart().cudaStreamCreate(), "cudaStreamCreate")

    def run(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW batch in, float32 logits out; any batch size."""
        if self._context is None:
            raise UsageError(f"{self.path}: runner is closed")
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape[1:] or len(x) == 0:
            want = " x ".join(map(str, self.input_shape[1:]))
            raise UsageError(f"{self.path}: takes a non-empty N x {want} batch, got shape {tuple(x.shape)}")
        return np.concatenate([self._run_chunk(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n < self.min_batch:
            x = np.concatenate([x, np.repeat(x[-1:], self.min_batch - n, axis=0)])
        host = np.ascontiguousarray(x, dtype=self._dtypes[self._input])
        ctx = self._context
        if not ctx.set_input_shape(self._input, tuple(host.shape)):
            raise UsageError(f"{self.path}: input shape {tuple(host.shape)} is outside the engine's profile "
                             f"(batch {self.min_batch}..{self.max_batch})")
        ctx.set_tensor_address(self._input, self._buffers[self._input].upload(host, self.stream))
        outputs = {}
        for name in self._outputs:
            out = np.empty(tuple(int(d) for d in ctx.get_tensor_shape(name)), dtype=self._dtypes[name])
            ctx.set_tensor_address(name, self._buffers[name].ensure(max(out.nbytes, 1)))
            outputs[name] = out
        if not ctx.execute_async_v3(int(self.stream)):
            raise EdgetlError(f"{self.path}: TensorRT inference failed ({last_error() or 'see messages above'})")
        logits = outputs[self._outputs[0]]
        self._buffers[self._outputs[0]].download(logits, self.stream)
        cuda_call(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return logits[:n].astype(np.float32, copy=False)

    @property
    def input_name(self) -> str:
        return self._input

    def resident(self, batches: list[np.ndarray], cuda_graph: bool = False) -> Resident:
        """``batches`` (one batch size) copied to the GPU once, each with its own output buffers: the
        engine timed alone, as trtexec's --noDataTransfers does. See `Resident`."""
        return Resident(self, batches, cuda_graph)

    def inspect(self, batch: int) -> Any:
        """The engine inspector's JSON at ``batch`` (layer names only unless it was built with DETAILED
        verbosity). The context's input shape is set first: without it a dynamic-batch engine's tensor
        formats, and so its layers' precisions, are left out."""
        trt = import_tensorrt()
        if not self._context.set_input_shape(self._input, (batch, *self.input_shape[1:])):
            raise UsageError(f"{self.path}: batch {batch} is outside the engine's profile")
        inspector = self._engine.create_engine_inspector()
        inspector.execution_context = self._context
        return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))

    def profile(self, batch: int, iterations: int) -> list[dict[str, Any]]:
        """Per-layer GPU times over ``iterations`` runs of one zero batch, through TensorRT's IProfiler, as
        trtexec's --exportProfile records ({"count"}, then name/timeMs/averageMs/medianMs/percentage)."""
        trt = import_tensorrt()
        times: dict[str, list[float]] = {}

        class _Profiler(trt.IProfiler):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                times.setdefault(str(layer_name), []).append(float(ms))

        resident = self.resident([np.zeros((batch, *self.input_shape[1:]), dtype=np.float32)])
        try:
            resident.launch(0)  # untimed: TensorRT's first-run setup
            cuda_call(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
            self._context.profiler = _Profiler()  # with a profiler each enqueue reports, synchronously
            for i in range(iterations):
                resident.launch(i)
            cuda_call(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        finally:
            self._context.profiler = None
            resident.free()
        total = sum(sum(v) for v in times.values()) or 1.0
        return [{"count": iterations}] + [
            {"name": name, "timeMs": sum(v), "averageMs": sum(v) / len(v), "medianMs": float(np.median(v)),
             "percentage": 100 * sum(v) / total} for name, v in times.items()]

    def close(self) -> None:
        """Free device memory and the stream; the context goes before the engine, the engine before the runtime."""
        if getattr(self, "stream", None) is not None:
            cudart().cudaStreamSynchronize(self.stream)
        for buf in getattr(self, "_buffers", {}).values():
            buf.free()
        if getattr(self, "stream", None) is not None:
            cudart().cudaStreamDestroy(self.stream)
        self.stream = self._context = self._engine = self._runtime = None


class Resident:
    """Device-resident input batches for timing one engine at one batch size, rotated over so that no
    batch is served from a warm cache; ``launch(i)`` enqueues batch ``i % n`` on the runner's stream and
    returns at once. With ``cuda_graph`` each batch's enqueue is captured once in a CUDA graph, which
    is launched instead (``graph_error`` says why when capture failed and plain enqueues are used)."""

    def __init__(self, runner: TrtRunner, batches: list[np.ndarray], cuda_graph: bool) -> None:
        self.runner = runner
        self.stream = runner.stream
        self.batch = len(batches[0])
        if not runner.min_batch <= self.batch <= runner.max_batch:
            raise UsageError(f"{runner.path}: batch {self.batch} is outside the engine's range "
                             f"{runner.min_batch}..{runner.max_batch}")
        ctx, dtype = runner._context, runner._dtypes[runner._input]
        self.slots: list[dict[str, DeviceBuffer]] = []
        for x in batches:
            host = np.ascontiguousarray(x, dtype=dtype)
            if not ctx.set_input_shape(runner._input, tuple(host.shape)):
                raise UsageError(f"{runner.path}: input shape {tuple(host.shape)} is outside the engine's profile")
            slot = {runner._input: DeviceBuffer()}
            slot[runner._input].upload(host)
            for name in runner._outputs:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
                slot[name] = DeviceBuffer()
                slot[name].ensure(max(int(np.prod(shape)) * runner._dtypes[name].itemsize, 1))
            self.slots.append(slot)
        self.graphs: list[Any] = []
        self.graph_error: str | None = None
        if cuda_graph:
            self._capture()

    def _bind(self, i: int) -> None:
        ctx, runner = self.runner._context, self.runner
        ctx.set_input_shape(runner._input, (self.batch, *runner.input_shape[1:]))
        for name, buf in self.slots[i % len(self.slots)].items():
            ctx.set_tensor_address(name, buf.ptr)

    def _enqueue(self, i: int) -> bool:
        self._bind(i)
        return bool(self.runner._context.execute_async_v3(int(self.stream)))

    def _capture(self) -> None:
        from .cuda import CudaGraph

        try:
            for i in range(len(self.slots)):
                if not self._enqueue(i):  # the uncaptured first enqueue (TensorRT's lazy setup)
                    raise EdgetlError(f"TensorRT inference failed ({last_error() or 'see messages above'})")
                cuda_call(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
                self.graphs.append(CudaGraph(self.stream, lambda i=i: self._enqueue(i)))
        except EdgetlError as e:
            cudart().cudaGetLastError()  # a refused capture leaves its error set; plain enqueues follow
            self.close()
            self.graph_error = one_line(e)

    def launch(self, i: int) -> None:
        if self.graphs:
            self.graphs[i % len(self.graphs)].launch()
        elif not self._enqueue(i):
            raise EdgetlError(f"{self.runner.path}: TensorRT inference failed ({last_error() or 'see messages above'})")

    def close(self) -> None:
        for g in self.graphs:
            g.close()
        self.graphs = []

    def free(self) -> None:
        self.close()
        for slot in self.slots:
            for buf in slot.values():
                buf.free()
        self.slots = []
