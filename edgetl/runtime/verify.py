"""An artifact is used only if it is the file its manifest lists: same name, same sha256.

Why: ``manifest.json`` records every artifact's hash at export, but a file copied over (another run's
``model.onnx``), edited, or left from an earlier export would otherwise run and be reported as this
run's. Hashes are cached per (path, size, mtime) within a process, so a hot path does not re-hash.
Torch-free. A file without a manifest beside it has nothing to be checked against and is the user's.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts.manifest import read_manifest
from ..errors import ArtifactError
from ..fileio import sha256_file

_HASHES: dict[tuple[str, int, int], str] = {}
FIX = "re-export it (`edgetl export RUN`), or pass --no-verify for a file you vouch for"


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered while its size and modification time stay the same."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def verify_artifact(path: Path) -> None:
    """ArtifactError (exit 4) unless ``path`` matches its entry in the manifest.json beside it."""
    path = Path(path)
    if path.is_dir() or path.suffix not in (".onnx", ".engine"):
        return
    try:
        manifest = read_manifest(path.parent)
        entry = manifest.entry(path.name) if manifest is not None else None
    except ArtifactError as e:
        raise ArtifactError(f"{e}; {FIX}") from e
    if manifest is None:
        return
    if entry is None:
        raise ArtifactError(f"{path}: not listed in {manifest.path.name}, so nothing says it belongs to this export; {FIX}")
    expected = str(entry.get("sha256") or "")
    found = file_sha256(path)
    if found != expected:
        raise ArtifactError(f"{path}: sha256 {found[:12]}... differs from {expected[:12] or 'none'}... in "
                            f"{manifest.path.name}: the file changed after export; {FIX}")
