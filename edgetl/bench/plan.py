"""What to benchmark: the command-line targets grouped by model, and each one's rows (runnable or not, with why)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts.manifest import precision_of, read_manifest
from ..artifacts.record import describe
from ..artifacts.run import is_run, read_run
from ..errors import ArtifactError, UsageError
from ..images import Preprocess
from .config import BenchConfig


@dataclass
class Item:
    """One artifact on one backend, or the reason it cannot run here."""

    backend: str
    precision: str
    artifact: Path | None
    skip: str | None = None


@dataclass
class Target:
    """One model: its run folder (when present), its export folder, and the items benched for it."""

    run: Path | None
    export: Path
    classes: list[str]
    preprocess: Preprocess
    info: dict[str, Any] | None  # run.json
    model: str | None
    items: list[Item] = field(default_factory=list)
    all_artifacts: bool = False
    files: list[Path] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)  # the original's accuracy, for Δ top-1

    @property
    def name(self) -> str:
        return str(self.run or self.export)


def plan(cfg: BenchConfig) -> list[Target]:
    """Group the command-line targets by model and list each one's rows (runnable or not, with why)."""
    groups: dict[Path, Target] = {}
    for spec in cfg.targets:
        path = Path(spec)
        if not path.exists():
            raise UsageError(f"{path}: no such run folder or artifact")
        run, export, file = _locate(path)
        key = (run or export).resolve()
        if key not in groups:
            meta = describe(run or export)
            info = read_run(run).doc if run else None
            manifest = read_manifest(export)
            model = (info or {}).get("model") or (manifest.model if manifest else None)
            groups[key] = Target(run, export, meta.classes, meta.preprocess, info, model)
        target = groups[key]
        if file is None:
            target.all_artifacts = True
        elif file not in target.files:
            if _backend_of(file) not in cfg.backends:
                raise UsageError(f"{file}: its backend {_backend_of(file)} is not among --backends {','.join(cfg.backends)}")
            target.files.append(file)
    trt_ok, trt_why = tensorrt_available() if any(b.startswith("trt") for b in cfg.backends) else (False, "")
    for target in groups.values():
        target.items = _items(target, cfg.backends, trt_ok, trt_why)
    return list(groups.values())


def _locate(path: Path) -> tuple[Path | None, Path, Path | None]:
    """(run folder or None, export folder, the artifact file or None for 'every artifact')."""
    if path.is_dir():
        if is_run(path):
            return path, path / "export", None
        if (path / "manifest.json").is_file():
            return (path.parent if is_run(path.parent) else None), path, None
        raise UsageError(f"{path}: neither a run folder (run.json) nor an export folder (manifest.json)")
    _backend_of(path)  # refuses unknown file types
    if path.suffix == ".pt":
        if not is_run(path.parent):
            raise ArtifactError(f"{path}: no run.json beside it says which model it is")
        return path.parent, path.parent / "export", path
    run = path.parent.parent if is_run(path.parent.parent) else None
    return run, path.parent, path


def _backend_of(path: Path) -> str:
    if path.suffix == ".pt":
        return "torch"
    if path.suffix in (".onnx", ".engine"):
        return f"{'ort' if path.suffix == '.onnx' else 'trt'}-{precision_of(path.name)}"
    raise UsageError(f"{path}: not something bench runs (a run folder, .onnx, .engine or .pt)")


def _items(target: Target, backends: tuple[str, ...], trt_ok: bool, trt_why: str) -> list[Item]:
    items: list[Item] = []
    for backend in backends:
        if backend == "torch":  # the original (best.pt unless a checkpoint was named): the reference
            named = [f for f in target.files if f.suffix == ".pt"]
            if named or target.run:
                items.extend(Item("torch", "fp32", f) for f in named or [target.run / "best.pt"])
            else:
                items.append(Item("torch", "fp32", None, f"no run folder (best.pt, run.json) next to {target.export}"))
            continue
        kind, precision = backend.split("-")
        suffix = ".onnx" if kind == "ort" else ".engine"
        if target.all_artifacts:
            found = sorted(p for p in target.export.glob(f"*{suffix}")
                           if not p.name.startswith(".") and precision_of(p.name) == precision)
        else:
            found = [f for f in target.files if _backend_of(f) == backend]
        if kind == "trt" and not trt_ok:
            items.extend(Item(backend, precision, f, f"TensorRT cannot run here: {trt_why}") for f in found)
            if not found and target.all_artifacts:
                items.append(Item(backend, precision, None, f"TensorRT cannot run here: {trt_why}"))
            continue
        items.extend(Item(backend, precision, f) for f in found)
        if not found and target.all_artifacts:
            items.append(Item(backend, precision, None, _missing(target, kind, precision)))
    return items


def _missing(target: Target, kind: str, precision: str) -> str:
    run = target.run or "RUN"
    if kind == "ort":
        name = "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"
        how = f"edgetl export {run}" + ("" if precision == "fp32" else f" --{precision}")
        return f"no {name} in {target.export} (make it with `{how}`)"
    return (f"no model.{precision}.engine in {target.export} (build it here with "
            f"`edgetl build {target.export / f'model.{precision}.onnx'} --{precision}`)")


def tensorrt_available() -> tuple[bool, str]:
    from ..runtime.tensorrt import available

    return available()


def planned_device(backend: str, cfg: BenchConfig, torch_ok: bool) -> str:
    """TensorRT: cuda. PyTorch: cuda when asked, or with --device auto when it sees a GPU. ONNX Runtime:
    cpu unless --device cuda (its CPU path is a first-class target and every test runs it)."""
    if backend.startswith("trt"):
        return "cuda"
    if cfg.device != "auto" or backend != "torch":
        return "cuda" if cfg.device == "cuda" else "cpu"
    if not torch_ok:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
