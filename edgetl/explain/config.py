"""What `edgetl explain` is asked for (`ExplainConfig`, validated once); torch-free, so --help is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import limits
from ..choices import CamMethod
from ..options import check_fields, option

SECTION = "Report"


@dataclass
class ExplainConfig:
    run: str
    images: tuple[str, ...] = ()
    artifact: str | None = option(None, "INT8 artifact to compare with best.pt (default: RUN/export/model.int8.onnx "
                                  "when it exists).", SECTION, metavar="FILE")
    method: str = option("gradcam", "Class-activation map method.", SECTION, choices=CamMethod)
    top_k: int = option(3, "Classes listed per image.", SECTION, legal=limits.COUNT)
    limit: int = option(48, "Images in the 'where the model looks' section (a stratified sample of the "
                        "validation split, unless IMAGES are given).", SECTION, legal=limits.Range(1, 10_000))
    out: str | None = option(None, "Report folder (default RUN/explain); replaced as a whole.", SECTION, metavar="DIR")
    batch_size: int = option(32, "Images per batch.", SECTION, legal=limits.BATCH)

    def validate(self) -> ExplainConfig:
        check_fields(self)
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run) / "explain"
