"""`edgetl finetune`, `eval`, `check-data`, `models` and `explain`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from .. import limits, plots
from ..errors import printable
from ..explain.config import ExplainConfig
from ..train.config import DATA, OUTPUT, TrainConfig
from .app import app, err_console, out_console, run_command
from .log import ConsoleLog
from .options import config_values, with_config
from .render import print_eval

if TYPE_CHECKING:  # the trainer imports torch; --help must not
    from ..train.loop import Summary


def _default_out(model: str, data: str) -> Path:
    stem = Path(data).name if data not in ("digits", "cifar10") else data
    base = Path("runs") / f"{model.replace('/', '_')}-{stem}"
    out, i = base, 2
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


@app.command()
@with_config(TrainConfig, skip=("out",))
def finetune(
    ctx: typer.Context,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<model>-<data>).", rich_help_panel=OUTPUT)] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its last.pt.", rich_help_panel=OUTPUT)] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars or tables.", rich_help_panel=OUTPUT)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout (human output goes to stderr).", rich_help_panel=OUTPUT)] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Decode every image first (as `edgetl check-data`); unreadable files are left out and listed in RUN/data_check.json.", rich_help_panel=DATA)] = True,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse the data (exit 3) on any check-data finding instead of leaving bad files out.", rich_help_panel=DATA)] = False,
    **config: Any,
) -> None:
    """Fine-tune a pretrained CNN on a new image data set; writes best.pt, last.pt, run.json, metrics.csv."""

    def body() -> None:
        from ..errors import UsageError
        from ..train.checkpoint import resume_config

        if resume is not None:
            changed = sorted("--" + p.replace("_", "-") for p in ctx.params if p not in RESUME_OPTIONS
                             and _from_command_line(ctx, p))
            if changed:
                raise UsageError(f"--resume {resume} continues the run as its run.json records it; "
                                 f"{', '.join(changed)} would change it and are refused (only --epochs, the new "
                                 "total, can be given; start a new run with another --out to change the rest)")
            cfg = resume_config(resume, config["epochs"] if _from_command_line(ctx, "epochs") else None)
        else:
            cfg = TrainConfig(**config_values(config), out=str(out or _default_out(config["model"], config["data"])))
        summary = train_with_display(cfg, resume is not None, quiet, as_json,
                                      "strict" if strict else "skip" if check else "off")
        if as_json and os.environ.get("RANK", "0") == "0":
            print(json.dumps({k: v for k, v in summary.__dict__.items()}, default=float))

    run_command(body)


RESUME_OPTIONS = {"resume", "epochs", "quiet", "as_json", "check", "strict"}  # the rest would change the run


def _from_command_line(ctx: typer.Context, param: str) -> bool:
    source = ctx.get_parameter_source(param)  # by name: Typer may bring its own copy of click's enum
    return source is not None and source.name == "COMMANDLINE"


def train_with_display(cfg: TrainConfig, resume: bool, quiet: bool, as_json: bool, check: str = "skip") -> Summary:
    from ..train.loop import finetune as run_finetune
    from .progress import QuietHooks, RichHooks, summary_table

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
        if not plots.available():
            err_console.print(f"curves.png not drawn: matplotlib is not installed ({plots.INSTALL_HINT})",
                              highlight=False, markup=False)
    return summary


@app.command("eval")
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder written by `edgetl finetune`.")],
    data: Annotated[Optional[str], typer.Option(help="Evaluate on this ImageFolder (its val/ if present) instead of the run's own validation split.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result on stdout.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the confusion matrix as a heat map into this PNG file.")] = None,
) -> None:
    """Top-1/top-5, per-class accuracy and the confusion matrix of a run's best checkpoint."""

    def body() -> None:
        from ..evaluate import evaluate_run

        if plot is not None:
            plots.require()
        where, res, classes = evaluate_run(run, data, batch_size)
        if plot is not None:
            plots.confusion_heatmap(res.confusion, classes, plot, f"{run.name} on {where}: top-1 {res.top1:.2f}%")
            err_console.print(f"confusion matrix drawn in {printable(str(plot))}", highlight=False, markup=False)
        if as_json:
            print(json.dumps({"data": where, "top1": res.top1, "top5": res.top5, "loss": res.loss,
                              "per_class": dict(zip(classes, res.per_class())),
                              "confusion": res.confusion.tolist(), "classes": classes}))
            return
        print_eval(where, res, classes)

    run_command(body)


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

        from ..data.check import check_data

        limits.check({"--limit": (limit, limits.NON_NEGATIVE)})
        report = check_data(path, calib, min_side=min_side, max_megapixels=max_megapixels, workers=workers,
                            log=ConsoleLog(err_console, brief=True))
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            for line in report.lines(limit):
                out_console.print(escape(line), highlight=False, soft_wrap=True)
        report.raise_for(strict)

    run_command(body)


@app.command()
def models(
    all_models: Annotated[bool, typer.Option("--all", help="Every torchvision and timm classification model, not just the edge-friendly list.")] = False,
    pattern: Annotated[Optional[str], typer.Option("--filter", help="Only names matching this glob or substring.")] = None,
) -> None:
    """Models `--model` accepts, marking those whose ImageNet weights are available offline."""

    def body() -> None:
        from ..models import list_models

        rows = list_models(all_models, pattern)
        if not rows:
            hint = "" if all_models else "; --all lists every torchvision and timm model"
            err_console.print(f"no model matches {printable(pattern or '')!r}{hint}", markup=False, highlight=False)
            raise typer.Exit(1)
        t = Table(title="models (offline: ImageNet weights load without a download)")
        t.add_column("name")
        t.add_column("source")
        t.add_column("offline")
        for name, family, offline in rows:
            t.add_row(name, family, "[green]yes[/]" if offline else "no")
        out_console.print(t)
        if all_models:
            out_console.print("(timm's offline state is not probed with --all; filter with --filter to see it)")

    run_command(body)


@app.command()
@with_config(ExplainConfig, skip=("run", "images"))
def explain(
    run: Annotated[Path, typer.Argument(help="Run folder written by `edgetl finetune`.")],
    images: Annotated[Optional[list[Path]], typer.Argument(help="Images or folders to explain (default: a stratified sample of the validation split).")] = None,
    **config: Any,
) -> None:
    """What the model looks at (class-activation maps), what fine-tuning changed (per-stage weight change,
    confusions), and what INT8 changed (the images whose prediction flips): a report folder with index.html
    and explain.json."""

    def body() -> None:
        from ..explain.report import explain as run_explain

        cfg = ExplainConfig(run=str(run), images=tuple(str(p) for p in images or ()), **config_values(config))
        doc = run_explain(cfg, ConsoleLog(err_console))
        int8 = doc["what_int8_changed"]
        out_console.print(
            f"report in {printable(str(cfg.out_dir / 'index.html'))}: {len(doc['where_the_model_looks']['images'])} "
            f"image(s) explained; {doc['what_finetuning_changed']['summary']}"
            + (f" INT8: {int8['flips']} flip(s), net {int8['delta_top1']:+.2f} points." if int8 else ""),
            highlight=False, markup=False)

    run_command(body)
