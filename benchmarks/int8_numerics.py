"""INT8 numerics on this CPU: what each INT8 file scores and how fast it runs under each ONNX Runtime setting.

    python benchmarks/int8_numerics.py RUN [--batch-sizes 1,8] [--rounds 3] [--also NAME=FILE] [--record]
    python benchmarks/int8_numerics.py RUN --emulate EPYC-Rome [--images 300] [--also NAME=FILE] [--record]

RUN must have been exported with `edgetl export RUN --int8 --int8-cpu`. Rows, side by side in one run:

- ``fp32``: RUN/export/model.onnx, ORT defaults: the reference for accuracy and speed.
- ``trt-layout simulated``: model.int8.onnx with Q/DQ run as float ops (what edgetl reports for it).
- ``trt-layout default`` / ``x64quantprecision``: the same file on ORT's integer kernels, without and
  with ``session.x64quantprecision=1``; ``trt-layout edgetl runtime``: through edgetl's ``OrtRunner``.
- ``cpu-layout default`` / ``x64quantprecision`` / ``simulated`` / ``edgetl runtime``: model.int8-cpu.onnx
  likewise (the edgetl runtime row is the figure users get from `edgetl predict` and `Predictor`).
- ``--also NAME=FILE``: another INT8 file (an older export's model.int8-cpu.onnx, say), default and
  edgetl runtime rows.

Top-1 on the run's whole validation split; p50 at each batch size from interleaved rounds with
edgetl bench's timing code, and the speed ratio against FP32. The header names the CPU, its ISA
flags and the INT8 instruction set edgetl detects: a figure from one CPU kind says nothing about another.

``--emulate MODEL`` scores the rows that run ORT's integer kernels (top-1 only, no timing: emulated
time means nothing) with ONNX Runtime under ``qemu-x86_64 -cpu MODEL``, e.g. EPYC-Rome, an AVX2-only
EPYC: QEMU answers ORT's CPUID check for that CPU and its vpmaddubsw saturates as the real one does.
Beside each, the same row on this host; FP32 and the simulated rows are float and scored here only.
The images are preprocessed on the host; edgetl is told the emulated ISA through EDGETL_INT8_ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgetl.metrics import Scorer
from edgetl.runtime.numerics import SAFE_KERNEL_CONFIG, SIMULATE_CONFIG, int8_can_saturate, int8_isa
from edgetl.runtime.onnxruntime import OrtRunner

EMULATED_ISA = {"EPYC-Rome": "avx2", "EPYC": "avx2", "Haswell": "avx2", "Skylake-Server": "avx512"}
INTEGER = ("default", "x64quantprecision", "edgetl runtime")


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


def variants(export: Path, also: list[str], threads: int) -> dict[str, object]:
    """The rows, by name: each a runner with ``run(x) -> logits``. Names with "default", "x64quantprecision"
    or "edgetl runtime" run ORT's integer kernels (``INTEGER``)."""
    trt, cpu = export / "model.int8.onnx", export / "model.int8-cpu.onnx"
    rows = {
        "fp32": Plain(export / "model.onnx", {}, threads),
        "trt-layout simulated": Plain(trt, SIMULATE_CONFIG, threads, "extended"),
        "trt-layout default": Plain(trt, {}, threads),
        "trt-layout x64quantprecision": Plain(trt, SAFE_KERNEL_CONFIG, threads),
        "trt-layout edgetl runtime": OrtRunner(trt, threads=threads),
        "cpu-layout simulated": Plain(cpu, SIMULATE_CONFIG, threads, "extended"),
        "cpu-layout default": Plain(cpu, {}, threads),
        "cpu-layout x64quantprecision": Plain(cpu, SAFE_KERNEL_CONFIG, threads),
        "cpu-layout edgetl runtime": OrtRunner(cpu, threads=threads),
    }
    for item in also:
        name, _, path = item.partition("=")
        rows[f"{name} default"] = Plain(Path(path), {}, threads)
        rows[f"{name} edgetl runtime"] = OrtRunner(Path(path), threads=threads)
    return rows


def score(rows: dict[str, object], batches: list[tuple[np.ndarray, np.ndarray]], classes: int) -> dict[str, float]:
    acc = {}
    for name, runner in rows.items():
        scorer = Scorer(classes)
        for x, y in batches:
            scorer.update(runner.run(x), y)  # type: ignore[attr-defined]
        acc[name] = scorer.result().top1
        print(f"{name}: top-1 {acc[name]:.2f}%", file=sys.stderr, flush=True)
    return acc


def child(args: argparse.Namespace) -> int:
    """Inside the emulator: score every row on the host's preprocessed images, print JSON."""
    data = np.load(args.child)
    batches = [(data["x"][i:i + 64], data["y"][i:i + 64]) for i in range(0, len(data["y"]), 64)]
    rows = {n: r for n, r in variants(Path(args.run) / "export", args.also, args.threads).items() if n.endswith(INTEGER)}
    acc = score(rows, batches, int(data["classes"]))
    configs = {n: getattr(r, "session_config", None) for n, r in rows.items()}
    print(json.dumps({"top1": acc, "isa": int8_isa(), "configs": configs}))
    return 0


def emulate(args: argparse.Namespace, batches: list[tuple[np.ndarray, np.ndarray]], classes: int) -> dict:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("--emulate needs qemu-x86_64 (Debian: apt-get install qemu-user)")
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "val.npz"
        np.savez(npz, x=np.concatenate([x for x, _ in batches]), y=np.concatenate([y for _, y in batches]),
                 classes=classes)
        cmd = [qemu, "-cpu", args.emulate, sys.executable, __file__, args.run, "--child", str(npz),
               "--threads", str(args.threads)] + [f"--also={a}" for a in args.also]
        env = {**os.environ, "EDGETL_INT8_ISA": EMULATED_ISA[args.emulate]}
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if r.returncode:
        sys.exit(f"the emulated run failed (exit {r.returncode})")
    return json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--also", action="append", default=[], metavar="NAME=FILE", help="Another INT8 file's rows.")
    ap.add_argument("--emulate", choices=sorted(EMULATED_ISA), help="Top-1 only, under qemu-x86_64 -cpu MODEL.")
    ap.add_argument("--images", type=int, default=0, help="With --emulate: the first N validation images (0: all).")
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--record", action="store_true", help="Append the table to benchmarks/RESULTS.md.")
    args = ap.parse_args()
    if args.child:
        return child(args)

    from results_md import append_section, now

    from edgetl.bench.environment import environment
    from edgetl.bench.timing import host_timer, latency_stats, sample
    from edgetl.data.sources import eval_transform, make_loader, run_data
    from edgetl.evaluate import load_run_model
    from edgetl.machine import usable_cores

    run = Path(args.run)
    rm = load_run_model(run)
    ds = run_data(rm.run)
    args.threads = args.threads or usable_cores()
    started = now()
    val = ds.val.subset(range(min(args.images, len(ds.val)))) if args.images else ds.val
    batches = [(x.numpy(), y.numpy()) for x, y in make_loader(val, eval_transform(rm.preprocess), 64,
                                                               shuffle=False, workers=0)]
    env = environment(args.threads, True)
    host = (f"host CPU: {env['cpu']['model']}, flags {', '.join(env['cpu']['flags'])}")
    what = f"{rm.run['model']}, {rm.preprocess.size} px, {rm.run['config']['data']}"
    command = f"`python benchmarks/int8_numerics.py {shlex.join(sys.argv[1:])}`"
    rows = variants(run / "export", args.also, args.threads)
    acc = score(rows, batches, len(rm.classes))
    if args.emulate:
        got = emulate(args, batches, len(rm.classes))
        emulated, configs = got["top1"], got["configs"]
        lines = [f"| variant | top-1 % here ({int8_isa()}) | top-1 % emulated | Δ emulated vs FP32 | setting edgetl chose "
                 "there |", "|---|---:|---:|---:|---|"]
        for n, a in acc.items():
            there = [f"{emulated[n]:.2f}", f"{emulated[n] - acc['fp32']:+.2f}",
                     "-" if configs[n] is None else str(configs[n] or "{}")] if n in emulated else ["-", "-", "-"]
            lines.append("| " + " | ".join([n, f"{a:.2f}", *there]) + " |")
        table = "\n".join(lines)
        head = (f"ONNX Runtime under `qemu-x86_64 -cpu {args.emulate}` (EDGETL_INT8_ISA={got['isa']}) beside the "
                f"host; {host}; top-1 only (emulated time means nothing)")
        print(head)
        print(table)
        if args.record:
            append_section(f"INT8 numerics on an emulated {args.emulate} ({got['isa']}) CPU ({what})",
                           f"Date: {started}. Command: {command}; top-1 on the first {len(val)} validation "
                           f"images. {head}.\n\n" + table)
        return 0

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
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
                f"edgetl runtime session config for model.int8-cpu.onnx: {runtime.session_config or '{}'}")  # type: ignore[attr-defined]
    print(cpu_line)
    print(table)
    if args.record:
        append_section(
            f"INT8 numerics on the {isa} CPU ({what})",
            f"Date: {started}. Command: {command}; {args.threads} threads, {args.rounds} interleaved rounds; "
            f"top-1 on the {len(val)} validation images. {cpu_line}.\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
