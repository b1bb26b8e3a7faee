"""`edgetl eval`: top-1/top-5, per-class accuracy and confusion matrix of a run's best checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import limits, runtime
from .artifacts.run import read_run
from .data.sources import Split, eval_transform, load_data, make_loader, run_data, scan_image_folder
from .errors import ArtifactError, DataError, one_line
from .images import Preprocess
from .metrics import EvalResult, Scorer
from .models import build
from .progress import Tick
from .runtime import Predictor, Runner
from .runtime.base import is_torch_artifact
from .runtime.torch import TorchRunner
from .train.checkpoint import load_checkpoint
from .train.loop import evaluate_loader


@dataclass
class RunModel:
    """A run's best model, ready for inference, with what is needed to feed it."""

    model: nn.Module
    classes: list[str]
    preprocess: Preprocess
    run: dict


def load_run_model(run: Path, checkpoint: str = "best.pt") -> RunModel:
    """Rebuild the architecture from run.json (no download) and load the checkpoint's weights."""
    info = read_run(run)
    classes, preprocess = info.classes, info.preprocess
    ck = load_checkpoint(Path(run) / checkpoint)
    built = build(info.model, len(classes), "none")
    try:
        built.model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise ArtifactError(f"{Path(run) / checkpoint}: does not fit model {info.model} "
                            f"({one_line(e)})") from e
    built.model.eval()
    return RunModel(built.model, classes, preprocess, info.doc)


def eval_split(run: RunModel, data: str | None) -> tuple[str, Split]:
    """The run's own validation split, or ``data``: its val/ folder, or the whole folder, mapped by class name."""
    cfg = run.run["config"]
    if data is None:
        ds = run_data(run.run)  # the run's own split, without the files its data check skipped
        if ds.classes != run.classes:
            raise DataError(f"{cfg['data']}: classes no longer match the run's {run.classes}")
        return f"{cfg['data']} (validation split)", ds.val
    if data in ("digits", "cifar10"):
        ds = load_data(data)
        classes, split, where = ds.classes, ds.val, f"{data} (validation split)"
    else:
        root = Path(data)
        folder = root / "val" if (root / "val").is_dir() else root
        if not folder.is_dir():
            raise DataError(f"{root}: no such data folder")
        classes, split = scan_image_folder(folder)
        where = str(folder)
    unknown = [c for c in classes if c not in run.classes]
    if unknown:
        raise DataError(f"{where}: classes {unknown[:5]} are not among the run's classes")
    remap = [run.classes.index(c) for c in classes]
    return where, Split(split.items, [remap[label] for label in split.labels])


def evaluate_run(run: Path, data: str | None = None, batch_size: int = 64, workers: int = 0) -> tuple[str, EvalResult, list[str]]:
    limits.check({"--batch-size": (batch_size, limits.BATCH)})
    rm = load_run_model(Path(run))
    where, split = eval_split(rm, data)
    loader = make_loader(split, eval_transform(rm.preprocess), batch_size, shuffle=False, workers=workers)
    torch.manual_seed(0)
    return where, evaluate_loader(rm.model, loader, torch.device("cpu"), len(rm.classes)), rm.classes


def evaluate_runner(runner: Runner, split: Split, pp: Preprocess, num_classes: int, batch_size: int = 64,
                    workers: int = 0, tick: Tick | None = None) -> EvalResult:
    """Accuracy of any backend's runner through the same preprocessing code path as `edgetl eval`;
    ``tick(n)`` after each batch of n images."""
    scorer = Scorer(num_classes)
    for x, y in make_loader(split, eval_transform(pp), batch_size, shuffle=False, workers=workers):
        scorer.update(runner.run(x.numpy()), y.numpy())
        if tick is not None:
            tick(len(y))
    return scorer.result()


def open_runner(path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
    """Any artifact's runner: a checkpoint (``*.pt``) or run folder as a `TorchRunner` on its rebuilt
    model, anything else through the deploy runtime."""
    path = Path(path)
    if not is_torch_artifact(path):
        return runtime.open_runner(path, device=device, threads=threads)
    run, ck = (path.parent, path.name) if path.suffix == ".pt" else (path, "best.pt")
    return TorchRunner(load_run_model(run, ck).model, device=device, threads=threads)


def open_predictor(artifact: Path, *, device: str = "cpu", threads: int | None = None, verify: bool = True) -> Predictor:
    """`Predictor` for any artifact, PyTorch checkpoints and run folders included."""
    runner = open_runner(artifact, device=device, threads=threads) if is_torch_artifact(artifact) else None
    return Predictor(artifact, device=device, threads=threads, verify=verify, runner=runner)
