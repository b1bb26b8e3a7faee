"""Thin Typer commands: parse, call one library function, print. Heavy imports stay inside commands."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import limits
from .errors import Interrupted, one_line, printable

app = typer.Typer(
    name="edgetl", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    help="Fine-tune a pretrained CNN, export verified ONNX / INT8 / TensorRT artifacts, and benchmark them.",
)


def _console(stderr: bool = False) -> Console:
    """Piped into a log, rich would assume 80 columns and cut the tables to ellipses: give logs room instead."""
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, width=None if tty or "COLUMNS" in os.environ else 200)


out_console = _console()
err_console = _console(stderr=True)


class Strategy(str, Enum):
    full = "full"
    head = "head"
    partial = "partial"


class CacheMode(str, Enum):
    auto = "auto"
    memory = "memory"
    disk = "disk"
    off = "off"


class Optim(str, Enum):
    adamw = "adamw"
    sgd = "sgd"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _guard(fn: Callable[[], Any]) -> Any:
    """Run a command body; library errors become one red line and their exit codes."""
    from .errors import EdgetlError

    try:
        return fn()
    except EdgetlError as e:
        from rich.markup import escape

        text = one_line(e) if "Original Traceback" in str(e) else printable(str(e))  # names stay on the line
        err_console.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except Interrupted as e:
        import signal

        for s in (signal.SIGINT, signal.SIGTERM):  # stopping already: a second Ctrl-C must not
            signal.signal(s, signal.SIG_IGN)        # print a traceback from the exit path
        err_console.print(f"[yellow]{e}[/]: the last complete epoch is in last.pt; continue with --resume")
        raise typer.Exit(e.exit_code) from None


def _default_out(model: str, data: str) -> Path:
    stem = Path(data).name if data not in ("digits", "cifar10") else data
    base = Path("runs") / f"{model.replace('/', '_')}-{stem}"
    out, i = base, 2
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


@app.command()
def finetune(
    ctx: typer.Context,
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
    channels_last: Annotated[bool, typer.Option("--channels-last/--no-channels-last", help="channels_last memory format (default: on; about 1.7x faster training steps than NCHW on CPUs too).")] = True,
    cache: Annotated[CacheMode, typer.Option(help="Decode images once into a uint8 cache and augment whole batches as tensors: auto (memory when it fits, else a file under ~/.cache/edgetl), memory, disk, or off (PIL per image in DataLoader workers).")] = CacheMode.auto,
    feature_cache: Annotated[bool, typer.Option("--feature-cache/--no-feature-cache", help="With --strategy head: run the frozen backbone once and train the head on cached features.")] = True,
    feature_views: Annotated[int, typer.Option(help="With the feature cache: cache this many augmented views of the training set and cycle through them (0: one un-augmented view).")] = 0,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model (pays off on GPUs; compiling takes minutes on a CPU).")] = False,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes (default: cores - 1, at most 4).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<model>-<data>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its last.pt.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars or tables.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout (human output goes to stderr).")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Decode every image first (as `edgetl check-data`); unreadable files are left out and listed in RUN/data_check.json.")] = True,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse the data (exit 3) on any check-data finding instead of leaving bad files out.")] = False,
) -> None:
    """Fine-tune a pretrained CNN on a new image data set; writes best.pt, last.pt, run.json, metrics.csv."""

    def body() -> None:
        from .errors import UsageError
        from .train.config import TrainConfig
        from .train.loop import resume_config

        if resume is not None:
            changed = sorted("--" + p.replace("_", "-") for p in ctx.params if p not in RESUME_OPTIONS
                             and _from_command_line(ctx, p))
            if changed:
                raise UsageError(f"--resume {resume} continues the run as its run.json records it; "
                                 f"{', '.join(changed)} would change it and are refused (only --epochs, the new "
                                 "total, can be given; start a new run with another --out to change the rest)")
            cfg = resume_config(resume, epochs if _from_command_line(ctx, "epochs") else None)
        else:
            cfg = TrainConfig(
                data=data, out=str(out or _default_out(model, data)), model=model, weights=weights,
                val_split=val_split, img_size=img_size, strategy=strategy.value, unfreeze=unfreeze,
                backbone_lr_scale=backbone_lr_scale, epochs=epochs, batch_size=batch_size,
                optimizer=optimizer.value, lr=lr, weight_decay=weight_decay, label_smoothing=label_smoothing,
                warmup_epochs=warmup_epochs, clip_grad=clip_grad, early_stop=early_stop, hflip=hflip,
                trivial_augment=trivial_augment, seed=seed, device=device.value, amp=amp,
                channels_last=channels_last, workers=workers, cache=cache.value, feature_cache=feature_cache,
                feature_views=feature_views, compile=compile,
            )
        summary = _train_with_display(cfg, resume is not None, quiet, as_json,
                                      "strict" if strict else "skip" if check else "off")
        if as_json and os.environ.get("RANK", "0") == "0":
            print(json.dumps({k: v for k, v in summary.__dict__.items()}, default=float))

    _guard(body)


RESUME_OPTIONS = {"resume", "epochs", "quiet", "as_json", "check", "strict"}  # the rest would change the run


def _from_command_line(ctx: typer.Context, param: str) -> bool:
    source = ctx.get_parameter_source(param)  # by name: Typer may bring its own copy of click's enum
    return source is not None and source.name == "COMMANDLINE"


def _train_with_display(cfg: Any, resume: bool, quiet: bool, as_json: bool, check: str = "skip") -> Any:
    from .progress import QuietHooks, RichHooks, summary_table
    from .train.loop import finetune as run_finetune

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 talks
        quiet, as_json = True, False
    console = err_console if as_json else out_console
    hooks = QuietHooks(err_console) if quiet else RichHooks(console)
    try:
        summary = run_finetune(cfg, resume=resume, hooks=hooks, check=check)
    finally:
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
                      f"loss {res.loss:.4f}, {res.images} images")
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


@app.command("check-data")
def check_data_cmd(
    path: Annotated[Path, typer.Argument(help="ImageFolder root as `finetune --data` takes it: train/ + val/, or one folder of class folders.")],
    calib: Annotated[Optional[Path], typer.Option(help="Also check a calibration folder (an ImageFolder or a flat folder of images) against the training classes.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 3 on any finding, warnings included (default: only on problems that stop training).")] = False,
    min_side: Annotated[int, typer.Option(help="Warn about images whose shorter side is below this (px).")] = 16,
    max_megapixels: Annotated[float, typer.Option(help="Warn about images larger than this; Pillow refuses about 89 MP and up as possible decompression bombs.")] = 40.0,
    workers: Annotated[Optional[int], typer.Option(help="Decoding threads (default: one per CPU core, at most 8).")] = None,
    limit: Annotated[int, typer.Option(help="Findings to list (all of them are in --json).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="The full report as JSON on stdout.")] = False,
) -> None:
    """Decode every image and report what `finetune` would leave out or refuse: corrupt, truncated,
    zero-byte and non-image files, hidden folders, empty classes, classes that differ between
    train, val and calibration, symlinks leaving the folder, image modes and sizes. Reads only."""

    def body() -> None:
        from rich.markup import escape

        from .data.check import check_data

        limits.check({"--limit": (limit, limits.NON_NEGATIVE)})
        report = check_data(path, calib, min_side=min_side, max_megapixels=max_megapixels, workers=workers)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            for line in report.lines(limit):
                out_console.print(escape(line), highlight=False, soft_wrap=True)
        report.raise_for(strict)

    _guard(body)


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
    """The whole chain on the embedded default: bundled EfficientNet-Lite0 fine-tuned on scikit-learn's
    digits, evaluated, exported to verified FP32, FP16 and INT8 ONNX, and benchmarked."""

    def body() -> None:
        from .evaluate import evaluate_run
        from .export.options import ExportConfig
        from .export.pipeline import export
        from .train.config import TrainConfig

        run = out or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
        cfg = TrainConfig(data="digits", out=str(run), epochs=epochs, img_size=img_size, batch_size=32,
                          lr=2e-3, warmup_epochs=0.3)
        _train_with_display(cfg, False, False, False)
        where, res, classes = evaluate_run(run)
        _print_eval(where, res, classes)
        out_console.rule("export")
        report = export(ExportConfig(run=str(run), int8=True, int8_cpu=True, fp16=True, calib_size=256),
                        log=lambda m: out_console.print(m, highlight=False, markup=False))
        out_console.print(_artifact_table(report))
        out_console.rule("bench")
        from .bench.config import BenchConfig
        from .bench.report import table
        from .bench.session import run_bench

        bench_report = run_bench(BenchConfig(targets=[str(run)], backends=("torch", "ort-fp32", "ort-fp16", "ort-int8"),
                                             batch_sizes=(1, 8), min_seconds=0.5, e2e=False),
                                 log=lambda m: out_console.print(m, highlight=False, markup=False))
        out_console.print(table(bench_report, out_console.width))
        int8, share = report.accuracy["int8"], report.int8 or {}
        out_console.print(
            f"[bold green]demo done[/]: digits validation top-1 {res.top1:.2f}% (PyTorch), "
            f"INT8 ONNX {int8['top1']:.2f}% ({int8['delta_top1']:+.2f}, simulated; {share.get('int8_layers')}/"
            f"{share.get('weighted_layers')} weighted layers and {100 * share.get('int8_mac_share', 0):.0f}% of the "
            f"MACs in INT8); run at [bold]{run}[/], artifacts in [bold]{run / 'export'}[/]"
        )

    _guard(body)


class CalibMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class CalibMode(str, Enum):
    explicit = "explicit"
    implicit = "implicit"


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder written by `edgetl finetune`.")],
    int8: Annotated[bool, typer.Option("--int8", help="Also write model.int8.onnx: calibrated, TensorRT-shaped Q/DQ, accuracy-guarded.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write model.fp16.onnx (float16 compute, float32 I/O).")] = False,
    calib: Annotated[Optional[Path], typer.Option(help="Calibration images: an ImageFolder or a flat folder (default: a stratified sample of the run's training data).")] = None,
    calib_size: Annotated[int, typer.Option(help="Calibration images to use.")] = 512,
    calib_method: Annotated[CalibMethod, typer.Option(help="How activation ranges are chosen: minmax (observed range), entropy (TensorRT's KL-divergence threshold, 2,048 bins), percentile (99.999%).")] = CalibMethod.minmax,
    int8_cpu: Annotated[bool, typer.Option("--int8-cpu", help="With --int8: also write model.int8-cpu.onnx, INT8 laid out for ONNX Runtime on CPUs (uint8 activations); 2-4x faster than FP32 here where the TensorRT layout is slower.")] = False,
    bias_correction: Annotated[bool, typer.Option(help="Correct each quantized conv's bias for the mean error INT8 adds to its output, layer by layer on calibration images (lifted cifar10-mini from -0.90 to -0.10 points).")] = True,
    quantize_stem: Annotated[bool, typer.Option(help="Quantize the first layer too (it sees raw pixels; by default it stays in float, which costs little and saved ~1 point on cifar10-mini).")] = False,
    calib_mode: Annotated[CalibMode, typer.Option(help="explicit: engines build from model.int8.onnx (TensorRT 8.5-11); implicit: TensorRT's IInt8EntropyCalibrator2 (8.x/10.x only).")] = CalibMode.explicit,
    max_drop: Annotated[float, typer.Option(help="Largest INT8 top-1 drop (points, simulated numerics) accepted; past it, the most sensitive layers stay in float.")] = 1.0,
    min_int8: Annotated[float, typer.Option(help="Least share of the MACs that must run in INT8; a model.int8.onnx below it is mostly float and export fails (0 accepts any).")] = 0.8,
    opset: Annotated[int, typer.Option(help="ONNX opset; 17 keeps TensorRT 8.5 (JetPack 5) able to read it.")] = 17,
    batch: Annotated[str, typer.Option(help="'dynamic' or a fixed batch size N.")] = "dynamic",
    engine: Annotated[bool, typer.Option("--engine/--no-engine", help="Build TensorRT engines where TensorRT and a GPU are present.")] = True,
    workspace: Annotated[int, typer.Option(help="TensorRT builder workspace limit in MB.")] = 2048,
    dla: Annotated[Optional[int], typer.Option(help="Jetson DLA core for the engines (GPU fallback on).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/export).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the export report as JSON on stdout.")] = False,
) -> None:
    """Verified ONNX, FP16 and calibrated INT8 artifacts (and TensorRT engines where possible) plus manifest.json."""

    def body() -> None:
        from .export.options import ExportConfig
        from .export.pipeline import export

        cfg = ExportConfig(run=str(run), out=str(out) if out else None, int8=int8, fp16=fp16,
                           calib=str(calib) if calib else None, calib_size=calib_size,
                           calib_method=calib_method.value, quantize_stem=quantize_stem, bias_correction=bias_correction, int8_cpu=int8_cpu, calib_mode=calib_mode.value, max_drop=max_drop,
                           min_int8=min_int8, opset=opset, batch=batch, engine=engine, workspace_mb=workspace, dla=dla)
        console = err_console if as_json else out_console
        report = export(cfg, log=lambda m: console.print(m, highlight=False, markup=False))
        if as_json:
            print(json.dumps(report.__dict__, default=str))
            return
        console.print(_artifact_table(report))

    _guard(body)


def _artifact_table(report: Any) -> Table:
    t = Table(title=f"artifacts in {report.out}")
    for col in ("file", "precision", "MB", "top-1", "Δ top-1", "numerics", "INT8 layers", "sha256"):
        t.add_column(col, justify="right" if col in ("MB", "top-1", "Δ top-1") else "left")
    for a in report.artifacts:
        acc = a.get("accuracy") or {}
        share = a.get("int8")
        t.add_row(a["file"], a["precision"], f"{a.get('size_bytes', 0) / 1e6:.1f}",
                  f"{acc['top1']:.2f}%" if "top1" in acc else "-",
                  f"{acc['delta_top1']:+.2f}" if "delta_top1" in acc else "-",
                  acc.get("numerics", "-") + (f" ({acc['isa']})" if acc.get("isa") else ""),
                  f"{share['int8_layers']}/{share['weighted_layers']}, {100 * share['int8_mac_share']:.0f}% MACs"
                  if share else "-", a["sha256"][:12])
    return t


@app.command()
def calib(
    data: Annotated[str, typer.Option(help="Data to sample from: an ImageFolder root, 'digits' or 'cifar10' (its training split is used).")],
    out: Annotated[Path, typer.Option(help="Folder to write, e.g. calib/NAME; must be new or empty.")],
    size: Annotated[int, typer.Option(help="Images in the set.")] = 512,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    val_split: Annotated[Optional[float], typer.Option(help="As in finetune, so the sample comes from the same training images.")] = None,
) -> None:
    """Write a seeded, class-stratified calibration set (copies, in <class>/ folders, plus calib.json)."""

    def body() -> None:
        from .export.int8.calibrate import write_calibration_set

        info = write_calibration_set(data, size, out, seed, val_split)
        for path, reason in list(info["skipped"].items())[:5]:
            err_console.print(f"skipped {printable(path)}: {printable(reason)}", markup=False, highlight=False)
        if len(info["skipped"]) > 5:
            err_console.print(f"skipped {len(info['skipped']) - 5} more (listed in {out / 'calib.json'})")
        out_console.print(f"wrote {info['size']} images from {info['source']} to {out} "
                          f"({len(info['classes'])} classes; list in {out / 'calib.json'}"
                          + (f"; {len(info['skipped'])} bad file(s) skipped" if info["skipped"] else "") + ")")

    _guard(body)


@app.command()
def build(
    onnx: Annotated[Path, typer.Argument(help="ONNX to build: model.int8.onnx (Q/DQ) for --int8, model.fp16.onnx for --fp16 (model.onnx also works on TensorRT 8.x/10.x).")],
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 engine. TensorRT 11 builds strongly typed networks only, so it needs the FP16 ONNX.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 engine from the Q/DQ ONNX (unquantized layers in FP16 on TensorRT 8.x/10.x). Without --fp16/--int8 the precision follows the file name.")] = False,
    calib: Annotated[Optional[Path], typer.Option(help="Calibration image folder: TensorRT's own INT8 calibration of an FP32 ONNX (TensorRT 8.x/10.x only); preprocessing from the manifest.json next to the ONNX.")] = None,
    calib_cache: Annotated[Optional[Path], typer.Option(help="With --calib: TensorRT calibration cache, read when it exists (delete it to recalibrate), written after calibration.")] = None,
    workspace: Annotated[int, typer.Option(help="Builder workspace limit in MB.")] = 1024,
    dla: Annotated[Optional[int], typer.Option(help="Run on this DLA core (Jetson), unsupported layers fall back to the GPU; needs --fp16 or --int8.")] = None,
    opt_batch: Annotated[int, typer.Option(help="Batch size TensorRT tunes its kernels for.")] = 1,
    max_batch: Annotated[int, typer.Option(help="Largest batch the engine accepts (dynamic-batch ONNX; a fixed-batch ONNX keeps its batch).")] = 32,
    timing_cache: Annotated[Optional[Path], typer.Option(help="Tactic timing cache: loaded when it exists, saved after the build; makes rebuilds faster.")] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Engine file (default: next to the ONNX, e.g. model.int8.engine). Its provenance goes to ENGINE.json beside it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the engine's provenance record (the sidecar) on stdout.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Refuse an ONNX file whose sha256 differs from the manifest.json beside it (exit 4).")] = True,
) -> None:
    """Build a TensorRT engine on this machine; it runs only with this TensorRT version and this GPU."""

    def body() -> None:
        import time

        from rich.markup import escape

        from .artifacts.engine import default_engine_path, sidecar_path
        from .artifacts.manifest import precision_of
        from .engines.builder import build_engine, check_build_numbers
        from .engines.calibrator import calibration_batches, onnx_preprocess
        from .errors import UsageError

        check_build_numbers(opt_batch, max_batch, workspace, dla)
        if verify:
            from .runtime.verify import verify_artifact

            verify_artifact(onnx)
        if fp16 and int8:
            raise UsageError("--fp16 and --int8 exclude each other (an INT8 engine already runs its unquantized layers in FP16 where it can)")
        precision = "int8" if int8 else "fp16" if fp16 else precision_of(onnx.name)
        engine = out or default_engine_path(onnx, precision)
        batches = calibration_batches(calib, onnx_preprocess(onnx), 8) if calib is not None else None
        start = time.perf_counter()
        with err_console.status(f"building {escape(str(engine))} ({precision}); TensorRT takes a minute or more"):
            meta = build_engine(onnx, engine, precision, opt_batch=opt_batch, max_batch=max_batch,
                                workspace_mb=workspace, dla_core=dla, timing_cache=timing_cache,
                                calibrator_batches=batches, calib_cache=calib_cache)
        if as_json:
            print(json.dumps(meta, indent=2))
            return
        out_console.print(
            f"[bold green]built[/] {escape(str(engine))} ({meta['precision']}, {meta['calibration'] or 'no calibration'}, "
            f"batch {meta['min_batch']}..{meta['max_batch']}, {engine.stat().st_size / 1e6:.1f} MB, "
            f"{time.perf_counter() - start:.0f} s) for TensorRT {meta['tensorrt_version']} on {meta['gpu']} "
            f"(sm {meta['compute_capability']}); provenance in {escape(str(sidecar_path(engine)))}",
            highlight=False, soft_wrap=True)

    _guard(body)


@app.command()
def predict(
    artifact: Annotated[Path, typer.Argument(help="model.onnx, model.int8.onnx, model.fp16.onnx, *.engine, best.pt or a run folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option(help="Classes to report per image.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 16,
    device: Annotated[Device, typer.Option(help="cpu, or cuda for ONNX Runtime's CUDA provider / PyTorch on GPU (engines always run on the GPU).")] = Device.cpu,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image (JSON lines) on stdout.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Refuse an artifact whose sha256 differs from the manifest.json beside it (exit 4).")] = True,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Exit 0 when some images could not be read (they are listed either way; default: exit 3 after predicting the rest).")] = False,
) -> None:
    """Classify images with an exported artifact; ONNX and TensorRT need no PyTorch."""

    def body() -> None:
        from .runtime.base import is_torch_artifact
        from .runtime.predictor import Predictor, expand_images

        limits.check({"--top-k": (top_k, limits.COUNT), "--batch-size": (batch_size, limits.BATCH)})

        files = expand_images(images)
        where = "cpu" if device is Device.auto else device.value
        if is_torch_artifact(artifact):  # only a checkpoint imports torch
            from .evaluate import open_predictor

            pred = open_predictor(artifact, device=where, verify=verify)
        else:
            pred = Predictor(artifact, device=where, verify=verify)
        bad: list[tuple[str, str]] = []
        results = pred.iter_predict(files, top_k, batch_size, on_error=lambda name, e: bad.append((name, str(e))))
        if as_json:
            for p in results:
                print(json.dumps(p.to_dict()), flush=True)
        else:
            t = Table(title=f"{artifact} ({pred.runner.backend}, {pred.runner.precision})")
            t.add_column("image")
            for i in range(min(top_k, len(pred.classes))):
                t.add_column(f"top-{i + 1}")
            for p in results:
                t.add_row(printable(p.source), *[printable(f"{c} {100 * prob:.1f}%") for _, c, prob in p.top])
            out_console.print(t)
        if bad:
            from rich.markup import escape

            err_console.print(f"{len(bad)} of {len(files)} image(s) could not be read:", highlight=False)
            for _, why in bad:
                err_console.print(f"  {escape(printable(why))}", highlight=False, soft_wrap=True)
            if not skip_bad:
                raise typer.Exit(3)

    _guard(body)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report on stdout.")] = False,
) -> None:
    """What this machine can run: Python, PyTorch, ONNX Runtime providers, TensorRT, GPU, Jetson/JetPack, each backend tried for real, with the command that fixes what is missing."""

    def body() -> None:
        from .doctor import collect, render

        report = collect()
        if as_json:
            print(json.dumps(report, indent=2))
            return
        render(report, out_console)

    _guard(body)


@app.command()
def bench(
    targets: Annotated[list[Path], typer.Argument(help="Run folders (the original best.pt against every artifact in RUN/export), export folders, or artifact files (.onnx, .engine, best.pt).")],
    data: Annotated[Optional[str], typer.Option(help="Validation data: an ImageFolder (its val/ if present), 'digits' or 'cifar10' (default: the run's own validation split).")] = None,
    backends: Annotated[str, typer.Option(help="Comma-separated rows to produce: torch, ort-fp32, ort-fp16, ort-int8, trt-fp16, trt-int8.")] = "torch,ort-fp32,ort-fp16,ort-int8,trt-fp16,trt-int8",
    batch_size: Annotated[str, typer.Option(help="Comma-separated batch sizes to time.")] = "1,8",
    warmup: Annotated[int, typer.Option(help="Untimed calls before each row's timing (per round).")] = 10,
    iters: Annotated[Optional[int], typer.Option(help="Timed calls per row and round (default: at least 100 samples over all rounds and --min-seconds per round).")] = None,
    min_seconds: Annotated[Optional[float], typer.Option(help="Least timed seconds per row and round (default 1).")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="Interleaved rounds over all rows; p50 is the median of the rounds' medians (default 1; 3 with --baseline or --save-baseline).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for PyTorch and ONNX Runtime (default: the cores this process may use).")] = None,
    device: Annotated[Device, typer.Option(help="auto: PyTorch on CUDA when it sees a GPU, ONNX Runtime on CPU; cuda: both on CUDA. TensorRT always runs on the GPU.")] = Device.auto,
    e2e: Annotated[bool, typer.Option("--e2e/--no-e2e", help="Also time decode + preprocess + inference from image files.")] = True,
    roofline: Annotated[bool, typer.Option("--roofline", help="Measure this machine's matrix-multiply peaks, count the model's FLOPs, report GFLOP/s and the fraction of peak.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report (schema in the README) to this file.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write a pull-request-ready markdown table to this file.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="Gate against an earlier --json report: exit 1 on a latency or accuracy regression.")] = None,
    max_regression: Annotated[float, typer.Option(help="Largest accepted p50 latency growth against the baseline, as a fraction.")] = 0.10,
    max_drop: Annotated[float, typer.Option(help="Largest accepted top-1 drop against the baseline, in points.")] = 1.0,
    save_baseline: Annotated[Optional[Path], typer.Option(help="Write this report as a baseline (not when the gate fails).")] = None,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Let a gate that compared no row pass (default: exit 5, since a baseline from another machine or with no common rows checks nothing).")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Refuse artifacts whose sha256 differs from the manifest.json beside them (exit 4).")] = True,
    quiet: Annotated[bool, typer.Option(help="No progress lines.")] = False,
) -> None:
    """Accuracy and latency of the original model and every exported artifact, side by side; a CI regression gate."""

    def body() -> None:
        from rich.markup import escape

        from .bench.config import BenchConfig, parse_backends, parse_batch_sizes
        from .bench.report import gate_lines
        from .bench.report import markdown as to_markdown
        from .bench.report import save_report, table
        from .bench.session import run_bench
        from .fileio import atomic_write_text

        cfg = BenchConfig(targets=[str(t) for t in targets], data=data, backends=parse_backends(backends),
                          batch_sizes=parse_batch_sizes(batch_size), warmup=warmup, iters=iters,
                          min_seconds=min_seconds, rounds=rounds, threads=threads, device=device.value, e2e=e2e,
                          roofline=roofline, baseline=str(baseline) if baseline else None,
                          max_regression=max_regression, max_drop=max_drop,
                          save_baseline=str(save_baseline) if save_baseline else None,
                          verify=verify, allow_empty=allow_empty)
        report = run_bench(cfg, log=None if quiet else lambda m: err_console.print(escape(m), highlight=False))
        out_console.print(table(report, out_console.width))
        lines = gate_lines(report)
        for i, line in enumerate(lines):
            style = "" if i else "[bold green]" if report["gate"]["passed"] else "[bold red]"
            out_console.print(f"{style}{escape(line)}", highlight=False, soft_wrap=True)
        if json_out:
            save_report(json_out, report)
        if markdown:
            atomic_write_text(markdown, to_markdown(report))
        failed = report["gate"] is not None and not report["gate"]["passed"]
        if save_baseline:
            shown = escape(str(save_baseline))
            if failed:
                err_console.print(f"baseline {shown} not written: the gate failed")
            else:
                out_console.print(f"baseline written to {shown}", highlight=False)
        if failed:
            from .bench.gate import GATE_EMPTY_EXIT

            raise typer.Exit(1 if report["gate"]["failures"] else GATE_EMPTY_EXIT)

    _guard(body)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
