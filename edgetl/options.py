"""A config field's command-line face, declared once beside the field.

TrainConfig, ExportConfig and BenchConfig declare their user-facing fields with `option`: the help line,
the help panel it is listed under, its legal range and its closed set of values. The CLI builds its
Typer options from these (`edgetl.cli.options`) and each config's ``validate`` checks them with
`check_fields`, so a flag's name, meaning and limits cannot drift apart between the two.
Torch-free: `edgetl --help` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from . import limits
from .choices import StrEnum, values
from .errors import UsageError
from .limits import Range


@dataclass(frozen=True)
class Option:
    help: str
    panel: str
    legal: Range | None = None
    choices: type[StrEnum] | None = None
    flags: tuple[str, ...] = ()  # Typer declarations when not the default --name (--name/--no-name for booleans)
    metavar: str | None = None
    bare: str | None = None  # the value the flag takes when given without one (``--qat`` alone means ``on``)

    def flag(self, name: str) -> str:
        """The flag an error message names: ``--workspace`` for the field ``workspace_mb``."""
        return self.flags[0].split("/")[0] if self.flags else "--" + name.replace("_", "-")


def option(default: Any, help: str, panel: str, **kw: Any) -> Any:
    """A dataclass field with a command-line option; ``kw`` as `Option`."""
    return field(default=default, metadata={"option": Option(help, panel, **kw)})


def option_of(f: Any) -> Option | None:
    return f.metadata.get("option")


def check_fields(cfg: Any) -> None:
    """UsageError (exit 2) naming the flag of the first field outside its range or choices."""
    declared = [(f.name, o) for f in fields(cfg) if (o := option_of(f)) is not None]
    limits.check({o.flag(n): (getattr(cfg, n), o.legal) for n, o in declared if o.legal is not None})
    for name, o in declared:
        if o.choices is not None and getattr(cfg, name) not in values(o.choices):
            raise UsageError(f"{o.flag(name)} must be one of {', '.join(values(o.choices))}")
