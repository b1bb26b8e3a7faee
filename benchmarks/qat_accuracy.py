"""FP32 vs post-training INT8 (every weighted layer INT8; and with the accuracy guard) vs quantization-aware
training (every weighted layer INT8), side by side on each run given.

    python benchmarks/qat_accuracy.py runs/lite0-cifar-96 runs/mnv3-cifar-96 [--max-drop 0.3] [--qat-epochs 1]

Each variant is one `edgetl export` in a fresh process (into RUN/qatbench/<variant>), with
--quantize-stem and --int8-cpu. Its top-1 is then measured again here, independently of export's
own figures: a plain ONNX Runtime session with the Q/DQ simulated in float (session.disable_quant_qdq)
on the run's validation split, which training never saw. ORT CPU latency is the batch-1 time of
model.int8-cpu.onnx (and of model.onnx for FP32) in plain sessions with both cores, all files of a run
timed in alternating rounds after its exports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = {  # name: extra export flags
    "ptq, all int8": ["--max-drop", "100"],
    "ptq + guard": [],  # --max-drop from the command line
    "qat, all int8": ["--max-drop", "100", "--qat"],
}


def simulated_top1(onnx_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    s = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    pred = np.concatenate([s.run(None, {"input": x[i:i + 128]})[0].argmax(1) for i in range(0, len(x), 128)])
    return 100.0 * float((pred == y).mean())


def latencies_ms(paths: list[Path], x: np.ndarray, rounds: int = 7, runs: int = 60) -> list[float]:
    """Median batch-1 time of each file, timed in alternating rounds so that a slow spell of a shared
    machine hits all of them alike; the figure is the median of the round medians."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]
    one = {"input": x[:1]}
    for s in sessions:
        for _ in range(30):
            s.run(None, one)
    medians: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for k, s in enumerate(sessions):
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, one)
                times.append(time.perf_counter() - t0)
            medians[k].append(statistics.median(times))
    return [1000 * statistics.median(m) for m in medians]


def validation(run: Path) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from edgetl.data.sources import eval_transform, make_loader, run_data
    from edgetl.evaluate import load_run_model

    rm = load_run_model(run)
    xs, ys = [], []
    for x, y in make_loader(run_data(rm.run).val, eval_transform(rm.preprocess), 256, shuffle=False, workers=0):
        xs.append(x.numpy())
        ys.append(torch.as_tensor(y).numpy())
    return np.concatenate(xs), np.concatenate(ys)


def export(run: Path, out: Path, flags: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgetl", "export", str(run), "--out", str(out), "--int8", "--int8-cpu",
                        "--quantize-stem", "--no-engine", "--json", *flags], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1]}, secs
    return json.loads(r.stdout), secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--max-drop", default="0.3")
    ap.add_argument("--qat-epochs", default="1")
    args = ap.parse_args()
    lines = ["| run | variant | top-1 (export) | top-1 (plain ORT, simulated) | drop | float layers | seconds | "
             "ORT CPU ms (batch 1) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for run in args.runs:
        x, y = validation(run)
        rows: list[tuple[list[str], Path | None]] = []  # cells without the latency, the file to time
        for name, flags in VARIANTS.items():
            flags = [*flags, "--qat-epochs", args.qat_epochs] if "--qat" in flags else flags
            if name == "ptq + guard":
                flags = ["--max-drop", args.max_drop]
            out = run / "qatbench" / name.replace(", ", "-").replace(" + ", "-").replace(" ", "-")
            report, secs = export(run, out, flags)
            if "error" in report:
                rows.append(([run.name, name, f"failed: {report['error']}", "", "", "", f"{secs:.0f}"], None))
                continue
            if not rows:
                fp32 = report["accuracy"]["fp32"]["top1"]
                rows.append(([run.name, "fp32", f"{fp32:.2f}", f"{simulated_top1(out / 'model.onnx', x, y):.2f}", "-",
                              "-", "-"], out / "model.onnx"))
            acc = report["accuracy"]["int8"]
            note = ""
            if report.get("qat"):
                q = report["qat"]
                note = (f" (QAT {q['epochs']} epoch, {q['seconds']:.0f} s training; PTQ {q['ptq']['top1']:.2f}"
                        f"{'' if q['used'] else '; QAT not used'})")
            cpu = out / "model.int8-cpu.onnx"
            rows.append(([run.name, name + note, f"{acc['top1']:.2f}",
                          f"{simulated_top1(out / 'model.int8.onnx', x, y):.2f}", f"{-acc['delta_top1']:+.2f}",
                          str(len(report["guard"].get("float_layers", []))), f"{secs:.0f}"],
                         cpu if cpu.exists() else None))
            print(" | ".join(rows[-1][0]), flush=True)
        timed = [p for _, p in rows if p is not None]
        ms = dict(zip(timed, latencies_ms(timed, x)))
        for cells, p in rows:
            lines.append("| " + " | ".join([*cells, f"{ms[p]:.2f}" if p is not None else "-"]) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
