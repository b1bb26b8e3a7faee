"""The bench report, JSON schema v1, as types: `Report` and its `Row`s.

Reading keeps every field and its order, and a field an older report lacks stays absent, so a baseline
read and written back is the same file (a test checks the committed ones). Rows are also read-only
mappings (``row["p50_ms"]``), the form the gate and the tables index them by.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping  # typing's Mapping subscripts on Python 3.8 (the runtime's floor)

from ..errors import ArtifactError, UsageError
from .config import SCHEMA_VERSION
from .gate import ROW_KEY, GateResult

ROW_FIELDS = (
    "run", "model", "backend", "runtime", "precision", "device", "artifact", "sha256", "batch_size", "status",
    "top1", "top5", "delta_top1", "images", "numerics",
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "throughput", "samples", "p50_rounds_ms", "timer",
    "host_p50_ms", "trtexec_p50_ms", "vs_trtexec",
    "e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms", "e2e_mean_ms", "e2e_std_ms", "e2e_throughput", "e2e_samples",
    "size_mb", "speedup", "gflops", "peak_gflops", "peak_kind", "peak_fraction",
)
REPORT_FIELDS = ("schema_version", "edgetl_version", "created", "settings", "environment", "targets", "rows",
                 "contention", "roofline", "gate")


@dataclass(frozen=True)
class Row(Mapping[str, Any]):
    """One (artifact, backend, precision, batch size, device): its status, accuracy and latency."""

    run: str | None = None
    model: str | None = None
    backend: str | None = None
    runtime: str | None = None
    precision: str | None = None
    device: str | None = None
    artifact: str | None = None
    sha256: str | None = None
    batch_size: int | None = None
    status: str | None = None  # ok | skipped: why | failed: why
    top1: float | None = None
    top5: float | None = None
    delta_top1: float | None = None
    images: int | None = None
    numerics: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    throughput: float | None = None
    samples: int | None = None
    p50_rounds_ms: list[float] | None = None
    timer: str | None = None  # host | cuda-event | cuda-graph
    host_p50_ms: float | None = None  # TensorRT: the host's wall time of the same timed calls
    trtexec_p50_ms: float | None = None  # --vs-trtexec: trtexec's median GPU compute time
    vs_trtexec: float | None = None  # p50_ms / trtexec_p50_ms
    e2e_p50_ms: float | None = None
    e2e_p90_ms: float | None = None
    e2e_p99_ms: float | None = None
    e2e_mean_ms: float | None = None
    e2e_std_ms: float | None = None
    e2e_throughput: float | None = None
    e2e_samples: int | None = None
    size_mb: float | None = None
    speedup: float | None = None
    gflops: float | None = None
    peak_gflops: float | None = None
    peak_kind: str | None = None
    peak_fraction: float | None = None
    present: tuple[str, ...] = field(default=ROW_FIELDS, repr=False, compare=False)  # fields read, in order

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Row:
        unknown = [k for k in d if k not in ROW_FIELDS]
        if unknown:
            raise ValueError(f"unknown row fields {unknown}")
        return cls(**d, present=tuple(d))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.present}

    def __getitem__(self, key: str) -> Any:
        if key not in self.present:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.present)

    def __len__(self) -> int:
        return len(self.present)


@dataclass(frozen=True)
class Report:
    """What `edgetl bench --json` writes: settings, the machine, the targets, the rows, and the gate."""

    schema_version: int
    environment: dict[str, Any]
    rows: list[Row]
    edgetl_version: str = ""
    created: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    contention: dict[str, Any] | None = None
    roofline: dict[str, Any] | None = None
    gate: GateResult | None = None
    present: tuple[str, ...] = field(default=REPORT_FIELDS, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        """ValueError or TypeError naming what is wrong when ``d`` is not a report edgetl wrote."""
        unknown = [k for k in d if k not in REPORT_FIELDS]
        if unknown:
            raise ValueError(f"unknown report fields {unknown}")
        if not isinstance(d.get("rows"), list) or not isinstance(d.get("environment"), dict):
            raise ValueError("no rows or environment")
        rows = []
        for i, r in enumerate(d["rows"]):
            why = _bad_row(r)
            if why:
                raise ValueError(f"row {i} {why}")
            rows.append(Row.from_dict(r))
        gate = GateResult.from_dict(d["gate"]) if d.get("gate") is not None else None
        values = {f.name: d[f.name] for f in fields(cls) if f.name in d and f.name not in ("rows", "gate", "present")}
        return cls(**values, rows=rows, gate=gate, present=tuple(d))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in self.present:
            v = getattr(self, k)
            out[k] = [r.to_dict() for r in v] if k == "rows" else v.to_dict() if k == "gate" and v is not None else v
        return out

    def save(self, path: Path) -> None:
        from ..fileio import atomic_write_json

        atomic_write_json(Path(path), self.to_dict())


def load_report(path: Path) -> Report:
    """An earlier ``--json`` report (a baseline), checked for everything the gate reads."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such baseline (write one with --save-baseline)") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable bench report ({e})") from e
    if not isinstance(doc, dict):
        raise ArtifactError(f"{path}: not an edgetl bench report (no rows or environment)")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ArtifactError(f"{path}: bench schema_version {version!r}; this edgetl reads 1..{SCHEMA_VERSION}")
    try:
        return Report.from_dict(doc)
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"{path}: not an edgetl bench report ({e}); not a report edgetl wrote") from e


def _bad_row(row: Any) -> str | None:
    """Why a baseline row cannot be gated on (a latency of 0 would divide by zero), or None."""
    if not isinstance(row, dict) or not all(isinstance(row.get(k), (str, int, type(None))) for k in ROW_KEY):
        return "is not a bench row"
    if row.get("status") != "ok":
        return None
    times = [row.get("p50_ms"), *(row.get("p50_rounds_ms") or [])]
    if not all(isinstance(t, (int, float)) and math.isfinite(t) and t > 0 for t in times):
        return f"has latencies {times!r}, not positive numbers of milliseconds"
    top1 = row.get("top1")
    if top1 is not None and not (isinstance(top1, (int, float)) and math.isfinite(top1)):
        return f"has top-1 {top1!r}, not a number"
    return None
