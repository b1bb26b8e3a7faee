"""`edgetl build`, `predict`, `doctor` and `bench`: what runs where the model is deployed.

Torch-free and Python 3.8-compatible (the `edgetl-runtime` distribution ships these commands alone), so
Typer-evaluated annotations use `typing.List`/`Optional` and typing_extensions' `Annotated`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from .. import limits, plots
from ..bench.config import BACKENDS, ROWS, BenchConfig
from ..choices import Device
from ..errors import printable
from .app import app, err_console, out_console, run_command
from .log import ConsoleLog
from .options import config_values, with_config
from .render import layer_table

OUTPUT = "Output"
LAYERS_SHOWN = 10


@app.command()
def build(
    onnx: Annotated[Path, typer.Argument(help="ONNX to build: model.int8.onnx (Q/DQ) for --int8, model.fp16.onnx for --fp16 (model.onnx also works on TensorRT 8.x/10.x).")],
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 engine. TensorRT 11 builds strongly typed networks only, so it needs the FP16 ONNX.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 engine from the Q/DQ ONNX, strongly typed on TensorRT 10/11 (the ONNX decides each layer's precision; unquantized layers in FP32). Without --fp16/--int8 the precision follows the file name.")] = False,
    weak_typing: Annotated[bool, typer.Option("--weak-typing", help="TensorRT 8.5/10.x: FP16+INT8 builder flags instead of strong typing, so TensorRT may run unquantized layers in FP16 (faster, its choice; TensorRT 8.5's only mode; gone in 11).")] = False,
    profile: Annotated[bool, typer.Option("--profile", help="Build with DETAILED profiling verbosity and write ENGINE.layers.json: each layer's type, precision, tactic and median GPU time (read by bench --layers).")] = False,
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

        from ..artifacts.engine import default_engine_path, sidecar_path
        from ..artifacts.manifest import precision_of
        from ..engines.builder import build_engine, check_build_numbers
        from ..engines.calibrator import calibration_batches, onnx_preprocess
        from ..errors import UsageError

        check_build_numbers(opt_batch, max_batch, workspace, dla)
        if verify:
            from ..runtime.verify import verify_artifact

            verify_artifact(onnx)
        if fp16 and int8:
            raise UsageError("--fp16 and --int8 exclude each other (--int8 --weak-typing lets TensorRT run unquantized layers in FP16)")
        precision = "int8" if int8 else "fp16" if fp16 else precision_of(onnx.name)
        engine = out or default_engine_path(onnx, precision)
        batches = calibration_batches(calib, onnx_preprocess(onnx), 8) if calib is not None else None
        start = time.perf_counter()
        with err_console.status(f"building {escape(str(engine))} ({precision}); TensorRT takes a minute or more"):
            meta = build_engine(onnx, engine, precision, opt_batch=opt_batch, max_batch=max_batch,
                                workspace_mb=workspace, dla_core=dla, timing_cache=timing_cache,
                                calibrator_batches=batches, calib_cache=calib_cache, weak_typing=weak_typing,
                                profile=profile)
        if as_json:
            print(json.dumps(meta, indent=2))
            return
        out_console.print(
            f"[bold green]built[/] {escape(str(engine))} ({meta['precision']}, {meta['calibration'] or 'no calibration'}, "
            f"batch {meta['min_batch']}..{meta['max_batch']}, {engine.stat().st_size / 1e6:.1f} MB, "
            f"{time.perf_counter() - start:.0f} s) for TensorRT {meta['tensorrt_version']} on {meta['gpu']} "
            f"(sm {meta['compute_capability']}, {'strongly' if meta['strongly_typed'] else 'weakly'} typed); "
            f"provenance in {escape(str(sidecar_path(engine)))}", highlight=False, soft_wrap=True)
        if profile:
            from ..artifacts.layers import layers_path, load_layers

            out_console.print(layer_table(load_layers(engine), LAYERS_SHOWN))
            out_console.print(f"layer profile in {escape(str(layers_path(engine)))}", highlight=False)

    run_command(body)


@app.command()
def predict(
    artifact: Annotated[Path, typer.Argument(help="model.onnx, model.int8.onnx, model.fp16.onnx, *.engine, best.pt or a run folder.")],
    images: Annotated[List[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option(help="Classes to report per image.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Images per inference call.")] = 16,
    device: Annotated[Device, typer.Option(help="cpu, or cuda for ONNX Runtime's CUDA provider / PyTorch on GPU (engines always run on the GPU).")] = Device.cpu,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image (JSON lines) on stdout.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Refuse an artifact whose sha256 differs from the manifest.json beside it (exit 4).")] = True,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Exit 0 when some images could not be read (they are listed either way; default: exit 3 after predicting the rest).")] = False,
) -> None:
    """Classify images with an exported artifact; ONNX and TensorRT need no PyTorch."""

    def body() -> None:
        from ..runtime.base import is_torch_artifact
        from ..runtime.predictor import Predictor, expand_images

        limits.check({"--top-k": (top_k, limits.COUNT), "--batch-size": (batch_size, limits.BATCH)})

        files = expand_images(images)
        where = "cpu" if device is Device.auto else device.value
        if is_torch_artifact(artifact):  # only a checkpoint imports torch
            from ..evaluate import open_predictor

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

    run_command(body)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report on stdout.")] = False,
) -> None:
    """What this machine can run: Python, PyTorch, ONNX Runtime providers, TensorRT, GPU, Jetson/JetPack, each backend tried for real, with the command that fixes what is missing."""

    def body() -> None:
        from ..doctor import collect
        from .render import render_doctor

        report = collect()
        if as_json:
            print(json.dumps(report, indent=2))
            return
        render_doctor(report, out_console)

    run_command(body)


@app.command()
@with_config(BenchConfig, skip=("targets",))
def bench(
    targets: Annotated[List[Path], typer.Argument(help="Run folders (the original best.pt against every artifact in RUN/export), export folders, or artifact files (.onnx, .engine, best.pt).")],
    backends: Annotated[str, typer.Option(help=f"Comma-separated rows to produce, from {', '.join(BACKENDS)} (default: all).", show_default=False, rich_help_panel=ROWS)] = ",".join(BACKENDS),
    batch_size: Annotated[str, typer.Option(help="Comma-separated batch sizes to time.", rich_help_panel=ROWS)] = "1,8",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report (schema in the README) to this file.", rich_help_panel=OUTPUT)] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write a pull-request-ready markdown table to this file.", rich_help_panel=OUTPUT)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw p50 latency against top-1 for every row into this PNG file.", rich_help_panel=OUTPUT)] = None,
    layers: Annotated[bool, typer.Option("--layers", help=f"After the table, each TensorRT engine's {LAYERS_SHOWN} slowest layers and their precisions, from ENGINE.layers.json (edgetl build --profile).", rich_help_panel=OUTPUT)] = False,
    quiet: Annotated[bool, typer.Option(help="No progress lines.", rich_help_panel=OUTPUT)] = False,
    **config: Any,
) -> None:
    """Accuracy and latency of the original model and every exported artifact, side by side; a CI regression gate."""

    def body() -> None:
        from rich.markup import escape

        from ..bench.config import parse_backends, parse_batch_sizes
        from ..bench.report import gate_lines
        from ..bench.report import markdown as to_markdown
        from ..bench.report import table
        from ..bench.session import baseline_refusal, run_bench
        from ..fileio import atomic_write_text

        cfg = BenchConfig(targets=[str(t) for t in targets], backends=parse_backends(backends),
                          batch_sizes=parse_batch_sizes(batch_size), **config_values(config))
        if plot is not None:
            plots.require()
        report = run_bench(cfg, log=None if quiet else ConsoleLog(err_console))
        out_console.print(table(report, out_console.width))
        lines = gate_lines(report)
        for i, line in enumerate(lines):
            style = "" if i else "[bold green]" if report.gate is not None and report.gate.passed else "[bold red]"
            out_console.print(f"{style}{escape(line)}", highlight=False, soft_wrap=True)
        if layers:
            _print_layers(report, cfg)
        if json_out:
            report.save(json_out)
        if markdown:
            atomic_write_text(markdown, to_markdown(report))
        if plot is not None:
            drawn = plots.latency_accuracy(report.rows, plot, f"edgetl bench on {report.environment['cpu']['model']}")
            err_console.print(f"{drawn} row(s) drawn in {escape(str(plot))}", highlight=False)
        failed = report.gate is not None and not report.gate.passed
        if cfg.save_baseline:
            shown = escape(cfg.save_baseline)
            refused = baseline_refusal(report, cfg)
            if refused:
                err_console.print(f"baseline {shown} not written: {escape(refused)}", highlight=False)
                if not failed:
                    raise typer.Exit(1)
            else:
                out_console.print(f"baseline written to {shown}", highlight=False)
        if failed:
            from ..bench.gate import GATE_EMPTY_EXIT

            raise typer.Exit(1 if report.gate.failures else GATE_EMPTY_EXIT)

    run_command(body)


def _print_layers(report: Any, cfg: Any) -> None:
    """`bench --layers`: the layer table of every TensorRT engine the report has a row for (the engine
    files as bench's own plan found them)."""
    from ..artifacts.layers import load_layers
    from ..bench.plan import plan
    from ..errors import EdgetlError

    named = {row["artifact"] for row in report.rows if row["runtime"] == "tensorrt" and row["artifact"]}
    engines = list(dict.fromkeys(item.artifact for target in plan(cfg) for item in target.items
                                 if item.artifact is not None and item.artifact.suffix == ".engine"
                                 and item.artifact.name in named))
    if not engines:
        err_console.print("--layers: no TensorRT engine among this report's rows (engines need TensorRT and a "
                          "GPU to run)", highlight=False)
    for engine in engines:
        try:
            out_console.print(layer_table(load_layers(engine), LAYERS_SHOWN))
        except EdgetlError as e:
            err_console.print(f"--layers: {printable(str(e))}", highlight=False, soft_wrap=True)
