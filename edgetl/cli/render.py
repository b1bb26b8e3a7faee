"""Tables and lines for people, shared by several commands (the library itself never prints)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ..errors import printable
from .app import out_console


def print_eval(where: str, res: Any, classes: list[str]) -> None:
    top5 = f", top-5 {res.top5:.2f}%" if len(classes) > 5 else ""  # always 100% with 5 classes or fewer
    out_console.print(f"[bold]{where}[/]: top-1 [bold]{res.top1:.2f}%[/]{top5}, "
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


def render_doctor(report: dict[str, Any], console: Any) -> None:
    """`edgetl doctor` as two tables: the machine, then one row per backend with the fix for each that is missing."""
    from rich.markup import escape as e
    from rich.table import Table

    t = Table(title=f"edgetl {report['edgetl']} doctor", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    py, plat, cpu = report["python"], report["platform"], report["cpu"]
    t.add_row("python", e(f"{py['version']} ({py['executable']})"))
    t.add_row("platform", e(f"{plat['system']} {plat['release']} {plat['machine']}"
                            + (" (in a container)" if plat["container"] else "")))
    t.add_row("cpu", e(f"{cpu['model']}, {cpu['usable_cores']}/{cpu['cores']} cores usable"))
    t.add_row("int8 kernels", e(_int8_line(cpu)))
    tv = report["torch"]
    t.add_row("torch", _missing(tv) or e(f"{tv['version']} (CUDA build {tv['cuda_build'] or 'none'}, "
                                          f"cuDNN {tv['cudnn'] or 'none'}, CUDA available: {tv['cuda_available']})"))
    ov = report["onnxruntime"]
    t.add_row("onnxruntime", _missing(ov) or e(f"{', '.join(ov['packages']) or ov['version']}: "
                                                f"{', '.join(ov['providers'])}"))
    t.add_row("tensorrt", _missing(report["tensorrt"]) or e(report["tensorrt"]["version"]))
    none = "integrated (not queried: no nvidia-smi or CUDA PyTorch here)" if report["jetson"] else "none found"
    for g in report["gpus"] or [{"name": none}]:
        extra = ", ".join(f"{k} {g[k]}" for k in ("compute_capability", "memory_mb", "driver") if g.get(k))
        t.add_row("gpu", e(g["name"] + (f" ({extra})" if extra else "")))
    j = report["jetson"]
    if j:
        t.add_row("jetson", e(j["model"]))
        t.add_row("L4T / JetPack", e(f"R{j['l4t']} / JetPack {j['jetpack']} (ships TensorRT {j['jetpack_tensorrt']})"))
        t.add_row("power mode", e(j["power_mode"] or "unknown: no answer from nvpmodel -q here (try it with sudo "
                                                      "on the host)"))
    console.print(t)

    b = Table(title="backends")
    b.add_column("backend")
    b.add_column("ok")
    b.add_column("why")
    b.add_column("to fix")
    for name, v in report["backends"].items():
        b.add_row(name, "[green]yes[/]" if v["ok"] else "[red]no[/]", e(v["why"]), e(v["install"]))
    console.print(b)


def _int8_line(cpu: dict[str, Any]) -> str:
    source = cpu.get("int8_isa_from", "/proc/cpuinfo")
    isa = cpu["int8_isa"] + ("" if source == "/proc/cpuinfo" else f" (from {source})")
    if cpu["int8_can_saturate"]:
        return (f"{isa}: ONNX Runtime's u8s8 kernels CAN saturate here (no VNNI); edgetl runs INT8 "
                "with session.x64quantprecision=1, plain ONNX Runtime users must set it too (except for "
                "int16-safe files such as model.int8-cpu.onnx)")
    return f"{isa}: ONNX Runtime's INT8 kernels do not saturate here"


def _missing(info: dict[str, Any]) -> str:
    from rich.markup import escape

    return "" if info["version"] else f"[red]missing[/] ({escape(str(info['error']))})"


def layer_table(doc: dict[str, Any], limit: int) -> Table:
    """The slowest layers of one ENGINE.layers.json, with what share of the engine's time they take and
    how much of it runs outside the engine's nominal precision."""
    rows = doc["layers"]
    t = Table(title=f"{doc.get('engine')}: {len(rows)} layers, {doc.get('total_ms') or 0:.3f} ms at batch "
                    f"{doc.get('batch')} (TensorRT {doc.get('tensorrt_version')}, {doc.get('format')})")
    for name in ("layer", "type", "precision", "median ms", "share"):
        t.add_column(name, justify="right" if name in ("median ms", "share") else "left")
    for r in rows[:limit]:
        t.add_row(printable(r["name"]), r["type"], r["precision"] or "?",
                  "-" if r["median_ms"] is None else f"{r['median_ms']:.4f}",
                  "-" if r["share"] is None else f"{100 * r['share']:.1f}%")
    by_precision: dict[str, float] = {}
    for r in rows:
        by_precision[r["precision"] or "?"] = by_precision.get(r["precision"] or "?", 0.0) + (r["share"] or 0.0)
    t.caption = "time by precision: " + ", ".join(f"{p} {100 * v:.1f}%" for p, v in
                                                  sorted(by_precision.items(), key=lambda kv: -kv[1]))
    return t
