"""`edgetl auto` against the default fine-tuning run, side by side in one run of this script.

    python benchmarks/auto_vs_default.py --data ../shared/datasets/cifar10-mini --work /tmp/autobench [--factor 4]
        [--latency-fraction 0.5 --img-sizes 64,80,96]

1. The default: `edgetl finetune --data DATA --img-size 96 --epochs 3`, timed, exported with `--int8
   --int8-cpu`; with --latency-fraction, its INT8 CPU p50 at batch 1 is measured (3 rounds) and
   auto's --max-latency-ms is that fraction of it (the issue's second target: half the latency).
2. `edgetl auto --data DATA --time-budget <factor x the default's training time>`, timed.
3. Both timed together by one `edgetl bench --backends ort-int8 --batch-size 1` (alternating
   rounds), so the latency ratio comes from one measurement.
Prints the default's and the winner's val top-1, INT8 CPU top-1 and latency, the ratio, and the finalists.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def edgetl(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgetl", *args], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", type=Path, required=True, help="a new folder for both runs")
    ap.add_argument("--factor", type=float, default=4.0, help="auto's budget as a multiple of the default's time")
    ap.add_argument("--latency-fraction", type=float, default=None,
                    help="auto's --max-latency-ms as this fraction of the default's INT8 CPU latency")
    ap.add_argument("--img-sizes", default=None, help="auto's --img-sizes (default: auto's own)")
    args = ap.parse_args()
    default, search = args.work / "default", args.work / "auto"
    t_default = edgetl("finetune", "--data", args.data, "--img-size", "96", "--epochs", "3", "--out", str(default),
                       "--quiet")
    budget = args.factor * t_default
    edgetl("export", str(default), "--int8", "--int8-cpu", "--no-engine")
    extra = ["--img-sizes", args.img_sizes] if args.img_sizes else []
    if args.latency_fraction:
        alone = args.work / "default-bench.json"
        edgetl("bench", str(default), "--backends", "ort-int8", "--batch-size", "1", "--no-e2e", "--rounds", "3",
               "--quiet", "--json", str(alone))
        p50 = next(r["p50_ms"] for r in json.loads(alone.read_text())["rows"]
                   if r["artifact"] == "model.int8-cpu.onnx" and r["status"] == "ok")
        extra += ["--max-latency-ms", f"{args.latency_fraction * p50:.3f}"]
        print(f"default INT8 CPU p50 {p50:.3f} ms: auto's --max-latency-ms {args.latency_fraction * p50:.3f}")
    t_auto = edgetl("auto", "--data", args.data, "--out", str(search), "--time-budget", f"{budget:.0f}s", *extra)
    winner = search / "winner"
    doc = json.loads((search / "auto.json").read_text())
    if doc["winner"] is None:  # nothing fit the limit: say what was found instead of timing a winner
        print(f"default finetune: {t_default:.0f} s; auto: {t_auto:.0f} s against a budget of {budget:.0f} s")
        print(f"auto's trials: {len(doc['trials'])}; no winner: {doc['why']}")
        _finalist_lines(doc)
        return
    if not (winner / "export" / "model.int8-cpu.onnx").exists():
        edgetl("export", str(winner), "--int8", "--int8-cpu", "--no-engine")
    report = args.work / "bench.json"
    edgetl("bench", str(default), str(winner), "--backends", "ort-int8", "--batch-size", "1", "--no-e2e", "--rounds", "5",
           "--json", str(report))
    rows = {Path(r["run"]).name: r for r in json.loads(report.read_text())["rows"]
            if r["artifact"] == "model.int8-cpu.onnx"}
    val = {"default": json.loads((default / "run.json").read_text())["metrics"]["val_top1"],
           "winner": json.loads((winner / "run.json").read_text())["metrics"]["val_top1"]}
    print(f"default finetune: {t_default:.0f} s; auto: {t_auto:.0f} s against a budget of {budget:.0f} s")
    print(f"auto's trials: {len(doc['trials'])} ({', '.join(sorted({t['state'] for t in doc['trials']}))})")
    for name in ("default", "winner"):
        r = rows[name]
        print(f"{name}: val top-1 {val[name]:.2f}%, INT8 CPU top-1 {r['top1']:.2f}%, p50 {r['p50_ms']:.2f} ms (batch 1)")
    print(f"winner / default: top-1 {rows['winner']['top1'] - rows['default']['top1']:+.2f} points, latency ratio "
          f"{rows['winner']['p50_ms'] / rows['default']['p50_ms']:.2f}")
    print(f"auto's choice: trial {doc['winner']['trial']} {doc['winner']['params']}: {doc['why']}")
    _finalist_lines(doc)


def _finalist_lines(doc: dict) -> None:
    for f in doc["finalists"]:
        print(f"  finalist trial {f['trial']} {f['params']}: {f.get('top1')}% at {f.get('latency_ms')} ms ({f['status']})")


if __name__ == "__main__":
    main()
