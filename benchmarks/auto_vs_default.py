"""`edgetl auto` against the default fine-tuning run, side by side in one run of this script.

    python benchmarks/auto_vs_default.py --data ../shared/datasets/cifar10-mini --work /tmp/autobench [--factor 4]

1. The default: `edgetl finetune --data DATA --img-size 96 --epochs 3`, timed.
2. `edgetl auto --data DATA --time-budget <factor x that time>`, timed.
3. Both exported with `--int8 --int8-cpu` and timed together by one `edgetl bench --backends ort-int8
   --batch-size 1` (alternating rounds), so the latency ratio comes from one measurement.
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
    ap.add_argument("--max-latency-ms", type=float, default=None)
    args = ap.parse_args()
    default, search = args.work / "default", args.work / "auto"
    t_default = edgetl("finetune", "--data", args.data, "--img-size", "96", "--epochs", "3", "--out", str(default),
                       "--quiet")
    budget = args.factor * t_default
    limit = ["--max-latency-ms", str(args.max_latency_ms)] if args.max_latency_ms else []
    t_auto = edgetl("auto", "--data", args.data, "--out", str(search), "--time-budget", f"{budget:.0f}s", *limit)
    winner = search / "winner"
    edgetl("export", str(default), "--int8", "--int8-cpu", "--no-engine")
    if not (winner / "export" / "model.int8-cpu.onnx").exists():
        edgetl("export", str(winner), "--int8", "--int8-cpu", "--no-engine")
    report = args.work / "bench.json"
    edgetl("bench", str(default), str(winner), "--backends", "ort-int8", "--batch-size", "1", "--no-e2e", "--rounds", "5",
           "--json", str(report))
    rows = {Path(r["run"]).name: r for r in json.loads(report.read_text())["rows"] if r["backend"] == "ort-int8"}
    doc = json.loads((search / "auto.json").read_text())
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
    for f in doc["finalists"]:
        print(f"  finalist trial {f['trial']} {f['params']}: {f.get('top1')}% at {f.get('latency_ms')} ms ({f['status']})")


if __name__ == "__main__":
    main()
