"""Typer options built from the config dataclasses' `edgetl.options.option` fields, so `finetune`,
`export` and `bench` declare each flag once, where the library validates it."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Collection, Mapping
from dataclasses import fields
from enum import Enum
from typing import Any, Callable, Optional, TypeVar  # typing's Callable subscripts on Python 3.8

import typer
from typing_extensions import Annotated, get_type_hints

from ..options import option_of

F = TypeVar("F", bound=Callable[..., Any])


def config_parameters(cls: type, skip: Collection[str] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per option field of ``cls``, annotated for Typer."""
    hints = get_type_hints(cls)
    params = []
    for f in fields(cls):
        o = option_of(f)
        if o is None or f.name in skip:
            continue
        args = typing.get_args(hints[f.name])
        optional = type(None) in args
        kind: Any = next(a for a in args if a is not type(None)) if optional else hints[f.name]
        default = f.default
        if o.choices is not None:
            kind, default = o.choices, None if default is None else o.choices(default)
        info = typer.Option(*o.flags, help=o.help, rich_help_panel=o.panel, metavar=o.metavar)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[Optional[kind] if optional else kind, info]))
    return params


def resolved(fn: F) -> F:
    """``fn`` with its string annotations (``from __future__ import annotations``) evaluated, Annotated
    metadata kept: Typer evaluates them itself only on Python 3.10+, and the deploy commands run on 3.8."""
    sig, hints = inspect.signature(fn), get_type_hints(fn, include_extras=True)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) if isinstance(p.annotation, str) else p
              for p in sig.parameters.values()]
    fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return fn


def with_config(cls: type, skip: Collection[str] = ()) -> Callable[[F], F]:
    """Give a command (declared with ``**config``) the options of ``cls``, listed before its own options."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(resolved(fn))
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        first = [p for p in own if p.default is p.empty]  # the context and the arguments
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.default is not p.empty]
        fn.__signature__ = sig.replace(parameters=first + config_parameters(cls, skip) + rest)  # type: ignore[attr-defined]
        return fn

    return decorate


def with_bare_values(argv: list[str], classes: Collection[type]) -> list[str]:
    """``--qat`` given alone means ``--qat on``: Typer's options cannot take an optional value, so the
    value of an option declared with ``bare`` is filled in where the next word is not one of its choices."""
    bare = {}
    for cls in classes:
        for f in fields(cls):
            o = option_of(f)
            if o is not None and o.bare is not None and o.choices is not None:
                bare[o.flag(f.name)] = (o.bare, {m.value for m in o.choices})
    out = []
    for i, word in enumerate(argv):
        out.append(word)
        if word in bare and (i + 1 == len(argv) or argv[i + 1] not in bare[word][1]):
            out.append(bare[word][0])
    return out


def config_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parsed options as the config stores them: choices as their plain strings."""
    return {k: v.value if isinstance(v, Enum) else v for k, v in config.items()}
