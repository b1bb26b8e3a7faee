"""How a long library step reports what it is doing without printing anything itself.

Export, bench and check-data take a `Log`: ``log(line)`` for a step that finished, and
``with log.task(what, total) as tick:`` around a loop, calling ``tick()`` per item (``total=None``
for a step whose length is unknown). The base class is silent, for tests and library callers; the CLI
draws tasks as rich progress bars on a terminal and as plain lines in a log (`edgetl.cli.progress`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

Tick = Callable[..., None]  # tick(n=1): n more items done (typing's Callable: the runtime runs on Python 3.8)


def no_tick(n: int = 1) -> None:
    pass


class Log:
    def __call__(self, msg: str) -> None:
        pass

    @contextmanager
    def task(self, what: str, total: int | None = None) -> Iterator[Tick]:
        yield no_tick


class Lines(Log):
    """Every line to a function (``print``, a list's ``append``); a task is one line, its description."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def __call__(self, msg: str) -> None:
        self.write(msg)

    @contextmanager
    def task(self, what: str, total: int | None = None) -> Iterator[Tick]:
        self.write(what)
        yield no_tick


def as_log(log: Log | Callable[[str], None] | None) -> Log:
    """A `Log` from what a caller passed: a Log, a plain line function (tests pass ``list.append``), or None."""
    if log is None:
        return Log()
    return log if isinstance(log, Log) else Lines(log)
