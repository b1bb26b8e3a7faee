"""The validation images every row is judged on, preprocessed as `edgetl eval` does (or as `edgetl predict`
does where PyTorch is missing), and the real batches the timed inputs rotate over."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..images import ImageSource, Preprocess, load_rgb
from ..metrics import EvalResult, Scorer
from ..runtime.base import Runner
from .config import ACCURACY_BATCH, POOL_BATCHES
from .plan import Target


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def validation_images(target: Target, data: str | None, torch_ok: bool) -> tuple[str, list[ImageSource], list[int]]:
    """The images accuracy is measured on, with labels in the target's class order.

    With PyTorch and a run folder: exactly `edgetl eval`'s (the run's validation split, or ``data``).
    Otherwise an ImageFolder (``data``, or the run's own data folder when it has a val/ part).
    """
    if torch_ok and target.run is not None:
        from ..evaluate import eval_split, load_run_model

        where, split = eval_split(load_run_model(target.run), data)
        return where, list(split.items), list(split.labels)
    spec = data
    if spec is None:
        cfg = (target.info or {}).get("config", {})
        source = Path(str(cfg.get("data", "")))
        if cfg.get("val_split") is None and (source / "val").is_dir():
            spec = str(source)
        else:
            need = "PyTorch and the run folder" if target.run is None or not torch_ok else "PyTorch"
            raise DataError(f"{target.name}: its validation split needs {need} to rebuild; "
                            "pass --data FOLDER (an ImageFolder of validation images, or its root with val/)")
    if spec in ("digits", "cifar10"):
        raise DataError(f"--data {spec} needs PyTorch and the run folder here; pass --data FOLDER, an ImageFolder")
    return _folder_images(Path(spec), target.classes)


def _folder_images(root: Path, classes: list[str]) -> tuple[str, list[ImageSource], list[int]]:
    """An ImageFolder's images (its val/ when present) labelled by class name, without PyTorch."""
    from ..runtime.predictor import expand_images

    folder = root / "val" if (root / "val").is_dir() else root
    if not folder.is_dir():
        raise DataError(f"{root}: no such data folder")
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    unknown = [c for c in names if c not in classes]
    if unknown:
        raise DataError(f"{folder}: classes {unknown[:5]} are not among the model's classes")
    items: list[ImageSource] = []
    labels: list[int] = []
    for name in names:
        files = expand_images([folder / name])
        items.extend(files)
        labels.extend([classes.index(name)] * len(files))
    return str(folder), items, labels


def _preprocess(items: list[ImageSource], pp: Preprocess, torch_ok: bool) -> np.ndarray:
    """Normalized NCHW float32, through the accuracy path's preprocessing."""
    if torch_ok:
        import torch

        from ..data.sources import eval_transform

        tf = eval_transform(pp)
        return torch.stack([tf(load_rgb(s)) for s in items]).numpy()
    return np.stack([pp.to_array(load_rgb(s)) for s in items])


def accuracy(runner: Runner, items: list[ImageSource], labels: list[int], pp: Preprocess, num_classes: int,
             torch_ok: bool) -> EvalResult:
    """Top-1/top-5 of any runner: `edgetl eval`'s code path with PyTorch, the deploy preprocessing without."""
    if torch_ok:
        from ..data.sources import Split
        from ..evaluate import evaluate_runner

        return evaluate_runner(runner, Split(items, labels), pp, num_classes, ACCURACY_BATCH)
    scorer = Scorer(num_classes)
    for i in range(0, len(items), ACCURACY_BATCH):
        scorer.update(runner.run(_preprocess(items[i:i + ACCURACY_BATCH], pp, False)),
                      np.asarray(labels[i:i + ACCURACY_BATCH]))
    return scorer.result()


class Inputs:
    """Real validation images for timing: a preprocessed pool to rotate over, and image files for end-to-end."""

    def __init__(self, items: list[ImageSource], pp: Preprocess, max_batch: int, torch_ok: bool, tmp: Path) -> None:
        pick = _spread(len(items), min(len(items), max(64, max_batch * POOL_BATCHES), 512))
        self.pool = _preprocess([items[i] for i in pick], pp, torch_ok)
        self.preprocess = pp
        self.files: list[Path] = []
        for n, i in enumerate(_spread(len(items), min(len(items), max(32, 4 * max_batch)))):
            src = items[i]
            if isinstance(src, (str, Path)):
                self.files.append(Path(src))
            else:  # in-memory data sets (digits, cifar10): encode real files so decoding is measured
                tmp.mkdir(parents=True, exist_ok=True)
                f = tmp / f"{n:04d}.png"
                load_rgb(src).save(f)
                self.files.append(f)

    def batches(self, batch_size: int) -> list[np.ndarray]:
        pool = self.pool if len(self.pool) >= batch_size else np.resize(self.pool, (batch_size, *self.pool.shape[1:]))
        n = max(1, min(POOL_BATCHES, len(pool) // batch_size))
        return [np.ascontiguousarray(pool[i * batch_size:(i + 1) * batch_size]) for i in range(n)]


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, so every class shows up in the timed inputs."""
    return sorted(set(np.linspace(0, n - 1, num=max(k, 1)).round().astype(int).tolist())) if n else []
