"""`--help` that stays readable at 80 columns and below.

Typer's own rich help lays options out in a six-column table and, on an ordinary 80-column terminal,
cuts option names and defaults to ellipses (`--backbone-lr-sc…`). This renders the same click
parameters as panels (one per ``rich_help_panel``: data, model, training, ...) of two columns, the full
option names beside a wrapped help line, or, where two columns do not fit, the names over their help.
Nothing is ever cut: long words fold onto the next line.
"""

from __future__ import annotations

import enum
import typing
from pathlib import Path
from typing import Any

import typer.core
from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

MIN_HELP_WIDTH = 36  # narrower than this, the help goes under the names instead of beside them
TYPE_NAMES = {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}
MAX_METAVAR_CHOICES = 20  # longer choice lists go into the help line


def paragraphs(text: str) -> str:
    """A docstring's hard-wrapped lines joined into paragraphs, so rich wraps them to the terminal."""
    blocks = [" ".join(line.strip() for line in block.splitlines()) for block in text.strip().split("\n\n")]
    return "\n\n".join(b for b in blocks if b)


def _kind(param: Any) -> Any:
    """The Python type a parameter takes (one item's, for a list)."""
    descriptor = getattr(param, "type_descriptor", None)
    kind = descriptor.annotation if descriptor is not None else None
    return typing.get_args(kind)[0] if typing.get_origin(kind) in (list, tuple) else kind


def _choices(param: Any) -> list[str]:
    kind = _kind(param)
    return [m.value for m in kind] if isinstance(kind, type) and issubclass(kind, enum.Enum) else []


def _names(param: Any) -> Text:
    if isinstance(param, typer.core.TyperArgument):
        more = "..." if param.nargs != 1 else ""
        return Text((param.metavar or param.name.upper()) + more, style="bold cyan")
    text = Text(", ".join(param.opts), style="bold cyan")
    if not param.is_flag:
        choices = _choices(param)
        joined = "|".join(choices)
        metavar = param.metavar or (f"[{joined}]" if choices and len(joined) <= MAX_METAVAR_CHOICES
                                    else "CHOICE" if choices else TYPE_NAMES.get(_kind(param), "VALUE"))
        text.append(f" {metavar}", style="yellow")
    for secondary in param.secondary_opts:
        text.append(f"\n{secondary}", style="bold magenta")
    return text


def _default(param: Any) -> str | None:
    value = param.default
    if isinstance(param, typer.core.TyperArgument) or not param.show_default or value is None or value == ():
        return None
    if param.is_flag:  # off unless given, like a lone --flag, needs no note
        return param.opts[0] if value and param.secondary_opts else None
    return str(value.value if isinstance(value, enum.Enum) else value)


def _help(param: Any) -> Text:
    text = Text(paragraphs(getattr(param, "help", None) or ""))
    choices = _choices(param)
    listed = len("|".join(choices)) <= MAX_METAVAR_CHOICES or all(c in text.plain for c in choices)
    if choices and not listed and not param.metavar:
        text.append(f" One of: {', '.join(choices)}.", style="dim")
    default = _default(param)
    if default is not None:
        text.append(f" [default: {default}]", style="dim")
    if param.required:
        text.append(" [required]", style="red")
    return text


def _panel(title: str, rows: list[tuple[Text, Text]], width: int) -> Panel:
    names_width = max(max(len(line) for line in names.plain.splitlines()) for names, _ in rows)
    side_by_side = width - 4 - names_width - 2 >= MIN_HELP_WIDTH  # 4: the panel's border and padding
    table = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False, expand=True)
    if side_by_side:
        table.add_column(no_wrap=True, width=names_width)
        table.add_column(overflow="fold", ratio=1)
        for names, help_text in rows:
            table.add_row(names, help_text)
    else:
        table.add_column(overflow="fold")
        for names, help_text in rows:
            names.overflow = "fold"
            table.add_row(Group(names, Padding(help_text, (0, 0, 0, 4))))
    return Panel(table, title=title, title_align="left", border_style="dim")


def render(command: Any, ctx: Any, commands: list[tuple[str, str]] | None = None) -> None:
    console = Console(highlight=False)
    arguments = [_names(p).plain for p in command.get_params(ctx) if isinstance(p, typer.core.TyperArgument)]
    usage = [ctx.command_path, command.options_metavar, *arguments] + (["COMMAND [ARGS]..."] if commands else [])
    console.print(Padding(Text("Usage: " + " ".join(usage), style="bold"), (1, 1, 0, 1)))
    if command.help:
        console.print(Padding(Text(paragraphs(command.help)), (1, 1, 1, 1)))
    panels: dict[str, list[tuple[Text, Text]]] = {}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        title = "Arguments" if isinstance(param, typer.core.TyperArgument) else \
            getattr(param, "rich_help_panel", None) or "Options"
        panels.setdefault(title, []).append((_names(param), _help(param)))
    if "Options" in panels:  # the ungrouped ones (--help among them) go last
        panels["Options"] = panels.pop("Options")
    if commands:
        panels["Commands"] = [(Text(name, style="bold cyan"), Text(paragraphs(text))) for name, text in commands]
    for title, rows in panels.items():
        console.print(_panel(title, rows, console.width))


class HelpCommand(typer.core.TyperCommand):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        render(self, ctx)


class HelpGroup(typer.core.TyperGroup):
    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """A training command on the deploy runtime says where it runs, instead of click's "No such command"."""
        from .app import TRAINING, TRAINING_COMMANDS

        if args and not TRAINING and args[0] in TRAINING_COMMANDS:
            ctx.fail(f"`edgetl {args[0]}` is not in this install: it needs Python 3.10+, PyTorch and the full "
                     "`edgetl` (pip install edgetl); this deploy runtime runs build, predict, doctor and bench")
        return super().resolve_command(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        listed = [(name, (self.commands[name].help or "").split("\n\n")[0]) for name in self.list_commands(ctx)
                  if not self.commands[name].hidden]
        render(self, ctx, listed)
