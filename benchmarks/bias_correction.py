"""Sequential bias correction, edgetl's way against the reference way, side by side on one run.

    python benchmarks/bias_correction.py RUN [--calib-size 512]

RUN must have RUN/export/model.onnx (`edgetl export RUN`). The model is quantized once (TensorRT layout,
stem in float, as export does), then copies are corrected:

- ``edgetl``: `correct_biases`, one pass through the network segment by segment, simulated as reported
  accuracy is (ORT_ENABLE_EXTENDED);
- ``reference``: the textbook loop, the whole graph up to each conv run from the input, same numerics;
- ``reference-nchwc``: the same loop on ORT's NCHWc kernels (ORT_ENABLE_ALL), edgetl's way until
  2026-12-06.

Prints for each, and for no correction: seconds, validation top-1 (simulated), the logits' mean squared
error against FP32 on the validation split (smoother than top-1 on small splits), and edgetl's speed-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from edgetl.data.sources import eval_transform, make_loader, run_data
from edgetl.evaluate import load_run_model
from edgetl.export.config import ExportConfig
from edgetl.export.int8.bias import BIAS_PIXELS, _Biases, _mean, _upto, correct_biases
from edgetl.export.int8.calibrate import calibrate, calibration_split, prepare
from edgetl.export.int8.job import PROBE_MIN_IMAGES, Int8Job, ValFeed
from edgetl.export.int8.qdq import layer_macs, quantize, stem_nodes
from edgetl.fileio import atomic_write_json
from edgetl.progress import Log
from edgetl.runtime.onnxruntime import OrtRunner


def reference(job: Int8Job, q: onnx.ModelProto, prep: onnx.ModelProto, nchwc: bool) -> int:
    """Each conv's output from the input through everything before it, after the shifts before it."""
    import onnxruntime as ort

    biases = _Biases(q)
    in_prep = {c.name: c for c in prep.graph.node if c.op_type == "Conv"}
    convs = [c for c in q.graph.node if c.op_type == "Conv" and biases.has(c) and c.name in in_prep]
    n = max(PROBE_MIN_IMAGES, BIAS_PIXELS // job.val.pp.size ** 2)
    x = np.concatenate([b.numpy() for b, _ in make_loader(job.calib.sample(n), eval_transform(job.val.pp), 64,
                                                          shuffle=False, workers=0)])

    def out(model: onnx.ModelProto, name: str, simulate: bool) -> np.ndarray:
        opts = ort.SessionOptions()
        if simulate:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
            if not nchwc:
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        session = ort.InferenceSession(_upto(model, [name]).SerializeToString(), opts,
                                       providers=["CPUExecutionProvider"])
        return session.run([name], {"input": x})[0]

    for conv in convs:
        biases.shift(conv, _mean(out(prep, in_prep[conv.name].output[0], False)) - _mean(out(q, conv.output[0], True)))
    return len(convs)


def logits(path: Path, job: Int8Job, simulate: bool) -> tuple[np.ndarray, np.ndarray]:
    runner = OrtRunner(path, own=True, simulate=simulate)
    got, labels = [], []
    for x, y in make_loader(job.val.split, eval_transform(job.val.pp), 64, shuffle=False, workers=0):
        got.append(runner.run(x.numpy()))
        labels.append(y.numpy())
    return np.concatenate(got), np.concatenate(labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--calib-size", type=int, default=512)
    args = ap.parse_args()
    run = Path(args.run)
    rm = load_run_model(run)
    ds = run_data(rm.run)
    cfg = ExportConfig(run=str(run), int8=True, calib_size=args.calib_size)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prep = prepare(run / "export" / "model.onnx", work)
        split = calibration_split(ds, None, cfg.calib_size, cfg.seed)
        atomic_write_json(work / "calib.cache", calibrate(prep, split, rm.preprocess, cfg.calib_method, work))
        quantize(prep, work / "q.onnx", work / "calib.cache", cfg.calib_method, stem_nodes(prep))
        prep_model = onnx.load(str(prep))
        job = Int8Job(prep, work, work / "calib.cache", cfg, split, ValFeed(ds.val, rm.preprocess, len(rm.classes)),
                      None, layer_macs(prep_model), Log())  # type: ignore[arg-type]
        ref, labels = logits(run / "export" / "model.onnx", job, False)
        print(f"{run}: {len(labels)} validation images, FP32 top-1 {100 * (ref.argmax(1) == labels).mean():.2f}%")
        seconds = {}
        for side in ("none", "edgetl", "reference", "reference-nchwc"):
            q = onnx.load(str(work / "q.onnx"))
            t0 = time.perf_counter()
            n = (0 if side == "none" else correct_biases(job, q, prep_model) if side == "edgetl"
                 else reference(job, q, prep_model, side == "reference-nchwc"))
            seconds[side] = time.perf_counter() - t0
            (work / f"{side}.onnx").write_bytes(q.SerializeToString())
            got, _ = logits(work / f"{side}.onnx", job, True)
            print(f"{side:>16}: {n} convs corrected in {seconds[side]:.1f} s; INT8 top-1 (simulated) "
                  f"{100 * (got.argmax(1) == labels).mean():.2f}%, logit MSE vs FP32 {((got - ref) ** 2).mean():.5f}, "
                  f"top-1 agreement with FP32 {100 * (got.argmax(1) == ref.argmax(1)).mean():.2f}%", flush=True)
    print(f"bias correction speed-up (reference / edgetl): {seconds['reference'] / seconds['edgetl']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
