"""`edgetl export`, `calib` and `build`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import printable
from ..export.config import ARTIFACTS, ExportConfig
from .app import app, err_console, out_console, run_command
from .log import ConsoleLog
from .options import config_values, with_config
from .render import artifact_table


@app.command("export")
@with_config(ExportConfig, skip=("run",))
def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder written by `edgetl finetune`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the export report as JSON on stdout.", rich_help_panel=ARTIFACTS)] = False,
    **config: Any,
) -> None:
    """Verified ONNX, FP16 and calibrated INT8 artifacts (and TensorRT engines where possible) plus manifest.json."""

    def body() -> None:
        from ..export.pipeline import export

        cfg = ExportConfig(run=str(run), **config_values(config))
        console = err_console if as_json else out_console
        report = export(cfg, log=ConsoleLog(console))
        if as_json:
            print(json.dumps(report.__dict__, default=str))
            return
        console.print(artifact_table(report))

    run_command(body)


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
        from ..export.int8.calibrate import write_calibration_set

        info = write_calibration_set(data, size, out, seed, val_split)
        for path, reason in list(info["skipped"].items())[:5]:
            err_console.print(f"skipped {printable(path)}: {printable(reason)}", markup=False, highlight=False)
        if len(info["skipped"]) > 5:
            err_console.print(f"skipped {len(info['skipped']) - 5} more (listed in {out / 'calib.json'})")
        out_console.print(f"wrote {info['size']} images from {info['source']} to {out} "
                          f"({len(info['classes'])} classes; list in {out / 'calib.json'}"
                          + (f"; {len(info['skipped'])} bad file(s) skipped" if info["skipped"] else "") + ")")

    run_command(body)


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

    run_command(body)
