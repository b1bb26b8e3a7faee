"""`Predictor`: the deploy-side API. Artifact in, top-k class names and probabilities out, no PyTorch
unless the artifact is a PyTorch checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import limits
from ..artifacts.record import describe
from ..errors import DataError
from ..images import IMAGE_EXTENSIONS, ImageSource, Preprocess, load_rgb
from .base import Runner, open_runner, softmax


@dataclass
class Prediction:
    source: str
    top: list[tuple[int, str, float]]  # (class index, class name, probability), best first

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source,
                "top": [{"index": i, "class": c, "probability": p} for i, c, p in self.top]}


class Predictor:
    """Loads ``model.onnx`` / ``model.int8.onnx`` / ``*.engine`` / ``best.pt`` (or a run folder)."""

    def __init__(self, artifact: Path | str, *, device: str = "cpu", threads: int | None = None,
                 verify: bool = True, runner: Runner | None = None) -> None:
        """``verify``: refuse a file whose sha256 differs from its entry in the manifest.json beside it.
        ``runner``: one already open on ``artifact`` (a PyTorch checkpoint: `edgetl.evaluate.open_predictor`)."""
        self.artifact = Path(artifact)
        if verify:
            from .verify import verify_artifact

            verify_artifact(self.artifact)
        meta = describe(self.artifact)
        self.classes: list[str] = meta.classes
        self.preprocess: Preprocess = meta.preprocess
        self.runner: Runner = runner or open_runner(self.artifact, device=device, threads=threads)

    def predict(self, images: Iterable[ImageSource], top_k: int = 5, batch_size: int = 16) -> list[Prediction]:
        return list(self.iter_predict(images, top_k, batch_size))

    def iter_predict(self, images: Iterable[ImageSource], top_k: int = 5, batch_size: int = 16,
                     on_error: Callable[[str, DataError], None] | None = None) -> Iterator[Prediction]:
        """Predict in batches; paths, PIL images and HxW[xC] uint8 arrays may be mixed. With ``on_error``,
        an image that cannot be decoded is reported there and skipped instead of ending the run."""
        limits.check({"--top-k": (top_k, limits.COUNT), "--batch-size": (batch_size, limits.BATCH)})
        k = min(top_k, len(self.classes))
        batch: list[tuple[str, np.ndarray]] = []
        for i, img in enumerate(images):
            name = str(img) if isinstance(img, (str, Path)) else f"<image {i}>"
            try:
                x = self.preprocess.to_array(load_rgb(img))
            except DataError as e:
                if on_error is None:
                    raise
                on_error(name, e)
                continue
            batch.append((name, x))
            if len(batch) == batch_size:
                yield from self._run(batch, k)
                batch = []
        if batch:
            yield from self._run(batch, k)

    def _run(self, batch: Sequence[tuple[str, np.ndarray]], k: int) -> Iterator[Prediction]:
        probs = softmax(self.runner.run(np.stack([x for _, x in batch])).astype(np.float64))
        for (name, _), p in zip(batch, probs):
            top = np.argsort(-p, kind="stable")[:k]
            yield Prediction(name, [(int(j), self.classes[j], float(p[j])) for j in top])

    def close(self) -> None:
        self.runner.close()


def expand_images(paths: Iterable[Path]) -> list[Path]:
    """Files as given; folders walked for image files (hidden entries skipped), in sorted order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise DataError(f"{p}: folder holds no images")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such image or folder")
    return out
