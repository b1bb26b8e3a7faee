"""FP32 vs INT8 (each calibration method) vs FP16 top-1 on ONNX Runtime, side by side.

    python benchmarks/quantize_accuracy.py --run runs/cifar10-mini-96 \
        --imagenet ../shared/datasets/imagenet-sample-100

--run: a fine-tuned run (its validation split is the test set, its training split the
calibration source). --imagenet: the pretrained bundled Lite0 at 224 px on the 100 labelled
photos; they are also its calibration set (no other ImageNet images ship here), so that row
measures quantization error, not generalization.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from edgetl.data.sources import Split, load_data
from edgetl.evaluate import evaluate_runner, load_run_model
from edgetl.export.fp16 import to_fp16
from edgetl.export.onnx import export_onnx
from edgetl.export.int8.calibrate import CALIB_METHODS, calibrate, calibration_split, prepare
from edgetl.export.int8.qdq import quantize, stem_nodes
from edgetl.runtime.onnxruntime import OrtRunner


def compare(name: str, model, pp, num_classes: int, calib: Split, val: Split, work: Path) -> list[tuple]:
    onnx_path = work / f"{name}.onnx"
    export_onnx(model, onnx_path, pp.size, 17)
    rows = []
    fp32 = evaluate_runner(OrtRunner(onnx_path), val, pp, num_classes)
    rows.append((name, "fp32", "-", fp32.top1, 0.0, 0.0))
    fp16_path = work / f"{name}.fp16.onnx"
    to_fp16(onnx_path, fp16_path)
    r = evaluate_runner(OrtRunner(fp16_path), val, pp, num_classes)
    rows.append((name, "fp16", "-", r.top1, r.top1 - fp32.top1, 0.0))
    prep = prepare(onnx_path, work)
    for method, stem in [(m, s) for m in CALIB_METHODS for s in ([], stem_nodes(prep))]:
        q = work / f"{name}.{method}.int8.onnx"
        ranges = work / f"{name}.{method}.ranges"
        t0 = time.perf_counter()
        if not ranges.exists():
            ranges.write_text(json.dumps(calibrate(prep, calib, pp, method, work)))
        quantize(prep, q, ranges, method, stem)
        secs = time.perf_counter() - t0
        r = evaluate_runner(OrtRunner(q), val, pp, num_classes)
        rows.append((name, "int8", method + (", stem fp32" if stem else ", all int8"), r.top1, r.top1 - fp32.top1, secs))
    return rows


def imagenet_rows(root: Path, work: Path) -> list[tuple]:
    import timm

    from edgetl.models import _load_bundled, build

    pp = build("efficientnet_lite0", 1000, "none").preprocess
    model = timm.create_model("tf_efficientnet_lite0")
    _load_bundled(model)
    with open(root / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    split = Split([root / r["file"] for r in rows], [int(r["imagenet_index"]) for r in rows])
    return compare("lite0-imagenet100", model.eval(), pp, 1000, split, split, work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="fine-tuned run folder")
    ap.add_argument("--imagenet", type=Path, help="imagenet-sample-100 folder")
    ap.add_argument("--calib-size", type=int, default=512)
    args = ap.parse_args()
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.run:
            rm = load_run_model(args.run)
            c = rm.run["config"]
            ds = load_data(c["data"], c.get("val_split"), c.get("seed", 0))
            calib = calibration_split(ds, None, args.calib_size, 0)
            rows += compare(args.run.name, rm.model, rm.preprocess, len(rm.classes), calib, ds.val, work)
        if args.imagenet:
            rows += imagenet_rows(args.imagenet, work)
    print(f"{'model':<24} {'precision':<9} {'calibration':<22} {'top-1 %':>8} {'Δ vs fp32':>10} {'calib s':>8}")
    for name, prec, method, top1, delta, secs in rows:
        print(f"{name:<24} {prec:<9} {method:<22} {top1:8.2f} {delta:+10.2f} {secs:8.1f}")


if __name__ == "__main__":
    main()
