"""Pictures for people: a run's training curves, a confusion matrix, and a bench report's latency against
accuracy. Drawn with matplotlib, an optional extra (``pip install 'edgetl[plots]'``) imported only here
and only when a picture is asked for; without it `finetune` still trains (and says how to get the
curves) and ``--plot`` is a usage error that names the install command. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import extras
from .extras import install_hint
from .fileio import atomic_write

INSTALL_HINT = install_hint("plots")


def available() -> bool:
    return extras.available("matplotlib")


def require() -> None:
    """UsageError (exit 2) before any work, when a --plot cannot be drawn."""
    extras.require("matplotlib", "plots", "--plot")


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib import pyplot

    return pyplot


def save_figure(fig: Any, path: Path) -> None:
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        pyplot().close(fig)


def training_curves(history: Sequence[dict[str, float]], best_epoch: int, path: Path) -> None:
    """Loss, and train/val top-1, against epochs, with the best epoch (the one in best.pt) marked."""
    plt = pyplot()
    epochs = [int(r["epoch"]) for r in history]
    fig, (loss, top1) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    top1.plot(epochs, [r["train_top1"] for r in history], "o-", label="train")
    top1.plot(epochs, [r["val_top1"] for r in history], "o-", label="val")
    top1.set(xlabel="epoch", ylabel="top-1 (%)", title="top-1")
    for ax in (loss, top1):
        if best_epoch in epochs:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    save_figure(fig, path)


def confusion_heatmap(confusion: Any, classes: Sequence[str], path: Path, title: str) -> None:
    """Rows: true class, columns: predicted, each row as a share of its images (counts written in cells)."""
    import numpy as np

    plt = pyplot()
    counts = np.asarray(confusion, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    side = min(max(4.0, 0.45 * n + 2), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), labels=classes, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), labels=classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 30:  # beyond that the numbers are unreadable; the colours still show the pattern
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if shares[i, j] > 0.5 else "black")
    save_figure(fig, path)


def latency_accuracy(rows: Sequence[Any], path: Path, title: str) -> int:
    """p50 latency (log scale) against top-1 for every measured row, one marker per backend and artifact, each
    point labelled with its batch size; returns the number of points drawn (skipped or failed rows have
    neither)."""
    plt = pyplot()
    points = [r for r in rows if r.get("p50_ms") is not None and r.get("top1") is not None]
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^v<>P*X"
    series = sorted({(r["backend"], r["artifact"], r.get("numerics") == "simulated") for r in points})
    for k, (backend, artifact, simulated) in enumerate(series):
        mine = [r for r in points if (r["backend"], r["artifact"]) == (backend, artifact)]
        label = f"{backend} {artifact}" + (" (top-1 simulated)" if simulated else "")
        ax.scatter([r["p50_ms"] for r in mine], [r["top1"] for r in mine], marker=markers[k % len(markers)],
                   s=60, label=label)
        for r in mine:
            ax.annotate(f"b{r['batch_size']}", (r["p50_ms"], r["top1"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="p50 latency per batch (ms, log scale)", ylabel="top-1 (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    if series:
        ax.legend(fontsize=8)
    save_figure(fig, path)
    return len(points)


def pareto(finalists: Sequence[dict[str, Any]], winner: dict[str, Any] | None, target: str, path: Path,
           by_gflops: bool = False) -> None:
    """`edgetl auto`'s timed finalists: top-1 against latency (against GFLOPs per image, the stated proxy,
    where the target cannot be timed here), the Pareto front (no other finalist is both cheaper and more
    accurate) joined by a line, the chosen one labelled."""
    plt = pyplot()
    key = "gflops" if by_gflops else "latency_ms"
    timed = [f for f in finalists if f.get("status") == "ok"]
    front = sorted((f for f in timed if not any(g[key] <= f[key] and g["top1"] >= f["top1"]
                                                 and g is not f and (g[key], g["top1"]) != (f[key], f["top1"])
                                                 for g in timed)), key=lambda f: f[key])
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([f[key] for f in timed], [f["top1"] for f in timed], s=50, color="0.6", label="finalist")
    ax.plot([f[key] for f in front], [f["top1"] for f in front], "o-", color="C0", label="Pareto front")
    for f in timed:
        p = f["params"]
        ax.annotate(f"#{f['trial']} {p['model']} {p['strategy']} {p['img_size']}px", (f[key], f["top1"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=7)
    if winner is not None:
        ax.scatter([winner[key]], [winner["top1"]], s=160, facecolors="none", edgecolors="C3", linewidths=2,
                   label=f"chosen: trial {winner['trial']}")
    xlabel = "GFLOPs per image (latency proxy: not timed here)" if by_gflops else f"{target} p50 latency (ms)"
    ax.set(xlabel=xlabel, ylabel=f"{target} top-1 (%)", title="edgetl auto: finalists")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
