"""Engine provenance: the record beside every TensorRT engine (``ENGINE.json``, or its entry in
``manifest.json``) and the checks made against it before an engine is deserialized.

Engines are not portable: an engine deserializes only with the exact TensorRT version it was built
with, and its kernels are chosen for one GPU. So `check_engine` compares sha256, TensorRT version,
GPU name and compute capability with the running machine *before* anything is deserialized (a
foreign or tampered engine can crash the process), and every refusal ends with the exact
``edgetl build`` command that rebuilds the engine here. Pure logic: no TensorRT import.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..fileio import sha256_file
from .manifest import MANIFEST_JSON, precision_of, read_json_object, read_manifest

PROVENANCE_KEYS = ("sha256", "tensorrt_version", "gpu", "compute_capability")


def sidecar_path(engine_path: Path) -> Path:
    """``model.int8.engine`` → ``model.int8.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def default_engine_path(onnx_path: Path, precision: str) -> Path:
    """Next to the ONNX, tagged with the precision once: ``model.int8.onnx`` → ``model.int8.engine``,
    ``model.onnx`` built as int8 → ``model.int8.engine``."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.stem
    if precision != "fp32" and f".{precision}" not in stem:
        stem += f".{precision}"
    return onnx_path.with_name(stem + ".engine")


def load_engine_meta(engine_path: Path) -> dict[str, Any]:
    """The engine's provenance: ``ENGINE.json`` next to it, else its entry in ``manifest.json`` in its folder.

    Refuses (ArtifactError) when neither exists: an engine of unknown origin is never deserialized,
    because deserializing a foreign or tampered engine can crash the process.
    """
    engine = Path(engine_path)
    sidecar = sidecar_path(engine)
    if sidecar.is_file():
        return read_json_object(sidecar, "provenance record")
    manifest = read_manifest(engine.parent)
    if manifest is not None:
        entry = manifest.entry(engine.name)
        if entry is not None:
            return entry
    raise ArtifactError(
        f"{engine}: no provenance record (neither {sidecar.name} nor an entry in {engine.parent / MANIFEST_JSON}); an engine of "
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
    missing = [k for k in PROVENANCE_KEYS if not meta.get(k)]
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
    precision = str(meta.get("precision") or precision_of(engine.name))
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


def _shown(path: Path) -> str:
    """A path as the user should type it from the current folder."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
