"""The regression gate: rows matched to a baseline by (artifact, backend, precision, batch size, device) on
the same machine fingerprint, judged on their fastest round; it fails closed when nothing was compared."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .environment import FINGERPRINT_VERSION

if TYPE_CHECKING:
    from .schema import Report

GATE_EMPTY_EXIT = 5  # `edgetl bench --baseline` compared no row (other machine, no common rows, all failed)
RECHECKS = 2  # times a row over the latency limit gets GATE_ROUNDS more rounds before it is judged
ROW_KEY = ("artifact", "backend", "precision", "batch_size", "device")


@dataclass
class GateResult:
    """Rows compared against a baseline, the offending ones with a reason, and what could not be compared."""

    baseline: str
    fingerprint_match: bool
    max_regression: float
    max_drop: float
    compared: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    allow_empty: bool = False

    @property
    def passed(self) -> bool:
        """No row regressed, and some row was compared: a gate that checked nothing fails closed."""
        return not self.failures and (self.compared > 0 or self.allow_empty)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        """As a report holds it; ``passed`` is recomputed, not trusted."""
        return cls(**{k: v for k, v in d.items() if k != "passed"})


def gate(rows: Sequence[Mapping[str, Any]], env: dict[str, Any], baseline: Report, name: str,
         max_regression: float, max_drop: float, allow_empty: bool = False) -> GateResult:
    """Compare rows with the baseline's rows of the same key, on the same machine only.

    A row fails when its fastest round's median (``best_round_ms``) grew by more than ``max_regression``
    (a fraction) over the baseline's fastest round and is slower than every baseline round (a change
    within the baseline's own round-to-round spread is noise, not evidence), when its top-1 fell by more
    than ``max_drop`` points, or when it ran in the baseline and does not run now.
    """
    base_env = baseline.environment
    result = GateResult(name, base_env.get("fingerprint") == env["fingerprint"], max_regression, max_drop,
                        allow_empty=allow_empty)
    base_fields = base_env.get("fingerprint_fields") or {}
    if not result.fingerprint_match and base_fields.get("version", 1) < FINGERPRINT_VERSION:
        result.notes.append(f"{name} has a version {base_fields.get('version', 1)} machine fingerprint, which does not "
                            "know the CPU's instruction set (an AVX2-only and an AVX-512 VNNI EPYC looked alike); "
                            "rows not compared. Record it again on its machine with --save-baseline")
        return result
    if not result.fingerprint_match:
        differs = _differences(base_fields, env["fingerprint_fields"])
        result.notes.append(f"{name} was measured on another machine (fingerprint {base_env.get('fingerprint')} vs "
                            f"{env['fingerprint']} here: {differs}); rows not compared. "
                            "Record this machine's baseline with --save-baseline")
        return result
    base = _index(baseline.rows, name)
    now = _index(rows, "this run")
    new: list[str] = []
    noisy: list[str] = []
    for key, row in now.items():
        b = base.get(key)
        if b is None:
            new.append(row_label(row))
            continue
        if b.get("status") != "ok":
            continue
        result.compared += 1
        ident = {k: row[k] for k in ROW_KEY}
        if row["status"] != "ok":
            result.failures.append({**ident, "kind": "status", "reason": f"ran in the baseline, now {row['status']}"})
            continue
        now_ms, base_ms = best_round_ms(row), best_round_ms(b)
        base_worst = max(b.get("p50_rounds_ms") or [base_ms])
        change = now_ms / base_ms - 1.0
        base_spread = round_spread(b)
        if base_spread is not None and base_spread > max_regression:
            noisy.append(f"{row_label(row)} {base_spread:+.0%}")
        if change > max_regression and now_ms > base_worst:
            result.failures.append({**ident, "kind": "latency", "p50_ms": row["p50_ms"], "baseline_p50_ms": b["p50_ms"],
                                    "best_round_ms": now_ms, "baseline_best_round_ms": base_ms,
                                    "change": round(change, 4), "p50_rounds_ms": row["p50_rounds_ms"],
                                    "reason": f"fastest round {now_ms:.3f} ms vs {base_ms:.3f} ms "
                                              f"({change:+.1%}, limit +{max_regression:.0%}), slower than every "
                                              f"baseline round; p50 {row['p50_ms']:.3f} vs {b['p50_ms']:.3f} ms"})
        if row["top1"] is not None and b.get("top1") is not None and b["top1"] - row["top1"] > max_drop:
            result.failures.append({**ident, "kind": "accuracy", "top1": row["top1"], "baseline_top1": b["top1"],
                                    "reason": f"top-1 {row['top1']:.2f}% vs {b['top1']:.2f}% "
                                              f"({row['top1'] - b['top1']:+.2f} points, limit -{max_drop:.2f})"})
    if new:
        result.notes.append(f"no baseline for: {', '.join(new)}")
    if noisy:
        result.notes.append(f"the baseline's own rounds varied by more than the +{max_regression:.0%} limit for "
                            f"{', '.join(noisy)}: such rows fail only when slower than every baseline round, since "
                            "smaller changes are within this machine's noise (a quieter baseline gates tighter)")
    gone = [row_label(b) for k, b in base.items() if k not in now and b.get("status") == "ok"]
    if gone:
        result.notes.append(f"in the baseline but not measured now: {', '.join(gone)}")
    if result.compared == 0:
        result.notes.append("no row matched the baseline: nothing was compared"
                            + ("" if allow_empty else f" (exit {GATE_EMPTY_EXIT}; --allow-empty accepts that)"))
    return result


def round_spread(row: Mapping[str, Any]) -> float | None:
    """How far apart a row's round medians are, slowest / fastest - 1; None with fewer than two rounds.
    Above the gate's tolerance the row is unstable: its own rounds disagree by more than a regression."""
    rounds = row.get("p50_rounds_ms") or []
    return max(rounds) / min(rounds) - 1.0 if len(rounds) >= 2 and min(rounds) > 0 else None


def best_round_ms(row: Mapping[str, Any]) -> float:
    """The statistic the gate compares: the fastest round's median (p50 for a report without rounds)."""
    return float(min(row.get("p50_rounds_ms") or [row["p50_ms"]]))


def _index(rows: Sequence[Mapping[str, Any]], name: str) -> dict[tuple, Mapping[str, Any]]:
    out: dict[tuple, Mapping[str, Any]] = {}
    for row in rows:
        key = key_of(row)
        if key in out:
            raise UsageError(f"{name}: two rows for {row_label(row)} (from {out[key].get('run')} and {row.get('run')}); "
                             "gate one model at a time")
        out[key] = row
    return out


def key_of(row: Mapping[str, Any]) -> tuple:
    return tuple(row.get(k) for k in ROW_KEY)


def row_label(row: Mapping[str, Any]) -> str:
    return f"{row.get('backend')} {row.get('artifact') or '-'} batch {row.get('batch_size')} ({row.get('device') or '-'})"


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    diffs = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; ".join(diffs) or "no fingerprint fields in the baseline"
