"""Tables and lines for people, shared by several commands (the library itself never prints)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from .app import out_console


def print_eval(where: str, res: Any, classes: list[str]) -> None:
    out_console.print(f"[bold]{where}[/]: top-1 [bold]{res.top1:.2f}%[/], top-5 {res.top5:.2f}%, "
                      f"loss {res.loss:.4f}, {res.images} images")
    t = Table(title="per class (rows: true, columns: predicted)")
    t.add_column("class")
    t.add_column("acc", justify="right")
    show_matrix = len(classes) <= 20
    if show_matrix:
        for c in classes:
            t.add_column(c[:6], justify="right")
    for i, (c, acc) in enumerate(zip(classes, res.per_class())):
        t.add_row(c, f"{acc:.1f}%", *([str(int(v)) for v in res.confusion[i]] if show_matrix else []))
    out_console.print(t)


def artifact_table(report: Any) -> Table:
    t = Table(title=f"artifacts in {report.out}")
    for col in ("file", "precision", "MB", "top-1", "Δ top-1", "numerics", "INT8 layers", "sha256"):
        t.add_column(col, justify="right" if col in ("MB", "top-1", "Δ top-1") else "left")
    for a in report.artifacts:
        acc = a.get("accuracy") or {}
        share = a.get("int8")
        t.add_row(a["file"], a["precision"], f"{a.get('size_bytes', 0) / 1e6:.1f}",
                  f"{acc['top1']:.2f}%" if "top1" in acc else "-",
                  f"{acc['delta_top1']:+.2f}" if "delta_top1" in acc else "-",
                  acc.get("numerics", "-") + (f" ({acc['isa']})" if acc.get("isa") else ""),
                  f"{share['int8_layers']}/{share['weighted_layers']}, {100 * share['int8_mac_share']:.0f}% MACs"
                  if share else "-", a["sha256"][:12])
    return t
