"""`edgetl build`: TensorRT engines built from ONNX on the machine that runs them, each with a provenance
record (`edgetl.artifacts.engine` checks it before an engine is loaded).

Why it is shaped this way:

- Engines are not portable. TensorRT guarantees that an engine deserializes only with the exact
  TensorRT version it was built with, and its kernels are chosen for one GPU. So every engine gets a
  provenance record (``ENGINE.json`` next to it, or its entry in ``manifest.json``) holding its sha256,
  the TensorRT version, the GPU name and compute capability; ``artifacts.engine.check_engine`` compares them with
  the running machine *before* anything is deserialized, and the error ends with the exact
  ``edgetl build`` command that rebuilds the engine there. The version check is an exact string match
  of ``tensorrt.__version__`` (``10.3.0`` ≠ ``10.3.0.26`` ≠ ``10.7.0``): a patch release may change
  the serialization format, and a false refusal costs one rebuild while a false acceptance can crash.
- INT8 is explicit: the engine is built from the Q/DQ ``model.int8.onnx`` that ONNX Runtime already
  verified on the CPU, strongly typed wherever TensorRT allows it (10.x and 11.x): the ONNX alone
  decides each layer's precision, so engines built from one Q/DQ file on TensorRT 10 and 11 compute the
  same thing, and layers left unquantized run in the ONNX's FP32. ``weak_typing`` (`--weak-typing`)
  keeps TensorRT 8.5's only mode on 10.x: FP16 and INT8 flags, TensorRT free to run unquantized layers
  in FP16 (faster, but its choice). TensorRT 11 removed the FP16/INT8 builder flags and implicit
  calibration: an FP16 engine there needs ``model.fp16.onnx``.
- Implicit INT8 calibration (``IInt8EntropyCalibrator2`` with a calibration cache) stays for TensorRT
  8.x/10.x users who want it; TensorRT 11 refuses it with a UsageError.

``tensorrt`` and ``cuda-python`` are imported inside the functions that need them: importing this
module works on any machine and never imports torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import __version__, limits
from ..artifacts.engine import sidecar_path
from ..errors import ArtifactError, EdgetlError, UsageError
from ..fileio import atomic_write, atomic_write_json, sha256_file
from ..runtime.cuda import gpu_info
from ..runtime.tensorrt import import_tensorrt, last_error, logger, trt_version
from .calibrator import entropy_calibrator

PRECISIONS = ("fp32", "fp16", "int8")
PROFILE_ITERATIONS = 50


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str = "fp16",
    *,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 32,
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    timing_cache: Path | None = None,
    calibrator_batches: Iterable[np.ndarray] | None = None,
    calib_cache: Path | None = None,
    weak_typing: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    """Build a TensorRT engine from ``onnx_path``; write it and its ``ENGINE.json`` sidecar atomically.

    ``precision`` is what the engine is labelled and checked as:

    - ``"int8"``: ``onnx_path`` holds Q/DQ nodes (``model.int8.onnx``; explicit quantization, every
      TensorRT version), or it is the FP32 model and ``calibrator_batches`` feeds TensorRT's entropy
      calibrator (implicit calibration, TensorRT 8.x/10.x only; ``calib_cache`` is read when it exists
      and written after calibration).
    - ``"fp16"``: TensorRT 8.x/10.x set the FP16 flag on any ONNX. TensorRT 11 has no such flag and
      builds strongly typed networks, so the ONNX itself must be FP16 (``model.fp16.onnx``); an FP32
      ONNX is refused with a UsageError saying so.
    - ``"fp32"``: the ONNX as it is.

    Every input whose dim 0 is -1 gets one optimization profile (``min_batch``/``opt_batch``/``max_batch``);
    only the batch may be dynamic. ``dla_core`` runs layers on that DLA core with GPU fallback (Jetson).
    ``timing_cache`` is loaded when it exists (a cache from another TensorRT or GPU is replaced) and
    saved after the build. ``profile`` builds with DETAILED profiling verbosity and writes
    ``ENGINE.layers.json`` (`write_layer_profile`). Returns the sidecar dict.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    timing_cache = Path(timing_cache) if timing_cache is not None else None
    calib_cache = Path(calib_cache) if calib_cache is not None else None
    _check_build_args(onnx_path, engine_path, precision, min_batch, opt_batch, max_batch, workspace_mb, dla_core,
                      calibrator_batches is not None)
    trt = import_tensorrt()
    from ..artifacts.onnx import check_onnx_file

    check_onnx_file(onnx_path)  # TensorRT's parser follows external data paths without ONNX Runtime's checks
    version = trt_version(trt)
    strongly_typed = typed_strongly(version, _has_qdq(onnx_path), weak_typing, dla_core)
    if calibrator_batches is not None and version[0] >= 11:
        raise UsageError(
            f"TensorRT {trt.__version__} has no implicit INT8 calibration (removed in TensorRT 11): build the "
            f"Q/DQ model.int8.onnx that `edgetl export --int8` writes, with --int8 and without --calib")
    gpu, cc = gpu_info()

    log = logger(trt)
    log.last_error = ""
    builder = trt.Builder(log)
    network = builder.create_network(_network_flags(trt, version, strongly_typed))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        raise ArtifactError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it ({_parser_errors(parser)})")
    input_name, input_shape = _single_input(network, onnx_path)
    has_qdq, has_half = _network_types(trt, network)
    calibration = _calibration_mode(onnx_path, precision, has_qdq, has_half, calibrator_batches is not None,
                                    version[0] >= 11, str(trt.__version__))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if profile:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not strongly_typed and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if not strongly_typed and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if input_shape[0] == -1:
        shapes = builder.create_optimization_profile()
        rest = input_shape[1:]
        shapes.set_shape(input_name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
        config.add_optimization_profile(shapes)
    else:  # a fixed-batch ONNX builds a fixed-batch engine, whatever was asked
        min_batch = opt_batch = max_batch = input_shape[0]
    if dla_core is not None:
        _use_dla(trt, builder, config, dla_core)
    if timing_cache is not None:
        _load_timing_cache(config, timing_cache)

    calibrator = None
    if calibration == "implicit-entropy" and calibrator_batches is not None:
        calibrator = entropy_calibrator(trt, calibrator_batches, input_shape, calib_cache, onnx_path)
        config.int8_calibrator = calibrator
        if input_shape[0] == -1:  # calibration runs at one fixed shape: the calibration profile's
            calib_profile = builder.create_optimization_profile()
            calib_profile.set_shape(input_name, calibrator.shape, calibrator.shape, calibrator.shape)
            config.set_calibration_profile(calib_profile)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.release()
    if calibrator is not None and calibrator.error is not None:
        raise calibrator.error
    if serialized is None:
        raise EdgetlError(f"{onnx_path}: TensorRT {trt.__version__} could not build the {precision} engine "
                          f"({last_error() or 'see the TensorRT messages above'})")

    atomic_write(engine_path, lambda f: f.write(serialized))
    if timing_cache is not None:
        atomic_write(timing_cache, lambda f: f.write(config.get_timing_cache().serialize()))
    meta = {
        "file": engine_path.name,
        "sha256": sha256_file(engine_path),
        "format": "engine",
        "precision": precision,
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu,
        "compute_capability": cc,
        "source_onnx": {"file": _relative_to_folder(onnx_path, engine_path.parent), "sha256": sha256_file(onnx_path)},
        "min_batch": int(min_batch),
        "opt_batch": int(opt_batch),
        "max_batch": int(max_batch),
        "dla_core": dla_core,
        "workspace_mb": int(workspace_mb),
        "strongly_typed": strongly_typed,
        "calibration": calibration,
        "profiling_verbosity": "detailed" if profile else "default",
        "edgetl_version": __version__,
    }
    atomic_write_json(sidecar_path(engine_path), meta)
    if profile:
        write_layer_profile(engine_path)
    return meta


def write_layer_profile(engine: Path, iterations: int = PROFILE_ITERATIONS) -> dict[str, Any]:
    """``ENGINE.layers.json``: the inspector's layers joined with their median GPU times over
    ``iterations`` runs at the engine's opt batch, slowest first (`edgetl.artifacts.layers`)."""
    from ..artifacts.layers import layer_table, layers_path, parse_inspector, parse_profile
    from ..runtime.tensorrt import TrtRunner

    runner = TrtRunner(engine)
    try:
        batch = int(runner.meta.get("opt_batch") or runner.min_batch)
        doc = runner.inspect(batch)
        records = runner.profile(batch, iterations)
    finally:
        runner.close()
    fmt, layers = parse_inspector(doc, str(engine))
    table = layer_table(layers, parse_profile(records, str(engine)))
    out = {"engine": Path(engine).name, "tensorrt_version": runner.meta.get("tensorrt_version"), "format": fmt,
           "batch": batch, "iterations": iterations,
           "total_ms": round(sum(r["median_ms"] or 0.0 for r in table), 4), "layers": table,
           "profile": records, "inspector": doc}
    atomic_write_json(layers_path(engine), out)
    return out


# --- build helpers ---------------------------------------------------------------------------------


def check_build_numbers(opt_batch: int, max_batch: int, workspace_mb: int, dla_core: int | None) -> None:
    """The numbers `edgetl build` takes, refused before anything is read."""
    limits.check({"--opt-batch": (opt_batch, limits.BATCH), "--max-batch": (max_batch, limits.BATCH),
                  "--workspace": (workspace_mb, limits.WORKSPACE_MB), "--dla": (dla_core, limits.DLA_CORE)})


def _check_build_args(onnx: Path, engine: Path, precision: str, min_batch: int, opt_batch: int, max_batch: int,
                      workspace_mb: int, dla_core: int | None, calibrate: bool) -> None:
    """Everything that can be refused before TensorRT is imported."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    check_build_numbers(opt_batch, max_batch, workspace_mb, dla_core)
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise UsageError(f"batch sizes must satisfy 1 <= min ({min_batch}) <= opt ({opt_batch}) <= max ({max_batch})")
    if dla_core is not None and precision == "fp32":
        raise UsageError("DLA runs FP16 or INT8 only: add --fp16 or --int8")
    if calibrate and precision != "int8":
        raise UsageError("calibration images only make sense for an INT8 engine: add --int8")
    if not onnx.is_file():
        raise UsageError(f"{onnx}: no such ONNX file")
    if engine.suffix != ".engine":
        raise UsageError(f"{engine}: an engine file must end in .engine (that is how runners recognise it)")


def typed_strongly(version: tuple[int, ...], has_qdq: bool, weak_typing: bool, dla_core: int | None) -> bool:
    """Whether the network is strongly typed: always on TensorRT 11 (weak typing is gone there); on 10.x
    for Q/DQ models unless ``weak_typing`` or a DLA core (DLA needs the FP16/INT8 flags); never on 8.x,
    which has no strong typing (STRONGLY_TYPED came with 9.0)."""
    if version[0] >= 11:
        if weak_typing:
            raise UsageError("--weak-typing: TensorRT 11 builds strongly typed networks only (its FP16/INT8 "
                             "builder flags are gone); drop the flag")
        return True
    return version[0] == 10 and has_qdq and not weak_typing and dla_core is None


def _has_qdq(onnx_path: Path) -> bool:
    """Whether the ONNX holds Q/DQ nodes: decided before the network exists, since typing is a creation flag."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def _network_flags(trt: ModuleType, version: tuple[int, ...], strongly_typed: bool) -> int:
    """EXPLICIT_BATCH where it is needed (8.x; ignored by 10, gone in 11); STRONGLY_TYPED when asked for
    (on 11 it is always on and kept while the enum still has it, so the intent is visible). The flag
    *values* changed between versions, hence ``1 << int(flag)`` and never a literal."""
    creation = trt.NetworkDefinitionCreationFlag
    flags = 0
    if version[0] < 10:
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags


def _parser_errors(parser: Any) -> str:
    n = parser.num_errors
    if not n:
        return last_error() or "unknown parser error"
    first = " ".join(str(parser.get_error(0)).split())[:300]
    return first if n == 1 else f"{first}; and {n - 1} more"


def _single_input(network: Any, onnx: Path) -> tuple[str, tuple[int, ...]]:
    """edgetl engines take one N x C x H x W image batch where only N may be dynamic."""
    if network.num_inputs != 1:
        raise ArtifactError(f"{onnx}: has {network.num_inputs} inputs; an edgetl classifier takes one image batch")
    tensor = network.get_input(0)
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != 4 or any(d < 0 for d in shape[1:]):
        raise ArtifactError(f"{onnx}: input {tensor.name!r} has shape {shape}; expected N x C x H x W with only "
                            f"N dynamic (export with a fixed image size)")
    return tensor.name, shape


def _network_types(trt: ModuleType, network: Any) -> tuple[bool, bool]:
    """(has Q/DQ layers, has FP16 tensors) of the parsed network."""
    qdq = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    half = trt.DataType.HALF
    has_qdq = False
    has_half = any(network.get_input(i).dtype == half for i in range(network.num_inputs))
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        has_qdq = has_qdq or layer.type in qdq
        has_half = has_half or any(layer.get_output(j).dtype == half for j in range(layer.num_outputs))
    return has_qdq, has_half


def _calibration_mode(onnx: Path, precision: str, has_qdq: bool, has_half: bool, calibrate: bool,
                      no_flags: bool, version: str) -> str | None:
    """The sidecar's ``calibration`` value; refuses an ONNX whose types contradict ``precision``.
    ``no_flags``: TensorRT 11, which has no FP16 flag and no implicit calibration."""
    if has_qdq and precision != "int8":
        raise UsageError(f"{onnx}: holds Q/DQ (INT8) nodes: build it with --int8")
    if precision == "int8":
        if has_qdq:
            if calibrate:
                raise UsageError(f"{onnx}: is already quantized (Q/DQ nodes); build it without --calib")
            return "explicit-qdq"
        if not calibrate:
            extra = "" if no_flags else ", or pass --calib DIR for TensorRT's own (implicit) calibration"
            raise UsageError(f"{onnx}: has no Q/DQ nodes: build INT8 engines from the model.int8.onnx that "
                             f"`edgetl export --int8` writes{extra}")
        return "implicit-entropy"
    if no_flags and precision == "fp16" and not has_half:
        raise UsageError(f"{onnx}: is an FP32 model and TensorRT {version} builds strongly typed networks only "
                         f"(no FP16 flag): build the model.fp16.onnx that `edgetl export` writes with --fp16")
    if no_flags and precision == "fp32" and has_half:
        raise UsageError(f"{onnx}: holds FP16 tensors: build it with --fp16")
    return None


def _use_dla(trt: ModuleType, builder: Any, config: Any, core: int) -> None:
    cores = int(getattr(builder, "num_DLA_cores", 0))
    if core >= cores:
        raise UsageError(f"DLA core {core} requested, but this device has {cores} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _load_timing_cache(config: Any, path: Path) -> None:
    """Use the cache at ``path`` if TensorRT accepts it; one from another TensorRT or GPU is replaced."""
    try:
        data = path.read_bytes() if path.is_file() else b""
    except OSError as e:
        raise UsageError(f"{path}: cannot read the timing cache ({e.strerror or e})") from e
    try:  # a corrupt or foreign cache may come back as None, be refused, or raise, depending on the version
        if config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
            return
    except (RuntimeError, TypeError, ValueError):
        pass
    warnings.warn(f"{path}: timing cache rejected by TensorRT (another version or GPU); starting an empty one",
                  stacklevel=3)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


# --- provenance helpers ----------------------------------------------------------------------------


def _relative_to_folder(path: Path, folder: Path) -> str:
    """``path`` as seen from ``folder`` (how the sidecar stores it), absolute when that is impossible."""
    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())
