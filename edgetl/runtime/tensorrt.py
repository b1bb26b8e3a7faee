"""TensorRT runner: checks an engine's provenance against this machine, then runs it with cuda-python.

No PyTorch (a Jetson deployment has none). Uses the name-based I/O API (``num_io_tensors``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), the one API that exists in
TensorRT 8.5, 10 and 11.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np

from ..errors import ArtifactError, EdgetlError, UsageError
from ..tensorrt import check_engine, current_environment, load_engine_meta, rebuild_command
from ._trt import DeviceBuffer, cuda_call, cudart, import_tensorrt, last_error, logger


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
        self._stream = cuda_call(cudart().cudaStreamCreate(), "cudaStreamCreate")

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
        ctx.set_tensor_address(self._input, self._buffers[self._input].upload(host, self._stream))
        outputs = {}
        for name in self._outputs:
            out = np.empty(tuple(int(d) for d in ctx.get_tensor_shape(name)), dtype=self._dtypes[name])
            ctx.set_tensor_address(name, self._buffers[name].ensure(max(out.nbytes, 1)))
            outputs[name] = out
        if not ctx.execute_async_v3(int(self._stream)):
            raise EdgetlError(f"{self.path}: TensorRT inference failed ({last_error() or 'see messages above'})")
        logits = outputs[self._outputs[0]]
        self._buffers[self._outputs[0]].download(logits, self._stream)
        cuda_call(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return logits[:n].astype(np.float32, copy=False)

    def close(self) -> None:
        """Free device memory and the stream; the context goes before the engine, the engine before the runtime."""
        if getattr(self, "_stream", None) is not None:
            cudart().cudaStreamSynchronize(self._stream)
        for buf in getattr(self, "_buffers", {}).values():
            buf.free()
        if getattr(self, "_stream", None) is not None:
            cudart().cudaStreamDestroy(self._stream)
        self._stream = self._context = self._engine = self._runtime = None
