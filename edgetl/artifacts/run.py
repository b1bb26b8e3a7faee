"""``run.json``: what a run folder holds (model, classes, preprocessing, training config, data, metrics).
Written by `edgetl finetune`; read by eval, export, bench, predict and resume through `read_run`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..images import Preprocess
from .manifest import check_classes, preprocess_of, read_json_object

RUN_JSON = "run.json"


@dataclass(frozen=True)
class RunInfo:
    folder: Path
    doc: dict[str, Any]  # the file as written

    @property
    def path(self) -> Path:
        return self.folder / RUN_JSON

    @property
    def model(self) -> str:
        return str(self.doc.get("model"))

    @property
    def classes(self) -> list[str]:
        return check_classes(self.doc.get("classes"), self.path)

    @property
    def preprocess(self) -> Preprocess:
        return preprocess_of(self.doc, self.path)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.doc.get("config") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.doc.get("metrics") or {})


def is_run(folder: Path) -> bool:
    """A run folder: one that holds run.json."""
    return (Path(folder) / RUN_JSON).is_file()


def read_run(run: Path) -> RunInfo:
    """run.json of a run folder, with a clear error when it is missing (exit 2) or damaged (exit 4)."""
    p = Path(run) / RUN_JSON
    if not p.is_file():
        raise UsageError(f"{run}: not an edgetl run (no run.json)")
    return RunInfo(Path(run), read_json_object(p, "run record"))
