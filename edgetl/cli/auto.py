"""`edgetl auto`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ..auto.config import OUTPUT, AutoConfig
from .app import app, err_console, out_console, run_command
from .log import ConsoleLog
from .options import config_values, with_config


@app.command()
@with_config(AutoConfig)
def auto(
    resume: Annotated[bool, typer.Option("--resume", help="Continue the search in --out (auto.db): finished trials "
                                         "are kept; only --time-budget, --trials, --finalists and "
                                         "--max-latency-ms may change.", rich_help_panel=OUTPUT)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print auto.json on stdout (human output goes to stderr).",
                                          rich_help_panel=OUTPUT)] = False,
    **config: Any,
) -> None:
    """Choose the model, strategy, input size and learning rate for the data and the deployment target: an
    Optuna search of short fine-tuning trials (the weak ones cut early), the best exported and timed as
    --target, the most accurate one within --max-latency-ms kept as OUT/winner."""

    def body() -> None:
        from ..auto.search import auto as run_auto

        cfg = AutoConfig(**config_values(config))
        console = err_console if as_json else out_console
        outcome = run_auto(cfg, resume=resume, log=ConsoleLog(console))
        if as_json:
            print((cfg.out_dir / "auto.json").read_text())
            return
        console.print(leaderboard(outcome))
        for note in outcome.notes:
            err_console.print(note, markup=False, highlight=False)
        if outcome.winner is not None:
            console.print(f"winner: trial {outcome.winner['trial']}, {outcome.why}; run folder "
                          f"{cfg.out_dir / 'winner'} (export and bench it as any run)", markup=False, highlight=False,
                          soft_wrap=True)

    run_command(body)


def leaderboard(outcome: Any) -> Table:
    timed = {f["trial"]: f for f in outcome.finalists}
    t = Table(title=f"edgetl auto: {len(outcome.trials)} trial(s) in {outcome.out}")
    for col in ("trial", "model", "strategy", "px", "lr", "epochs", "val top-1", "state", "target top-1", "ms"):
        t.add_column(col, justify="right" if col not in ("model", "strategy", "state") else "left")
    rows = sorted(outcome.trials, key=lambda r: -(r["val_top1"] if r["val_top1"] is not None
                                                  else r["last_val_top1"] or -1.0))
    for r in rows:
        p, f = r["params"], timed.get(r["number"], {})
        mark = " *" if outcome.winner and outcome.winner["trial"] == r["number"] else ""
        val = r["val_top1"] if r["val_top1"] is not None else r["last_val_top1"]
        t.add_row(f"{r['number']}{mark}", str(p.get("model", "-")), str(p.get("strategy", "-")),
                  str(p.get("img_size", "-")), f"{p['lr']:.1e}" if "lr" in p else "-", str(r["epochs"] or "-"),
                  f"{val:.2f}%" if val is not None else "-", r["stopped"] or r["state"],
                  f"{f['top1']:.2f}%" if f.get("top1") is not None else f.get("status", "") if f else "",
                  f"{f['latency_ms']:.2f}" if f.get("latency_ms") is not None
                  else f"{f['gflops']:.2f} GFLOPs" if f.get("gflops") is not None else "")
    t.caption = "* the winner; pruned trials show the val top-1 of their last epoch"
    return t
