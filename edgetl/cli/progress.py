"""Rich drawing of training progress and summaries (the library itself never prints)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import printable
from ..train.loop import Hooks


class RichHooks(Hooks):
    """One bar per epoch with live loss, accuracy and img/s; a line per finished epoch."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self.task: Any = None

    def data_checked(self, report: Any) -> None:
        print_data_check(self.console, report)

    def start(self, cfg, data, pp, device, amp) -> None:  # type: ignore[override]
        self.console.print(
            f"[bold]edgetl finetune[/] {cfg.model} on {data.name}: {len(data.classes)} classes, "
            f"{len(data.train)} train / {len(data.val)} val images; strategy {cfg.strategy}; "
            f"input {pp.size}px ({'--img-size' if cfg.img_size else 'from the model config'}), "
            f"{pp.interpolation}, mean {list(pp.mean)} std {list(pp.std)}; device {device}"
            f"{f', AMP {amp}' if amp else ''}; out {cfg.out}"
        )
        self.progress.start()

    def preparing(self, what: str, steps: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(what, total=steps, info="")

    def advance(self, n: int = 1) -> None:
        self.progress.update(self.task, advance=n)

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, info="")

    def step(self, loss: float, top1: float, images_per_s: float) -> None:
        self.progress.update(self.task, advance=1, info=f"loss {loss:.3f}  acc {top1:5.1f}%  {images_per_s:6.1f} img/s")

    def validating(self, steps: int) -> None:
        self.progress.update(self.task, description=self.progress.tasks[-1].description + " (validating)")

    def epoch_end(self, row: dict[str, float]) -> None:
        self.console.print(
            f"epoch {int(row['epoch'])}: loss {row['train_loss']:.3f}  train {row['train_top1']:.1f}%  "
            f"val {row['val_top1']:.2f}% (top-5 {row['val_top5']:.1f}%)  {row['seconds']:.1f}s  "
            f"{row['images_per_s']:.0f} img/s"
        )

    def close(self) -> None:
        self.progress.stop()


def summary_table(summary: Any) -> Table:
    t = Table(title=f"run {summary.run} ({summary.status})")
    for col in ("epoch", "train loss", "train top-1", "val loss", "val top-1", "val top-5", "lr", "s"):
        t.add_column(col, justify="right")
    for r in summary.history:
        best = int(r["epoch"]) == summary.best_epoch
        t.add_row(
            f"{int(r['epoch'])}{' *' if best else ''}", f"{r['train_loss']:.3f}", f"{r['train_top1']:.1f}%",
            f"{r['val_loss']:.3f}", f"{r['val_top1']:.2f}%", f"{r['val_top5']:.1f}%", f"{r['lr']:.1e}",
            f"{r['seconds']:.1f}",
        )
    t.caption = f"* best epoch, saved as best.pt: val top-1 {summary.val_top1:.2f}%"
    return t


class QuietHooks(Hooks):
    """`--quiet`: no progress, but skipped files are still worth one warning on stderr."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def data_checked(self, report: Any) -> None:
        if report.findings:
            print_data_check(self.console, report, summary_only=True)

    def close(self) -> None:
        """Nothing on screen to stop (RichHooks stops its progress bars here)."""


def print_data_check(console: Console, report: Any, limit: int = 10, summary_only: bool = False) -> None:
    """`check_data`'s report before training; bad files are left out and listed in the run."""
    from rich.markup import escape

    lines = report.lines(limit)[:1] if summary_only else report.lines(limit)
    if report.skipped:
        lines[0] += "; the bad files are left out of training (list in RUN/data_check.json)"
    for line in lines:
        console.print(escape(printable(line)), highlight=False, soft_wrap=True)
