"""TensorRT engines: built from ONNX on the machine that runs them, refused when their provenance does not match.

Why it is shaped this way:

- Engines are not portable. TensorRT guarantees that an engine deserializes only with the exact
  TensorRT version it was built with, and its kernels are chosen for one GPU. So every engine gets a
  provenance record (``ENGINE.json`` next to it, or its entry in ``manifest.json``) holding its sha256,
  the TensorRT version, the GPU name and compute capability; :func:`check_engine` compares them with
  the running machine *before* anything is deserialized, and the error ends with the exact
  ``edgetl build`` command that rebuilds the engine there. The version check is an exact string match
  of ``tensorrt.__version__`` (``10.3.0`` ≠ ``10.3.0.26`` ≠ ``10.7.0``): a patch release may change
  the serialization format, and a false refusal costs one rebuild while a false acceptance can crash.
- INT8 is explicit: the engine is built from the Q/DQ ``model.int8.onnx`` that ONNX Runtime already
  verified on the CPU. TensorRT 8.5-10.x get the FP16 flag next to INT8, so layers left unquantized run
  in FP16. TensorRT 11 removed the FP16/INT8 builder flags and implicit calibration: every network is
  strongly typed, so the ONNX decides the precision (an FP16 engine needs ``model.fp16.onnx``, and the
  unquantized layers of a Q/DQ model run in the precision the ONNX gives them).
- Implicit INT8 calibration (``IInt8EntropyCalibrator2`` with a calibration cache) stays for TensorRT
  8.x/10.x users who want it; TensorRT 11 refuses it with a UsageError.

``tensorrt`` and ``cuda-python`` are imported inside the functions that need them: importing this
module works on any machine and never imports torch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import __version__, limits
from .errors import ArtifactError, DataError, EdgetlError, UsageError
from .fileio import atomic_write, atomic_write_bytes, atomic_write_json, sha256_file
from .runtime._trt import DeviceBuffer, gpu_info, import_tensorrt, last_error, logger, trt_version

PRECISIONS = ("fp32", "fp16", "int8")
_PROVENANCE_KEYS = ("sha256", "tensorrt_version", "gpu", "compute_capability")


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


def sidecar_path(engine_path: Path) -> Path:
    """``model.int8.engine`` → ``model.int8.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def precision_from_name(name: str) -> str:
    """``model.int8.onnx`` → int8, ``model.fp16.engine`` → fp16, anything else → fp32."""
    for p in ("int8", "fp16"):
        if f".{p}." in name:
            return p
    return "fp32"


def default_engine_path(onnx_path: Path, precision: str) -> Path:
    """Next to the ONNX, tagged with the precision once: ``model.int8.onnx`` → ``model.int8.engine``,
    ``model.onnx`` built as int8 → ``model.int8.engine``."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.stem
    if precision != "fp32" and f".{precision}" not in stem:
        stem += f".{precision}"
    return onnx_path.with_name(stem + ".engine")


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
    saved after the build. Returns the sidecar dict.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    timing_cache = Path(timing_cache) if timing_cache is not None else None
    calib_cache = Path(calib_cache) if calib_cache is not None else None
    _check_build_args(onnx_path, engine_path, precision, min_batch, opt_batch, max_batch, workspace_mb, dla_core,
                      calibrator_batches is not None)
    trt = import_tensorrt()
    from .onnx_check import check_onnx_file

    check_onnx_file(onnx_path)  # TensorRT's parser follows external data paths without ONNX Runtime's checks
    version = trt_version(trt)
    strongly_typed = version[0] >= 11
    if calibrator_batches is not None and strongly_typed:
        raise UsageError(
            f"TensorRT {trt.__version__} has no implicit INT8 calibration (removed in TensorRT 11): build the "
            f"Q/DQ model.int8.onnx that `edgetl export --int8` writes, with --int8 and without --calib")
    gpu, cc = gpu_info()

    log = logger(trt)
    log.last_error = ""
    builder = trt.Builder(log)
    network = builder.create_network(_network_flags(trt, version))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        raise ArtifactError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it ({_parser_errors(parser)})")
    input_name, input_shape = _single_input(network, onnx_path)
    has_qdq, has_half = _network_types(trt, network)
    calibration = _calibration_mode(onnx_path, precision, has_qdq, has_half, calibrator_batches is not None,
                                    strongly_typed, str(trt.__version__))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not strongly_typed and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if not strongly_typed and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if input_shape[0] == -1:
        profile = builder.create_optimization_profile()
        rest = input_shape[1:]
        profile.set_shape(input_name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
        config.add_optimization_profile(profile)
    else:  # a fixed-batch ONNX builds a fixed-batch engine, whatever was asked
        min_batch = opt_batch = max_batch = input_shape[0]
    if dla_core is not None:
        _use_dla(trt, builder, config, dla_core)
    if timing_cache is not None:
        _load_timing_cache(config, timing_cache)

    calibrator = None
    if calibration == "implicit-entropy" and calibrator_batches is not None:
        calibrator = _entropy_calibrator(trt, calibrator_batches, input_shape, calib_cache, onnx_path)
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
        "edgetl_version": __version__,
    }
    atomic_write_json(sidecar_path(engine_path), meta)
    return meta


def load_engine_meta(engine_path: Path) -> dict[str, Any]:
    """The engine's provenance: ``ENGINE.json`` next to it, else its entry in ``manifest.json`` in its folder.

    Refuses (ArtifactError) when neither exists: an engine of unknown origin is never deserialized,
    because deserializing a foreign or tampered engine can crash the process.
    """
    engine = Path(engine_path)
    sidecar = sidecar_path(engine)
    if sidecar.is_file():
        meta = _read_json(sidecar)
        if not isinstance(meta, dict):
            raise ArtifactError(f"{sidecar}: not a JSON object")
        return meta
    manifest = engine.parent / "manifest.json"
    if manifest.is_file():
        doc = _read_json(manifest)
        artifacts = doc.get("artifacts") if isinstance(doc, dict) else None
        if not isinstance(artifacts, list):
            raise ArtifactError(f"{manifest}: no 'artifacts' list")
        for entry in artifacts:
            if isinstance(entry, dict) and isinstance(entry.get("file"), str) and \
                    (manifest.parent / entry["file"]).resolve() == engine.resolve():
                return entry
    raise ArtifactError(
        f"{engine}: no provenance record (neither {sidecar.name} nor an entry in {manifest}); an engine of "
        f"unknown origin is not loaded; rebuild it: {rebuild_command(engine, {})}")


def check_engine(
    engine_path: Path,
    meta: dict[str, Any],
    *,
    tensorrt_version: str,
    gpu: str,
    compute_capability: str,
    data: bytes | None = None,
) -> None:
    """Refuse (ArtifactError, exit 4) an engine that is not exactly what its provenance record says
    or was built for another TensorRT version or GPU. Pure logic: no TensorRT import.

    ``data`` is the engine's bytes when the caller already read them, so the bytes that get
    deserialized are the bytes that were hashed.
    """
    engine = Path(engine_path)
    cmd = rebuild_command(engine, meta)
    missing = [k for k in _PROVENANCE_KEYS if not meta.get(k)]
    if missing:
        raise ArtifactError(f"{engine}: its provenance record lacks {', '.join(missing)}, so it cannot be "
                            f"trusted; rebuild it: {cmd}")
    if meta.get("format", "engine") != "engine":
        raise ArtifactError(f"{engine}: its provenance record describes a {meta['format']!r} artifact, "
                            f"not an engine; rebuild it: {cmd}")
    if data is not None:
        found = hashlib.sha256(data).hexdigest()
    else:
        try:
            found = sha256_file(engine)
        except OSError as e:
            raise ArtifactError(f"{engine}: cannot read it ({e.strerror or e})") from e
    expected = str(meta["sha256"])
    if found != expected:
        raise ArtifactError(f"{engine}: sha256 {found[:12]}... differs from the recorded {expected[:12]}...: "
                            f"the file changed after it was built; rebuild it: {cmd}")
    built = str(meta["tensorrt_version"]).strip()
    if built != str(tensorrt_version).strip():
        raise ArtifactError(f"{engine}: built with TensorRT {built}, this machine has TensorRT {tensorrt_version}; "
                            f"an engine loads only on the exact TensorRT version it was built with; "
                            f"rebuild it here: {cmd}")
    built_cc, built_gpu = str(meta["compute_capability"]).strip(), str(meta["gpu"]).strip()
    if built_cc != str(compute_capability).strip():
        raise ArtifactError(f"{engine}: built for compute capability {built_cc} ({built_gpu}), this machine's GPU "
                            f"is {compute_capability} ({gpu}); engines are specific to the GPU; "
                            f"rebuild it here: {cmd}")
    if built_gpu != str(gpu).strip():
        raise ArtifactError(f"{engine}: built on {built_gpu}, this machine has {gpu} (same compute capability "
                            f"{built_cc}, but kernels were chosen for the other GPU); rebuild it here: {cmd}")


def rebuild_command(engine_path: Path, meta: dict[str, Any]) -> str:
    """The ``edgetl build`` command line that rebuilds ``engine_path`` with the recorded settings."""
    engine = Path(engine_path)
    precision = str(meta.get("precision") or precision_from_name(engine.name))
    source = meta.get("source_onnx")
    src = source.get("file") if isinstance(source, dict) else None
    onnx = engine.parent / src if isinstance(src, str) and src else engine.with_suffix(".onnx")
    args = ["edgetl", "build", _shown(onnx)]
    if precision in ("fp16", "int8"):
        args.append(f"--{precision}")
    if meta.get("calibration") == "implicit-entropy":
        args += ["--calib", "CALIB_DIR"]
    for key, flag in (("opt_batch", "--opt-batch"), ("max_batch", "--max-batch"), ("dla_core", "--dla")):
        if meta.get(key) is not None:
            args += [flag, str(meta[key])]
    args += ["-o", _shown(engine)]
    return " ".join(shlex.quote(a) for a in args)


def calibration_batches(calib_dir: Path, preprocess: dict[str, Any], batch_size: int) -> Iterator[np.ndarray]:
    """Float32 NCHW batches of the images under ``calib_dir`` (any depth), preprocessed as in evaluation.

    The recipe is ``manifest["preprocess"]`` ({size, resize, mean, std, interpolation}): shorter side
    resized to ``resize`` with PIL's interpolation, centre crop ``size``, /255, (x - mean) / std, CHW.
    PIL and numpy only, so it runs on a Jetson without PyTorch. The folder is checked now (DataError
    when it holds no images); images are decoded lazily, batch by batch; the last batch may be smaller.
    """
    from .images import Preprocess

    if batch_size < 1:
        raise UsageError(f"calibration batch size must be >= 1, got {batch_size}")
    try:
        pp = Preprocess.from_dict(preprocess)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"unusable preprocessing record {preprocess!r} ({e})") from e
    files = _image_files(Path(calib_dir))
    return _batches(files, pp, batch_size)


def onnx_preprocess(onnx_path: Path) -> dict[str, Any]:
    """The preprocessing recorded for an exported ONNX: ``manifest["preprocess"]`` of the manifest.json next
    to it, else ``preprocess`` of the run.json one folder up (``RUN/export/model.onnx`` → ``RUN/run.json``)."""
    onnx_path = Path(onnx_path)
    for record in (onnx_path.parent / "manifest.json", onnx_path.parent.parent / "run.json"):
        if record.is_file():
            doc = _read_json(record)
            if isinstance(doc, dict) and isinstance(doc.get("preprocess"), dict):
                return doc["preprocess"]
    raise UsageError(f"{onnx_path}: no preprocessing record (manifest.json next to it, or ../run.json); calibration "
                     f"images need the one `edgetl export` writes")


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


def _network_flags(trt: ModuleType, version: tuple[int, ...]) -> int:
    """EXPLICIT_BATCH where it is needed (8.x; ignored by 10, gone in 11); STRONGLY_TYPED on 11, where it is
    always on (kept while the enum still has it, so the intent is visible). The flag *values* changed
    between versions, hence ``1 << int(flag)`` and never a literal."""
    creation = trt.NetworkDefinitionCreationFlag
    flags = 0
    if version[0] < 10:
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if version[0] >= 11 and hasattr(creation, "STRONGLY_TYPED"):
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
                      strongly_typed: bool, version: str) -> str | None:
    """The sidecar's ``calibration`` value; refuses an ONNX whose types contradict ``precision``."""
    if has_qdq and precision != "int8":
        raise UsageError(f"{onnx}: holds Q/DQ (INT8) nodes: build it with --int8")
    if precision == "int8":
        if has_qdq:
            if calibrate:
                raise UsageError(f"{onnx}: is already quantized (Q/DQ nodes); build it without --calib")
            return "explicit-qdq"
        if not calibrate:
            extra = "" if strongly_typed else ", or pass --calib DIR for TensorRT's own (implicit) calibration"
            raise UsageError(f"{onnx}: has no Q/DQ nodes: build INT8 engines from the model.int8.onnx that "
                             f"`edgetl export --int8` writes{extra}")
        return "implicit-entropy"
    if strongly_typed and precision == "fp16" and not has_half:
        raise UsageError(f"{onnx}: is an FP32 model and TensorRT {version} builds strongly typed networks only "
                         f"(no FP16 flag): build the model.fp16.onnx that `edgetl export` writes with --fp16")
    if strongly_typed and precision == "fp32" and has_half:
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


def _entropy_calibrator(trt: ModuleType, batches: Iterable[np.ndarray], input_shape: tuple[int, ...],
                        cache: Path | None, onnx: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` fed from ``batches``; the class is defined here so that tensorrt
    stays a lazy import.

    TensorRT calibrates at one fixed shape: the first batch's size for a dynamic-batch ONNX (set as the
    calibration profile), the ONNX's own batch otherwise; a short last batch is filled by repeating its
    images. Errors raised while producing batches (a corrupt image) must not unwind through TensorRT's
    C++ frames, so they are kept and re-raised by ``build_engine`` after the build returns.
    """
    it = iter(batches)
    first = next(it, None)  # decodes the first images now, so a bad folder fails before the build
    has_cache = cache is not None and cache.is_file() and cache.stat().st_size > 0
    if first is None and not has_cache:
        raise DataError("no calibration images were given")
    rest = tuple(input_shape[1:])
    if first is not None and (first.ndim != 4 or tuple(first.shape[1:]) != rest):
        raise DataError(f"calibration batches have shape {tuple(first.shape)}, but {onnx} takes N x "
                        f"{' x '.join(map(str, rest))}: preprocess them to the model's input size")
    batch = input_shape[0] if input_shape[0] > 0 else (len(first) if first is not None else 1)
    pending: Iterator[np.ndarray] = itertools.chain([first], it) if first is not None else it

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # required by the pybind trampoline (segfaults without)
            self.shape = (batch, *rest)
            self.buffer = DeviceBuffer()
            self.error: BaseException | None = None
            self.images = 0

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks: the batch is part of the calibration shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.error is not None:
                return None
            try:
                b = next(pending, None)
                if b is None:
                    return None
                if tuple(b.shape[1:]) != rest:
                    raise DataError(f"calibration batch of shape {tuple(b.shape)} does not fit {self.shape}")
                self.images += min(len(b), batch)
                host = np.ascontiguousarray(b[:batch] if len(b) >= batch else np.resize(b, self.shape),
                                            dtype=np.float32)
                return [self.buffer.upload(host)]
            except BaseException as e:  # noqa: BLE001 - re-raised by build_engine
                self.error = e
                return None

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if has_cache and cache is not None else None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is None:
                return
            try:
                atomic_write_bytes(cache, bytes(data))
            except BaseException as e:  # noqa: BLE001 - re-raised by build_engine
                self.error = e

        def release(self) -> None:
            self.buffer.free()

    return _EntropyCalibrator()


# --- provenance helpers ----------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable provenance record ({e})") from e


def _relative_to_folder(path: Path, folder: Path) -> str:
    """``path`` as seen from ``folder`` (how the sidecar stores it), absolute when that is impossible."""
    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())


def _shown(path: Path) -> str:
    """A path as the user should type it from the current folder."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --- calibration images ----------------------------------------------------------------------------


def _image_files(root: Path) -> list[Path]:
    """The calibration images, listed as check-data lists them (symlinks leaving ``root`` refused)."""
    from .checkdata import calibration_listing

    if not root.is_dir():
        raise DataError(f"{root}: no such calibration folder")
    listing = calibration_listing(root)
    if listing.errors():
        raise DataError(str(listing.errors()[0]))
    return listing.files


def _batches(files: list[Path], pp: Any, batch_size: int) -> Iterator[np.ndarray]:
    from .images import load_rgb

    batch: list[np.ndarray] = []
    for f in files:
        batch.append(pp.to_array(load_rgb(f)))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
