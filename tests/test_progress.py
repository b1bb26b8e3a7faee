"""Long steps show progress: a rich bar on a terminal that redraws only between items (no refresh thread
competing with what bench times), plain quarter lines in a log, one closing line either way."""

from __future__ import annotations

import io
import threading

import pytest
from rich.console import Console

from edgetl.cli import log as cli_log
from edgetl.cli.log import ConsoleLog
from edgetl.progress import Lines, as_log


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=100), out


def _refresh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]


def test_a_bar_on_a_terminal_redraws_between_items_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_log, "REDRAW_SECONDS", 0.0)
    console, out = _console(terminal=True)
    with ConsoleLog(console).task("calibrating on 8 images", 8) as tick:
        for _ in range(8):
            assert _refresh_threads() == []
            tick()
    text = out.getvalue()
    assert "calibrating on 8 images" in text and "8/8" in text and "━" in text
    assert "calibrating on 8 images: done in " in text.rstrip().splitlines()[-1]  # after the bar is cleared


def test_a_log_file_gets_a_line_per_quarter_of_a_slow_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_log, "QUIET_SECONDS", 0.0)
    console, out = _console(terminal=False)
    with ConsoleLog(console).task("ranking 8 layers", 8) as tick:
        for _ in range(8):
            tick()
    lines = out.getvalue().splitlines()
    assert [ln.split("(")[0].strip() for ln in lines[:3]] == [f"ranking 8 layers: {k}/8" for k in (2, 4, 6)]
    assert lines[3].startswith("ranking 8 layers: done in ") and len(lines) == 4 and "\x1b" not in out.getvalue()


def test_quick_tasks_are_one_line_and_brief_logs_drop_them() -> None:
    console, out = _console(terminal=False)
    with ConsoleLog(console).task("converting to FP16"):
        pass
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]
    assert out.getvalue().startswith("converting to FP16: done in ")
    console, out = _console(terminal=False)
    with ConsoleLog(console, brief=True).task("decoding 36 images", 36) as tick:
        tick(36)
    assert out.getvalue() == ""


def test_library_callers_passing_a_line_function_see_each_task_once() -> None:
    lines: list[str] = []
    log = as_log(lines.append)
    assert isinstance(log, Lines)
    log("exported")
    with log.task("calibrating on 4 images", 4) as tick:
        tick(4)
    assert lines == ["exported", "calibrating on 4 images"]
