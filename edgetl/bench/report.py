"""A report for people: the terminal table, the environment and settings lines, the gate verdict, and
the markdown that RESULTS.md quotes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import MAX_REGRESSION
from .gate import round_spread, row_label
from .schema import Report
from .timing import BUSY, busy_share

COLUMNS = (  # (header, row -> text); the terminal table and the markdown share them
    ("backend", lambda r: r["backend"]),
    ("artifact", lambda r: r["artifact"] or "-"),
    ("batch", lambda r: str(r["batch_size"])),
    ("top-1 %", lambda r: _f(r["top1"], ".2f") + ("ˢ" if r.get("numerics") == "simulated" else "")),
    ("Δ top-1", lambda r: _f(r["delta_top1"], "+.2f")),
    ("p50 ms", lambda r: _f(r["p50_ms"], ".3f")),
    ("p90 ms", lambda r: _f(r["p90_ms"], ".3f")),
    ("p99 ms", lambda r: _f(r["p99_ms"], ".3f")),
    ("mean±std ms", lambda r: "-" if r["mean_ms"] is None else f"{r['mean_ms']:.3f}±{r['std_ms']:.3f}"),
    ("img/s", lambda r: _f(r["throughput"], ".1f")),
    ("e2e p50 ms", lambda r: _f(r["e2e_p50_ms"], ".3f")),
    ("MB", lambda r: _f(r["size_mb"], ".1f")),
    ("speed-up", lambda r: "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"),
)


# TensorRT rows timed by CUDA events: the host's wall time of the same calls, and trtexec's median.
HOST_COLUMNS = (("host p50 ms", lambda r: _f(r.get("host_p50_ms"), ".3f")),)
TRTEXEC_COLUMNS = (
    ("trtexec ms", lambda r: _f(r.get("trtexec_p50_ms"), ".3f")),
    ("vs trtexec", lambda r: "-" if r.get("vs_trtexec") is None else f"{r['vs_trtexec']:.2f}x"),
)

ROOFLINE_COLUMNS = (
    ("GFLOP/s", lambda r: _f(r["gflops"], ".1f")),
    ("% of peak", lambda r: "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}% {r['peak_kind']}"),
)


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _columns(report: Report) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    cols = list(COLUMNS)
    if len(report.targets) > 1:
        cols.insert(0, ("run", lambda r: r["run"]))
    if any(r.get("host_p50_ms") is not None for r in report.rows):
        cols.extend(HOST_COLUMNS)
    if any(r.get("trtexec_p50_ms") is not None for r in report.rows):
        cols.extend(TRTEXEC_COLUMNS)
    if report.roofline:
        cols.extend(ROOFLINE_COLUMNS)
    tolerance = report.gate.max_regression if report.gate is not None else MAX_REGRESSION
    return [*cols, ("status", lambda r: _status(r, tolerance))]


def _status(row: dict[str, Any], tolerance: float) -> str:
    """``ok``, or ``ok, unstable`` when the row's rounds disagree by more than the gate's tolerance: its p50
    then says less than the table's digits suggest."""
    spread = round_spread(row) if row["status"] == "ok" else None
    if spread is not None and spread > tolerance:
        return f"ok, unstable: rounds {spread:.0%} apart (limit {tolerance:.0%})"
    return row["status"]


def _display_rows(report: Report) -> list[dict[str, Any]]:
    """Rows that did not run are shown once, not once per batch size."""
    shown, seen = [], set()
    for r in report.rows:
        if r["status"] != "ok":
            key = (r["run"], r["backend"], r["artifact"])
            if key in seen:
                continue
            seen.add(key)
            r = {**r, "batch_size": "-"}
        shown.append(r)
    return shown


def environment_line(report: Report) -> str:
    env = report.environment
    cpu, v = env["cpu"], env["versions"]
    parts = [f"{cpu['model']} ({cpu['usable_cores']} cores, {cpu['threads']} threads)"]
    parts += [f"{g['name']} (driver {g['driver'] or '?'})" for g in env["gpus"]]
    if env["jetson"]:
        j = env["jetson"]
        clocks = {True: "locked", False: "not locked", None: "unknown"}[j["clocks"]["locked"]]
        parts.append(f"{j.get('model')} power mode {j.get('power_mode') or 'unknown'}, clocks {clocks}")
    parts.append(", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "tensorrt") if v.get(k)))
    parts.append(f"fingerprint {env['fingerprint']}")
    return "; ".join(parts)


def settings_line(report: Report) -> str:
    s = report.settings
    how = f"{s['iters']} iterations" if s["iters"] else f">= {s['min_samples']} samples and >= {s['min_seconds']:g} s"
    line = (f"warm-up {s['warmup']}, {how} per row, {s['rounds']} round(s), p50 = median of round medians; "
            f"accuracy preprocessing: {report.environment['accuracy_preprocessing']}")
    if any(r.get("numerics") == "simulated" for r in report.rows):
        line += ("; ˢ TensorRT-layout INT8 accuracy in float simulation of its Q/DQ nodes (what TensorRT "
                 "approximates), never with this CPU's integer kernels; its latency is ONNX Runtime's own")
    c = report.contention
    if c:
        line += (f"; while timing, other processes took {c['other_processes']:.0%} of the CPU time"
                 f" (steal {c['steal']:.0%})" + (": latencies inflated" if busy_share(c) > BUSY else ""))
    return line


OPTIONAL = ("mean±std ms", "p90 ms", "e2e p50 ms", "GFLOP/s", "MB", "% of peak")  # dropped first, in this order


def table(report: Report, width: int | None = None) -> Any:
    """The rich table of every row; on a terminal narrower than all columns, the OPTIONAL ones are left out
    (the JSON and markdown keep them) rather than every number being cut to an ellipsis."""
    from rich.markup import escape
    from rich.table import Table

    cols = _columns(report)
    rows = _display_rows(report)

    def needed(cs: list[tuple[str, Callable[[dict[str, Any]], str]]]) -> int:
        # status text may wrap; every other column wants its header or widest cell, plus 3 for padding and rule
        return 1 + sum(3 + max([len(h)] + [len(fn(r)) for r in rows if r["status"] == "ok"])
                       for h, fn in cs if h != "status") + 3 + len("status")

    for name in OPTIONAL:
        if width is None or needed(cols) <= width:
            break
        cols = [c for c in cols if c[0] != name]
    t = Table(title="edgetl bench", caption=escape(f"{environment_line(report)}\n{settings_line(report)}"))
    for header, _ in cols:
        t.add_column(header, justify="left" if header in ("run", "backend", "artifact", "status") else "right",
                     overflow="fold")  # a narrow terminal wraps a cell rather than hiding its end
    for r in rows:
        cells = [fn(r) for _, fn in cols]
        style = ("yellow" if cells[-1] != "ok" else None) if r["status"] == "ok" else \
            "dim" if r["status"].startswith("skipped") else "red"
        t.add_row(*[escape(c) for c in cells], style=style)
    return t


def gate_lines(report: Report) -> list[str]:
    """What the gate decided, one line each: the verdict, then the offending rows, then notes."""
    g = report.gate
    if g is None:
        return []
    verdict = "PASS" if g.passed else "FAIL" if g.failures else "FAIL (nothing compared)"
    lines = [f"gate {verdict} against {g.baseline}: {g.compared} row(s) compared, "
             f"{len(g.failures)} offending (limits: latency +{g.max_regression:.0%}, top-1 -{g.max_drop:.2f} points)"]
    lines += [f"  {row_label(f)}: {f['reason']}" for f in g.failures]
    lines += [f"  note: {n}" for n in g.notes]
    return lines


def markdown(report: Report) -> str:
    """A pull-request-ready table, with the environment and the gate's verdict."""
    cols = _columns(report)
    out = [f"**edgetl bench** ({report.created}): {environment_line(report)}", "",
           f"_{settings_line(report)}_", "",
           "| " + " | ".join(h for h, _ in cols) + " |",
           "|" + "|".join("---" if h in ("run", "backend", "artifact", "status") else "---:" for h, _ in cols) + "|"]
    for r in _display_rows(report):
        out.append("| " + " | ".join(fn(r).replace("|", "\\|") for _, fn in cols) + " |")
    if report.roofline:
        peaks = report.roofline["peaks"]
        out += ["", "Matrix-multiply peaks: " + "; ".join(f"{dev} {kind} {p['gflops']:.0f} GFLOP/s ({p['method']})"
                                                         for dev, kinds in peaks.items() for kind, p in kinds.items())]
    lines = gate_lines(report)
    if lines:
        out += ["", f"**{lines[0]}**", *[f"- {ln.strip()}" for ln in lines[1:]]]
    return "\n".join(out) + "\n"
