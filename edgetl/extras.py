"""Optional extras (plots, tensorboard, mlflow, explain): whether one is installed, and the one-line
usage error, with its install command, that a feature asking for a missing one stops with."""

from __future__ import annotations

from . import DISTRIBUTION
from .errors import UsageError


def install_hint(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def require(module: str, extra: str, what: str) -> None:
    """UsageError (exit 2) before any work when ``what`` needs ``module`` and it is not installed."""
    if not available(module):
        raise UsageError(f"{what} needs {module}, which is not installed: {install_hint(extra)}")
