"""`edgetl demo`: the whole chain on the embedded default, each stage through its library entry point."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import extras, plots
from .app import app, out_console, run_command
from .log import ConsoleLog
from .render import artifact_table, print_eval
from .train import train_with_display


DEMO_EXPLAINED = 16  # class-activation maps in the demo's report: a few seconds on 2 cores


@app.command()
def demo(
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/demo-<time>).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 3,
    img_size: Annotated[int, typer.Option(help="Input size in px.")] = 64,
) -> None:
    """The whole chain on the embedded default: bundled EfficientNet-Lite0 fine-tuned on scikit-learn's
    digits, evaluated, exported to verified FP32, FP16 and INT8 ONNX, benchmarked, and explained (RUN/explain)."""

    def body() -> None:
        from ..evaluate import evaluate_run
        from ..export.config import ExportConfig
        from ..export.pipeline import export
        from ..train.config import TrainConfig

        run = out or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
        cfg = TrainConfig(data="digits", out=str(run), epochs=epochs, img_size=img_size, batch_size=32,
                          lr=2e-3, warmup_epochs=0.3)
        train_with_display(cfg, False, False, False)
        where, res, classes = evaluate_run(run)
        print_eval(where, res, classes)
        out_console.rule("export")
        report = export(ExportConfig(run=str(run), int8=True, int8_cpu=True, fp16=True),
                        log=ConsoleLog(out_console))
        out_console.print(artifact_table(report))
        out_console.rule("bench")
        from ..bench.config import BenchConfig
        from ..bench.report import table
        from ..bench.session import run_bench

        bench_report = run_bench(BenchConfig(targets=[str(run)], backends=("torch", "ort-fp32", "ort-fp16", "ort-int8"),
                                             batch_sizes=(1, 8), min_seconds=0.5, e2e=False),
                                 log=ConsoleLog(out_console))
        out_console.print(table(bench_report, out_console.width))
        pictures = f"no pictures: {plots.INSTALL_HINT}"
        if plots.available():
            plots.latency_accuracy(bench_report.rows, run / "bench.png",
                                   f"edgetl demo on {bench_report.environment['cpu']['model']}")
            pictures = "curves.png and bench.png"
        explained = f"; no explain report: {extras.install_hint('explain')}"
        if extras.available("pytorch_grad_cam") and plots.available():
            from ..explain.config import ExplainConfig
            from ..explain.report import explain

            out_console.rule("explain")
            explain_cfg = ExplainConfig(run=str(run), limit=DEMO_EXPLAINED)
            explain(explain_cfg, log=ConsoleLog(out_console))
            explained = f"; what it looks at and what INT8 changed: [bold]{explain_cfg.out_dir / 'index.html'}[/]"
        int8, share = report.accuracy["int8"], report.int8 or {}
        out_console.print(
            f"[bold green]demo done[/]: digits validation top-1 {res.top1:.2f}% (PyTorch), "
            f"INT8 ONNX {int8['top1']:.2f}% ({int8['delta_top1']:+.2f}, simulated; {share.get('int8_layers')}/"
            f"{share.get('weighted_layers')} weighted layers and {100 * share.get('int8_mac_share', 0):.0f}% of the "
            f"MACs in INT8); run at [bold]{run}[/] ({pictures}), "
            f"artifacts in [bold]{run / 'export'}[/]{explained}"
        )

    run_command(body)
