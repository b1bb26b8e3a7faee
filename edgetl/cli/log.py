"""The library's `Log` drawn for people: lines as they come, and each task as a rich progress bar on a
terminal (redrawn between items only, so a bar never competes with what bench is timing) or as plain
lines at every quarter in a log file or CI output. Either way a task ends with one line saying how long
it took, which stays in the scrollback after the bar is gone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..progress import Log, Tick

REDRAW_SECONDS = 0.1
QUIET_SECONDS = 2.0


class ConsoleLog(Log):
    """``brief``: a task that took less than QUIET_SECONDS leaves no line (check-data, whose output is the report)."""

    def __init__(self, console: Console, brief: bool = False) -> None:
        self.console, self.brief = console, brief

    def __call__(self, msg: str) -> None:
        self.console.print(msg, markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def task(self, what: str, total: int | None = None) -> Iterator[Tick]:
        start = time.perf_counter()
        if self.console.is_terminal:
            with self._bar(what, total) as tick:
                yield tick
        else:
            with self._lines(what, total) as tick:
                yield tick
        seconds = time.perf_counter() - start
        if not self.brief or seconds >= QUIET_SECONDS:
            self(f"{what}: done in {seconds:.1f} s")

    @contextmanager
    def _bar(self, what: str, total: int | None) -> Iterator[Tick]:
        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn()]
        # a bar of known length redraws on ticks only: no refresh thread taking CPU from the work
        with Progress(*columns, console=self.console, transient=True, auto_refresh=total is None) as progress:
            task = progress.add_task(what, total=total)
            drawn = 0.0

            def tick(n: int = 1) -> None:
                nonlocal drawn
                progress.advance(task, n)
                if time.perf_counter() - drawn > REDRAW_SECONDS:
                    progress.refresh()
                    drawn = time.perf_counter()

            yield tick

    @contextmanager
    def _lines(self, what: str, total: int | None) -> Iterator[Tick]:
        """A line per quarter done, once the task has taken QUIET_SECONDS: quick ones are the end line only."""
        start, done, quarter = time.perf_counter(), 0, 1

        def tick(n: int = 1) -> None:
            nonlocal done, quarter
            done += n
            while total and quarter < 4 and done >= quarter * total / 4:
                if time.perf_counter() - start >= QUIET_SECONDS:
                    self(f"  {what}: {done}/{total} ({time.perf_counter() - start:.0f} s)")
                quarter += 1

        yield tick
