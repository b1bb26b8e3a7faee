"""Which record describes an artifact: the manifest.json beside an exported file, the run.json of a run
folder or beside best.pt, or the run.json one folder up from RUN/export/. Classes and preprocessing
come from it, validated before anything is allocated from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError
from ..images import Preprocess
from .manifest import MANIFEST_JSON, check_classes, preprocess_of, read_json_object
from .run import RUN_JSON


@dataclass(frozen=True)
class Description:
    classes: list[str]
    preprocess: Preprocess


def describe(artifact: Path) -> Description:
    artifact = Path(artifact)
    folder = artifact if artifact.is_dir() else artifact.parent
    for record in (folder / MANIFEST_JSON, folder / RUN_JSON, folder.parent / RUN_JSON):
        if record.is_file():
            doc = read_json_object(record, "classes/preprocess")
            return Description(check_classes(doc.get("classes"), record), preprocess_of(doc, record))
    raise ArtifactError(f"{artifact}: no manifest.json or run.json beside it says its classes and preprocessing")
