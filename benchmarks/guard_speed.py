"""How long the INT8 accuracy guard takes, ranking layers the reference way and edgetl's way, side by side.

    python benchmarks/guard_speed.py RUN [--max-drop -3] [--calib-size 128]

RUN must have RUN/export/model.onnx (`edgetl export RUN`). The guard is forced to run with a budget it
cannot meet in one step (``--max-drop`` may be negative here, which the CLI refuses), twice:

- ``reference``: sensitivity ranked on 64 calibration images in exact float simulation (ORT_ENABLE_EXTENDED);
- ``edgetl``: what export does: a pixel budget of probe images (64 at 64 px, 16 at 224) on ORT's NCHWc
  kernels (ORT_ENABLE_ALL), the order only.

Both then search k the same way on exact simulation. Prints each side's guard seconds, the layers it
floated and its top-10 ranking, and the speed ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import edgetl.export.int8.build as build
import edgetl.export.int8.guard as guard
from edgetl.data.sources import run_data
from edgetl.evaluate import evaluate_runner, load_run_model
from edgetl.export.config import ExportConfig
from edgetl.progress import Log
from edgetl.runtime.onnxruntime import OrtRunner


def guarded(run: Path, max_drop: float, calib_size: int, reference: bool) -> dict:
    rm = load_run_model(run)
    ds = run_data(rm.run)
    out = run / "export"
    fp32 = evaluate_runner(OrtRunner(out / "model.onnx", own=True), ds.val, rm.preprocess, len(rm.classes))
    cfg = ExportConfig(run=str(run), int8=True, calib_size=calib_size, max_drop=max_drop, min_int8=0.0)
    saved = guard.PROBE_PIXELS, guard.PROBE_MIN_IMAGES, build.run_guard
    if reference:
        guard.PROBE_PIXELS, guard.PROBE_MIN_IMAGES = 0, 64

        def exact(job, *a):  # type: ignore[no-untyped-def]
            job.fast_rank = False
            return saved[2](job, *a)

        build.run_guard = exact
    try:
        t0 = time.perf_counter()
        result = build.build_int8(rm, ds, out / "model.onnx", Path(out), cfg, fp32, Log())
        return {"seconds": time.perf_counter() - t0, "guard": result.guard}
    finally:
        guard.PROBE_PIXELS, guard.PROBE_MIN_IMAGES, build.run_guard = saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--max-drop", type=float, default=-3.0)
    ap.add_argument("--calib-size", type=int, default=128)
    args = ap.parse_args()
    got = {}
    for side in ("reference", "edgetl"):
        got[side] = r = guarded(Path(args.run), args.max_drop, args.calib_size, side == "reference")
        g = r["guard"]
        print(f"{side}: guard {g.get('seconds')} s (build_int8 {r['seconds']:.1f} s); floated "
              f"{[x['name'] for x in g.get('float_layers', [])]}; top-10 {[x['name'] for x in g.get('sensitivity', [])]}",
              flush=True)
    print(f"guard speed-up: {got['reference']['guard']['seconds'] / got['edgetl']['guard']['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
