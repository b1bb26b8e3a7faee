"""Thin Typer commands: parse, call one library function, print. Heavy imports stay inside commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="edgetl", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    help="Fine-tune a pretrained CNN, export verified ONNX / INT8 / TensorRT artifacts, and benchmark them.",
)
out_console = Console()
err_console = Console(stderr=True)


class Strategy(str, Enum):
    full = "full"
    head = "head"
    partial = "partial"


class Optim(str, Enum):
    adamw = "adamw"
    sgd = "sgd"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _one_line(e: BaseException) -> str:
    """Errors re-raised from DataLoader workers carry a traceback; keep only the original message."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(e).__name__


def _guard(fn: Callable[[], Any]) -> Any:
    """Run a command body; library errors become one red line and DESIGN.md's exit codes."""
    from .errors import EdgetlError

    try:
        return fn()
    except EdgetlError as e:
        err_console.print(f"[red]error:[/] {_one_line(e)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as e:
        if type(e).__name__ == "Interrupted":
            err_console.print(f"[yellow]{e}[/]: the last complete epoch is in last.pt; continue with --resume")
            raise typer.Exit(getattr(e, "exit_code", 130)) from None
        raise


def _default_out(model: str, data: str) -> Path:
    stem = Path(data).name if data not in ("digits", "cifar10") else data
    base = Path("runs") / f"{model.replace('/', '_')}-{stem}"
    out, i = base, 2
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


@app.command()
def finetune(
    data: Annotated[str, typer.Option(help="ImageFolder root (train/ + val/, or one folder with --val-split), 'digits' (bundled, offline) or 'cifar10' (torchvision download).")] = "digits",
    model: Annotated[str, typer.Option(help="torchvision or timm model name ('timm/NAME' forces timm); see `edgetl models`.")] = "efficientnet_lite0",
    weights: Annotated[str, typer.Option(help="imagenet | none | FILE (.pt/.pth state dict or .safetensors).")] = "imagenet",
    val_split: Annotated[Optional[float], typer.Option(help="Hold out this stratified fraction for validation (default 0.2 when there is no val/).")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Input crop size in px; default: the model's pretrained config.")] = None,
    strategy: Annotated[Strategy, typer.Option(help="full: every weight; head: new classifier only (frozen BN stays in eval); partial: last --unfreeze stages + head.")] = Strategy.full,
    unfreeze: Annotated[int, typer.Option(help="Stages to train with --strategy partial.")] = 2,
    backbone_lr_scale: Annotated[float, typer.Option(help="Backbone learning rate = lr x this (0 < s <= 1).")] = 1.0,
    epochs: Annotated[int, typer.Option(help="Epochs (with --resume: the new total).")] = 10,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    optimizer: Annotated[Optim, typer.Option(help="Optimizer.")] = Optim.adamw,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default 1e-3 adamw, 1e-2 sgd).")] = None,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (never on norm or bias parameters).")] = 0.01,
    label_smoothing: Annotated[float, typer.Option(help="Cross-entropy label smoothing.")] = 0.1,
    warmup_epochs: Annotated[float, typer.Option(help="Linear warm-up before cosine decay (capped at 20% of training).")] = 1.0,
    clip_grad: Annotated[float, typer.Option(help="Clip the gradient norm to this; 0 = off.")] = 0.0,
    early_stop: Annotated[int, typer.Option(help="Stop after N epochs without a better val top-1; 0 = off.")] = 0,
    hflip: Annotated[Optional[bool], typer.Option("--hflip/--no-hflip", help="Random horizontal flips (default: on, off for digits).")] = None,
    trivial_augment: Annotated[bool, typer.Option(help="Add TrivialAugmentWide to the training augmentation.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the split, shuffling, augmentation and init.")] = 0,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when PyTorch sees a GPU.")] = Device.auto,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision (default: on for CUDA: bf16 where supported, else fp16 + GradScaler; off on CPU).")] = None,
    channels_last: Annotated[bool, typer.Option(help="channels_last memory format.")] = True,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes (default: cores - 1, at most 4).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<model>-<data>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its last.pt.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars or tables.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout (human output goes to stderr).")] = False,
) -> None:
    """Fine-tune a pretrained CNN on a new image data set; writes best.pt, last.pt, run.json, metrics.csv."""

    def body() -> None:
        from .config import TrainConfig
        from .train import finetune as run_finetune
        from .train import resume_config

        if resume is not None:
            cfg = resume_config(resume, epochs if _given("--epochs") else None)
        else:
            cfg = TrainConfig(
                data=data, out=str(out or _default_out(model, data)), model=model, weights=weights,
                val_split=val_split, img_size=img_size, strategy=strategy.value, unfreeze=unfreeze,
                backbone_lr_scale=backbone_lr_scale, epochs=epochs, batch_size=batch_size,
                optimizer=optimizer.value, lr=lr, weight_decay=weight_decay, label_smoothing=label_smoothing,
                warmup_epochs=warmup_epochs, clip_grad=clip_grad, early_stop=early_stop, hflip=hflip,
                trivial_augment=trivial_augment, seed=seed, device=device.value, amp=amp,
                channels_last=channels_last, workers=workers,
            )
        summary = _train_with_display(cfg, resume is not None, quiet, as_json)
        if as_json:
            print(json.dumps({k: v for k, v in summary.__dict__.items()}, default=float))

    _guard(body)


def _given(flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in sys.argv[1:])


def _train_with_display(cfg: Any, resume: bool, quiet: bool, as_json: bool) -> Any:
    from .progress import RichHooks, summary_table
    from .train import finetune as run_finetune

    console = err_console if as_json else out_console
    hooks = None if quiet else RichHooks(console)
    try:
        summary = run_finetune(cfg, resume=resume, hooks=hooks)
    finally:
        if hooks:
            hooks.close()
    if not quiet:
        console.print(summary_table(summary))
    return summary


@app.command("eval")
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder written by `edgetl finetune`.")],
    data: Annotated[Optional[str], typer.Option(help="Evaluate on this ImageFolder (its val/ if present) instead of the run's own validation split.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result on stdout.")] = False,
) -> None:
    """Top-1/top-5, per-class accuracy and the confusion matrix of a run's best checkpoint."""

    def body() -> None:
        from .evaluate import evaluate_run

        where, res, classes = evaluate_run(run, data, batch_size)
        if as_json:
            print(json.dumps({"data": where, "top1": res.top1, "top5": res.top5, "loss": res.loss,
                              "per_class": dict(zip(classes, res.per_class())),
                              "confusion": res.confusion.tolist(), "classes": classes}))
            return
        _print_eval(where, res, classes)

    _guard(body)


def _print_eval(where: str, res: Any, classes: list[str]) -> None:
    out_console.print(f"[bold]{where}[/]: top-1 [bold]{res.top1:.2f}%[/], top-5 {res.top5:.2f}%, "
                      f"loss {res.loss:.4f}, {int(res.confusion.sum())} images")
    t = Table(title="per class (rows: true, columns: predicted)")
    t.add_column("class")
    t.add_column("acc", justify="right")
    show_matrix = len(classes) <= 20
    if show_matrix:
        for c in classes:
            t.add_column(c[:6], justify="right")
    for i, (c, acc) in enumerate(zip(classes, res.per_class())):
        t.add_row(c, f"{acc:.1f}%", *([str(int(v)) for v in res.confusion[i]] if show_matrix else []))
    out_console.print(t)


@app.command()
def models(
    all_models: Annotated[bool, typer.Option("--all", help="Every torchvision and timm classification model, not just the edge-friendly list.")] = False,
    pattern: Annotated[Optional[str], typer.Option("--filter", help="Only names matching this glob or substring.")] = None,
) -> None:
    """Models `--model` accepts, marking those whose ImageNet weights are available offline."""

    def body() -> None:
        from .models import list_models

        rows = list_models(all_models, pattern)
        t = Table(title="models (offline: ImageNet weights load without a download)")
        t.add_column("name")
        t.add_column("source")
        t.add_column("offline")
        for name, family, offline in rows:
            t.add_row(name, family, "[green]yes[/]" if offline else "no")
        out_console.print(t)
        if all_models:
            out_console.print("(timm's offline state is not probed with --all; filter with --filter to see it)")

    _guard(body)


@app.command()
def demo(
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/demo-<time>).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 3,
    img_size: Annotated[int, typer.Option(help="Input size in px.")] = 64,
) -> None:
    """The whole chain on the embedded default: bundled EfficientNet-Lite0 fine-tuned on scikit-learn's digits."""

    def body() -> None:
        from .config import TrainConfig
        from .evaluate import evaluate_run

        run = out or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
        cfg = TrainConfig(data="digits", out=str(run), epochs=epochs, img_size=img_size, batch_size=32,
                          lr=2e-3, warmup_epochs=0.3)
        _train_with_display(cfg, False, False, False)
        where, res, classes = evaluate_run(run)
        _print_eval(where, res, classes)
        out_console.print(f"[bold green]demo done[/]: digits validation top-1 {res.top1:.2f}%; run at [bold]{run}[/] "
                          f"(edgetl eval {run})")

    _guard(body)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
