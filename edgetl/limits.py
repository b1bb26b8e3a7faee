"""The legal range of every number a user gives edgetl, checked in one place before any work starts.

Each stage's options (TrainConfig, ExportConfig, BenchConfig, and the plain arguments of check-data,
calib, eval, predict and build) pass their numbers through `check`. NaN and infinities are never
legal: a NaN compares false with every bound, so a check written as ``not x < 0`` lets it through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float = math.inf
    open_lo: bool = False  # lo itself excluded
    open_hi: bool = False

    def __contains__(self, v: float) -> bool:
        above = v > self.lo if self.open_lo else v >= self.lo
        below = v < self.hi if self.open_hi else v <= self.hi
        return above and below

    def __str__(self) -> str:
        lo = f"above {self.lo:g}" if self.open_lo else f"at least {self.lo:g}"
        if math.isinf(self.hi):
            return f"a finite number {lo}"
        return f"{lo} and {'below' if self.open_hi else 'at most'} {self.hi:g}"


POSITIVE = Range(0, open_lo=True)
NON_NEGATIVE = Range(0)
COUNT = Range(1)  # 1 or more of something that is clipped to what exists
FRACTION_OPEN = Range(0, 1, open_lo=True, open_hi=True)
BATCH = Range(1, 65_536)
WORKERS = Range(0, 256)  # 0: automatic or in-process, by command
SEED = Range(0, 2**63 - 1)
POINTS = Range(0, 100)  # accuracy points
DLA_CORE = Range(0, 7)
WORKSPACE_MB = Range(1, 1 << 20)
MAX_SIZE = 2048  # px: the largest input edgetl trains (`--img-size`) or reads from a record; 100,000 asked for 1.28 TiB


def check(values: Mapping[str, tuple[float | int | None, Range]]) -> None:
    """UsageError (exit 2) naming the flag of the first value that is not a finite number in its range;
    ``None`` means the default and passes."""
    for flag, (value, legal) in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value not in legal:
            raise UsageError(f"{flag} {value}: must be {legal}")
