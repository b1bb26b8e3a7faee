"""The `edgetl` Typer app, its consoles, and `run_command`, which turns library errors into one line and
their exit codes. Command modules register on `app`; `edgetl.cli` imports them all."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console

from .. import DISTRIBUTION
from ..errors import Interrupted, one_line, printable
from .help import HelpCommand, HelpGroup
from .options import resolved

# The training side (fine-tuning, export, auto, explain) needs Python 3.10+, PyTorch and the full `edgetl`
# distribution; `edgetl-runtime` runs the deploy commands on Python 3.8+ and ships without `edgetl.train`.
TRAINING = sys.version_info >= (3, 10) and DISTRIBUTION == "edgetl"
TRAINING_COMMANDS = ("finetune", "auto", "eval", "check-data", "models", "explain", "demo", "export", "calib")


class _App(typer.Typer):
    def command(self, *args: Any, **kwargs: Any) -> Any:
        """Every command renders its help with `edgetl.cli.help` (readable at 80 columns), and its
        annotations reach Typer evaluated, on every Python (`options.resolved`)."""
        kwargs.setdefault("cls", HelpCommand)
        register = super().command(*args, **kwargs)
        return lambda fn: register(resolved(fn))


app = _App(
    name="edgetl", no_args_is_help=True, add_completion=False, rich_markup_mode="rich", cls=HelpGroup,
    help="Fine-tune a pretrained CNN, export verified ONNX / INT8 / TensorRT artifacts, and benchmark them." + (
        "" if TRAINING else "\n\nThis is the deploy runtime (`edgetl-runtime`, or Python < 3.10): "
        f"{', '.join(TRAINING_COMMANDS)} run where the full `edgetl` is installed (Python 3.10+, PyTorch)."),
)


def _console(stderr: bool = False) -> Console:
    """Piped into a log, rich would assume 80 columns and cut the tables to ellipses: give logs room instead."""
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, width=None if tty or "COLUMNS" in os.environ else 200)


out_console = _console()


err_console = _console(stderr=True)


def run_command(fn: Callable[[], Any]) -> Any:
    """Run a command body; library errors become one red line and their exit codes."""
    from ..errors import EdgetlError

    try:
        return fn()
    except EdgetlError as e:
        from rich.markup import escape

        text = one_line(e) if "Original Traceback" in str(e) else printable(str(e))  # names stay on the line
        err_console.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        first = _interrupted_by(e)  # a second Ctrl-C that landed while the first one was still unwinding
        if first is not None:
            _stop(first)
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except Interrupted as e:
        _stop(e)


def _interrupted_by(e: BaseException) -> Interrupted | None:
    """The training interruption ``e`` arrived during, if any (Python chains it as the context)."""
    seen: BaseException | None = e.__context__
    while seen is not None and not isinstance(seen, Interrupted):
        seen = seen.__context__
    return seen


def _stop(e: Interrupted) -> NoReturn:
    import signal

    for s in (signal.SIGINT, signal.SIGTERM):  # stopping already: a second Ctrl-C must not
        signal.signal(s, signal.SIG_IGN)        # print a traceback from the exit path
    err_console.print(f"[yellow]{e}[/]: {e.hint}", highlight=False)
    raise typer.Exit(e.exit_code) from None


def main() -> None:
    if not TRAINING:
        app()
        return
    from ..export.config import ExportConfig
    from .options import with_bare_values

    app(args=with_bare_values(sys.argv[1:], (ExportConfig,)))
