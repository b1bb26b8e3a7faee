"""``manifest.json`` of an export folder, the artifact file names, and the one rule that gives a file's
precision from its name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..fileio import resolve_inside
from ..images import Preprocess

MANIFEST_JSON = "manifest.json"
ARTIFACT_FILES = ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx",
                  "model.fp16.engine", "model.int8.engine")
MAX_CLASSES = 100_000


def precision_of(name: str) -> str:
    """``model.int8.onnx``, ``model.int8-cpu.onnx`` → int8; ``model.fp16.engine`` → fp16; else fp32.
    A precision is a dot-separated tag of the name, optionally followed by ``-variant``."""
    for tag in Path(name).name.split(".")[1:-1]:
        head = tag.split("-", 1)[0]
        if head in ("int8", "fp16"):
            return head
    return "fp32"


def check_classes(classes: Any, where: Path) -> list[str]:
    """The class list of a record, refused unless it is 1..MAX_CLASSES names."""
    if not (isinstance(classes, list) and 0 < len(classes) <= MAX_CLASSES and all(isinstance(c, str) for c in classes)):
        raise ArtifactError(f"{where}: unreadable classes/preprocess (classes must be a list of 1..{MAX_CLASSES} names)")
    return list(classes)


def preprocess_of(doc: dict[str, Any], where: Path) -> Preprocess:
    """A record's preprocessing, refused (exit 4) unless every value is sane."""
    try:
        return Preprocess.from_dict(doc["preprocess"])
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{where}: unreadable classes/preprocess ({e})") from e


def read_json_object(path: Path, what: str = "record") -> dict[str, Any]:
    """A JSON object from ``path``, or ArtifactError (exit 4) saying why not."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable {what} ({e})") from e
    if not isinstance(doc, dict):
        raise ArtifactError(f"{path}: not a JSON object")
    return doc


@dataclass(frozen=True)
class Manifest:
    """An export folder's record: its artifacts (file, precision, sha256, verification, ...), the model,
    classes and preprocessing. ``doc`` is the file as written; the format is export's."""

    path: Path
    doc: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        """Entries whose ``file`` is a name inside the folder; anything else is refused."""
        entries = self.doc.get("artifacts")
        if not isinstance(entries, list):
            raise ArtifactError(f"{self.path}: no 'artifacts' list")
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("file"), str):
                raise ArtifactError(f"{self.path}: an artifact entry without a file name")
            resolve_inside(self.folder, e["file"], "artifact file")
        return entries

    def entry(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.artifacts if e["file"] == name), None)

    @property
    def model(self) -> str | None:
        return self.doc.get("model")


def read_manifest(folder: Path) -> Manifest | None:
    """``folder/manifest.json``, or None when there is none."""
    path = Path(folder) / MANIFEST_JSON
    if not path.is_file():
        return None
    return Manifest(path, read_json_object(path, "artifact list"))
