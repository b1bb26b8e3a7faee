"""Which INT8 format pays on a CPU? The TensorRT-shaped Q/DQ model against CPU-oriented variants, on ONNX Runtime.

    python benchmarks/int8_cpu.py runs/digits224 [--calib-size 128] [--record]

Variants, all from RUN/export/model.onnx and calibrated (MinMax) on the same stratified training images:

- ``trt-qdq-s8s8``: RUN/export/model.int8.onnx as `edgetl export --int8` writes it (symmetric INT8
  activations and weights, per-channel, bias in float: what TensorRT wants).
- ``qdq-u8s8``: Q/DQ with asymmetric UINT8 activations and symmetric per-channel INT8 weights, the
  pairing x86 VNNI (``vpdpbusd``: u8 x s8) and ONNX Runtime's MLAS kernels are built around.
- ``qdq-u8s8-stem-fp32``: the same with the first convolution left in float (it sees raw pixels).
- ``qdq-u8s8-guard-fp32``: the same with the layers export's accuracy guard kept in float for
  model.int8.onnx (its manifest's ``float_layers``): like for like with the TensorRT-shaped model.
- ``qop-u8s8-guard-fp32``: that in QOperator format (QLinearConv, QLinearMatMul ...), no Q/DQ pairs to fuse.

For each: file size, top-1 on the run's validation split (`edgetl eval`'s path), p50 latency at the given
batch sizes (interleaved rounds, as `edgetl bench` times them), and how many Conv/Gemm nodes ONNX
Runtime actually runs as integer kernels after its graph optimizations (the optimized graph is saved
and counted). ``--record`` appends the table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

from results_md import append_section, now

from edgetl.bench.timing import host_timer, latency_stats, sample
from edgetl.data.sources import eval_transform, load_data, make_loader
from edgetl.evaluate import evaluate_runner, load_run_model
from edgetl.export.int8.calibrate import CalibrationReader, calibration_split, prepare
from edgetl.export.int8.qdq import stem_nodes
from edgetl.machine import usable_cores
from edgetl.runtime.onnxruntime import OrtRunner

INT_MAC_OPS = {"QLinearConv", "NhwcQLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
FLOAT_MAC_OPS = {"Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "FusedMatMul", "NhwcFusedConv"}


def quantize_u8s8(prep: Path, dst: Path, reader: CalibrationReader, fmt: str, exclude: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader.rewind()
    quantize_static(str(prep), str(dst), calibration_data_reader=reader,
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def kernel_counts(model: Path, work: Path, threads: int) -> tuple[int, int]:
    """(integer MAC kernels, float MAC kernels) in the graph ONNX Runtime runs after optimization."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.optimized_model_filepath = str(work / f"{model.stem}.optimized.onnx")
    opts.log_severity_level = 3  # not the warning that an NCHWc-optimized file is hardware specific: it is read once, here
    ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    return sum(ops[o] for o in INT_MAC_OPS), sum(ops[o] for o in FLOAT_MAC_OPS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--calib-size", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--record", action="store_true", help="Append the table to benchmarks/RESULTS.md.")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    run = Path(args.run)
    export = run / "export"
    rm = load_run_model(run)
    cfg = rm.run["config"]
    ds = load_data(cfg["data"], cfg.get("val_split"), cfg.get("seed", 0))
    threads = usable_cores()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    started = now()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prep = prepare(export / "model.onnx", work)
        reader = CalibrationReader(calibration_split(ds, None, args.calib_size), rm.preprocess)
        variants = {"fp32": export / "model.onnx", "trt-qdq-s8s8": export / "model.int8.onnx"}
        manifest = json.loads((export / "manifest.json").read_text())
        guard = next(a.get("float_layers", []) for a in manifest["artifacts"] if a["file"] == "model.int8.onnx")
        for name, fmt, exclude in (("qdq-u8s8", "qdq", []), ("qdq-u8s8-stem-fp32", "qdq", stem_nodes(prep)),
                                   ("qdq-u8s8-guard-fp32", "qdq", guard), ("qop-u8s8-guard-fp32", "qop", guard)):
            variants[name] = work / f"{name}.onnx"
            print(f"quantizing {name}", flush=True)
            quantize_u8s8(prep, variants[name], reader, fmt, exclude)
        runners = {name: OrtRunner(path, threads=threads) for name, path in variants.items()}
        acc = {}
        for name, runner in runners.items():
            acc[name] = evaluate_runner(runner, ds.val, rm.preprocess, len(rm.classes)).top1
            print(f"{name}: top-1 {acc[name]:.2f}%", flush=True)
        pool = next(iter(make_loader(ds.val, eval_transform(rm.preprocess), 64, shuffle=False, workers=0)))[0].numpy()
        timers = {(n, bs): host_timer(r, [pool[i:i + bs] for i in range(0, len(pool) - bs + 1, bs)][:8])
                  for n, r in runners.items() for bs in batch_sizes}
        rounds: dict[tuple, list[list[float]]] = {k: [] for k in timers}
        for r in range(args.rounds):
            for k, timed in timers.items():
                rounds[k].append(sample(timed, 10, None, args.min_seconds, 100 // args.rounds + 1))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        p50 = {k: latency_stats(v, k[1])["p50_ms"] for k, v in rounds.items()}
        kernels = {n: kernel_counts(p, work, threads) for n, p in variants.items()}
        sizes = {n: p.stat().st_size / 1e6 for n, p in variants.items()}
    head = "| variant | MB | top-1 % | Δ vs FP32 | int8 / float MAC kernels | " + " | ".join(
        f"p50 ms b{bs} | vs FP32 b{bs}" for bs in batch_sizes) + " |"
    lines = [head, "|---" + "|---:" * (4 + 2 * len(batch_sizes)) + "|"]
    for n in variants:
        cells = [n, f"{sizes[n]:.1f}", f"{acc[n]:.2f}", f"{acc[n] - acc['fp32']:+.2f}", f"{kernels[n][0]} / {kernels[n][1]}"]
        for bs in batch_sizes:
            cells += [f"{p50[(n, bs)]:.3f}", f"{p50[('fp32', bs)] / p50[(n, bs)]:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        spread = statistics.median(len(v[0]) for v in rounds.values())
        append_section(
            f"INT8 on this CPU: TensorRT-shaped Q/DQ against CPU-oriented variants ({rm.run['model']}, "
            f"{rm.preprocess.size} px)",
            f"Date: {started}. Command: `python benchmarks/int8_cpu.py {shlex.join(sys.argv[1:])}`; "
            f"{threads} threads, {args.rounds} interleaved rounds (median {spread:.0f} samples per round), "
            f"MinMax calibration on {args.calib_size} training images; top-1 on the {len(ds.val)} validation images.\n\n"
            + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
