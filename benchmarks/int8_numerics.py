"""INT8 numerics on this CPU: what each INT8 file scores and how fast it runs under each ONNX Runtime setting.

    python benchmarks/int8_numerics.py RUN [--batch-sizes 1,8] [--rounds 3] [--record]

RUN must have been exported with `edgetl export RUN --int8 --int8-cpu`. Rows, side by side in one run:

- ``fp32``: RUN/export/model.onnx, ORT defaults: the reference for accuracy and speed.
- ``trt-layout simulated``: model.int8.onnx with Q/DQ run as float ops (what edgetl reports for it).
- ``trt-layout default`` / ``x64quantprecision``: the same file on ORT's integer kernels, without and
  with ``session.x64quantprecision=1``.
- ``cpu-layout default`` / ``x64quantprecision`` / ``simulated``: model.int8-cpu.onnx likewise.
- ``cpu-layout edgetl runtime``: model.int8-cpu.onnx through edgetl's own ``OrtRunner``, with whatever
  setting it picks for this CPU (the figure users get from `edgetl predict` and `Predictor`).

Top-1 on the run's whole validation split; p50 at each batch size from interleaved rounds with
edgetl bench's timing code, and the speed ratio against FP32. The header names the CPU, its ISA
flags and the INT8 instruction set edgetl detects: a figure from one CPU kind says nothing about another.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from results_md import append_section, now

from edgetl.bench.environment import environment
from edgetl.bench.timing import host_timer, latency_stats, sample
from edgetl.data.sources import eval_transform, make_loader, run_data
from edgetl.evaluate import load_run_model
from edgetl.machine import usable_cores
from edgetl.metrics import Scorer
from edgetl.runtime.numerics import SAFE_KERNEL_CONFIG, SIMULATE_CONFIG, int8_can_saturate, int8_isa
from edgetl.runtime.onnxruntime import OrtRunner


class Plain:
    """A bare ONNX Runtime session with the given config entries: the independent path."""

    def __init__(self, path: Path, config: dict[str, str], threads: int, level: str = "all") -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if level == "extended"
                                         else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        for k, v in config.items():
            opts.add_session_config_entry(k, v)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": x})[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--record", action="store_true", help="Append the table to benchmarks/RESULTS.md.")
    args = ap.parse_args()
    run = Path(args.run)
    export = run / "export"
    rm = load_run_model(run)
    ds = run_data(rm.run)
    threads = usable_cores()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    started = now()
    trt, cpu = export / "model.int8.onnx", export / "model.int8-cpu.onnx"
    rows = {
        "fp32": Plain(export / "model.onnx", {}, threads),
        "trt-layout simulated": Plain(trt, SIMULATE_CONFIG, threads, "extended"),
        "trt-layout default": Plain(trt, {}, threads),
        "trt-layout x64quantprecision": Plain(trt, SAFE_KERNEL_CONFIG, threads),
        "cpu-layout simulated": Plain(cpu, SIMULATE_CONFIG, threads, "extended"),
        "cpu-layout default": Plain(cpu, {}, threads),
        "cpu-layout x64quantprecision": Plain(cpu, SAFE_KERNEL_CONFIG, threads),
        "cpu-layout edgetl runtime": OrtRunner(cpu, threads=threads),
    }
    batches = [(x.numpy(), y.numpy()) for x, y in make_loader(ds.val, eval_transform(rm.preprocess), 64,
                                                               shuffle=False, workers=0)]
    acc = {}
    for name, runner in rows.items():
        scorer = Scorer(len(rm.classes))
        for x, y in batches:
            scorer.update(runner.run(x), y)
        acc[name] = scorer.result().top1
        print(f"{name}: top-1 {acc[name]:.2f}%", flush=True)
    pool = batches[0][0]
    timers = {(n, bs): host_timer(r, [pool[i:i + bs] for i in range(0, len(pool) - bs + 1, bs)][:8])
              for n, r in rows.items() for bs in batch_sizes}
    rounds: dict[tuple, list[list[float]]] = {k: [] for k in timers}
    for r in range(args.rounds):
        keys = list(timers)
        shift = r % len(keys)
        for k in keys[shift:] + keys[:shift]:
            rounds[k].append(sample(timers[k], 10, None, args.min_seconds, 100 // args.rounds + 1))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    p50 = {k: latency_stats(v, k[1])["p50_ms"] for k, v in rounds.items()}
    env = environment(threads, True)
    isa = int8_isa()
    runtime = rows["cpu-layout edgetl runtime"]
    head = "| variant | top-1 % | Δ vs FP32 | " + " | ".join(f"p50 ms b{bs} | vs FP32 b{bs}" for bs in batch_sizes) + " |"
    lines = [head, "|---" + "|---:" * (2 + 2 * len(batch_sizes)) + "|"]
    for n in rows:
        cells = [n, f"{acc[n]:.2f}", f"{acc[n] - acc['fp32']:+.2f}"]
        for bs in batch_sizes:
            cells += [f"{p50[(n, bs)]:.3f}", f"{p50[('fp32', bs)] / p50[(n, bs)]:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    cpu_line = (f"CPU: {env['cpu']['model']}, flags {', '.join(env['cpu']['flags'])}; edgetl's INT8 ISA: {isa} "
                f"({'u8s8 kernels can saturate' if int8_can_saturate(isa) else 'u8s8 kernels do not saturate'}); "
                f"edgetl runtime session config for INT8: {runtime.session_config or '{}'}")
    print(cpu_line)
    print(table)
    if args.record:
        append_section(
            f"INT8 numerics on the {isa} CPU ({rm.run['model']}, {rm.preprocess.size} px, {rm.run['config']['data']})",
            f"Date: {started}. Command: `python benchmarks/int8_numerics.py {shlex.join(sys.argv[1:])}`; "
            f"{threads} threads, {args.rounds} interleaved rounds; top-1 on the {len(ds.val)} validation images. "
            f"{cpu_line}.\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
