"""An artifact is used only if it is the file its manifest lists: same name, same sha256.

Why: ``manifest.json`` records every artifact's hash at export, but a file copied over (another run's
``model.onnx``), edited, or left from an earlier export would otherwise run and be reported as this
run's. Hashes are cached per (path, size, mtime) within a process, so a hot path does not re-hash.
Torch-free. A file without a manifest beside it has nothing to be checked against and is the user's.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    manifest = path.parent / "manifest.json"
    if path.is_dir() or not manifest.is_file() or path.suffix not in (".onnx", ".engine"):
        return
    try:
        doc = json.loads(manifest.read_text())
        entries = {a["file"]: a for a in doc.get("artifacts") or []}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{manifest}: unreadable artifact list ({e}); {FIX}") from e
    entry = entries.get(path.name)
    if entry is None:
        raise ArtifactError(f"{path}: not listed in {manifest.name}, so nothing says it belongs to this export; {FIX}")
    expected = str(entry.get("sha256") or "")
    found = file_sha256(path)
    if found != expected:
        raise ArtifactError(f"{path}: sha256 {found[:12]}... differs from {expected[:12] or 'none'}... in "
                            f"{manifest.name}: the file changed after export; {FIX}")
