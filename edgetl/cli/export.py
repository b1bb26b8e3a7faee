"""`edgetl export` and `calib`: the training side's artifacts (`build` runs on the target: `deploy`)."""

from __future__ import annotations

import json
import os
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
        if os.environ.get("RANK", "0") != "0":  # under torchrun (--qat) only rank 0 talks
            export(cfg)
            return
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
