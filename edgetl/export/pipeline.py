"""`edgetl export`: verified FP32 ONNX, FP16 ONNX, calibrated INT8 Q/DQ ONNX, TensorRT engines and a
manifest.json that lists exactly what the folder holds."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..artifacts.manifest import ARTIFACT_FILES, read_manifest
from ..data.sources import eval_transform, make_loader, run_data
from ..errors import ArtifactError, EdgetlError
from ..evaluate import RunModel, load_run_model
from ..fileio import atomic_write_json, folder_lock, sha256_file
from ..progress import Log, as_log
from .config import ExportConfig, ExportReport
from .fp16 import MIN_FP16_AGREEMENT, to_fp16
from .int8 import qat
from .onnx import INPUT_NAME, OUTPUT_NAME, agreement, export_onnx, verify_against_torch, verify_batch


def export(cfg: ExportConfig, log: Log | Callable[[str], None] | None = None) -> ExportReport:
    """Write and verify every artifact; raise EdgetlError if one fails its check (it is removed, the
    others are still made) or INT8 cannot meet ``max_drop``. Afterwards the folder holds exactly the
    artifacts its manifest lists: none from an earlier export, none that failed."""
    cfg.validate()
    rm = load_run_model(Path(cfg.run))
    ds = run_data(rm.run)  # the run's own split, without the files its data check skipped
    out = cfg.out_dir
    log = as_log(log)

    if cfg.qat != "off":
        qat.require()  # the install command before any work, not half-way
    crew = qat.Crew.join(rm, cfg)  # the ranks under torchrun; None in a plain process
    try:
        if crew is not None and not crew.main:
            trained = crew.follow(rm, out, cfg, ds)
            return ExportReport(str(out), notes=[f"rank {crew.d.rank} {'trained QAT beside' if trained else 'waited for'} "
                                                 "rank 0, which wrote the artifacts"])
        with folder_lock(out, "export"):
            return _export_locked(cfg, rm, ds, out, log, crew)
    finally:
        if crew is not None:
            crew.close()


def _export_locked(cfg: ExportConfig, rm: RunModel, ds: Any, out: Path, log: Log, crew: qat.Crew | None) -> ExportReport:
    for stale in out.glob(".quant-*"):  # left by an export that was killed
        shutil.rmtree(stale, ignore_errors=True)
    trained = None
    if cfg.qat == "on":  # before anything in the folder changes: an interrupt here leaves it all as it was
        from .int8.calibrate import calibration_split

        trained = qat.train(rm, out, cfg, calibration_split(ds, cfg.calib, cfg.calib_size, cfg.seed), log, crew)
    (out / "manifest.json").unlink(missing_ok=True)  # nothing from an earlier export is vouched for now
    try:
        return _export(cfg, rm, ds, out, log, trained, crew)
    finally:
        _sweep_unlisted(out)


def _sweep_unlisted(out: Path) -> None:
    """Remove artifacts (and engine sidecars) that the manifest on disk does not list."""
    try:
        manifest = read_manifest(out)
        listed = {a["file"] for a in manifest.artifacts} if manifest else set()
    except ArtifactError:
        listed = set()
    for name in ARTIFACT_FILES:
        if name not in listed:
            (out / name).unlink(missing_ok=True)
            (out / f"{name}.json").unlink(missing_ok=True)


def _export(cfg: ExportConfig, rm: RunModel, ds: Any, out: Path, log: Log, trained: qat.Trained | None,
            crew: qat.Crew | None) -> ExportReport:
    report = ExportReport(str(out))
    manifest = _manifest_base(rm, cfg)

    onnx_path = out / "model.onnx"
    log(f"exporting {rm.run['model']} to {onnx_path} (opset {cfg.opset}, batch {cfg.batch})")
    export_onnx(rm.model, onnx_path, rm.preprocess.size, cfg.opset, cfg.batch)
    x_verify = verify_batch(ds.val, rm.preprocess)
    ver = verify_against_torch(onnx_path, rm.model, x_verify)
    log(f"verified model.onnx against PyTorch on {len(x_verify)} images: max |Δlogit| {ver['max_abs_diff']:.2e}, "
        f"top-1 agreement {100 * ver['top1_agreement']:.1f}%")
    fp32_entry = _entry(onnx_path, "fp32", "onnx", cfg.opset, verification=ver)
    manifest["artifacts"].append(fp32_entry)
    _write_manifest(out, manifest)

    from ..evaluate import evaluate_runner
    from ..runtime.numerics import ORT_CPU
    from ..runtime.onnxruntime import OrtRunner

    failures: list[EdgetlError] = []
    cpu_miss: EdgetlError | None = None
    if cfg.fp16:
        fp16_path = out / "model.fp16.onnx"
        with log.task("converting to FP16"):
            to_fp16(onnx_path, fp16_path)
        agree = agreement(OrtRunner(onnx_path, own=True), OrtRunner(fp16_path, own=True), x_verify)
        if agree["top1_agreement"] < MIN_FP16_AGREEMENT:
            fp16_path.unlink()
            failures.append(ArtifactError(f"{fp16_path}: FP16 disagrees with FP32 on "
                                          f"{100 * (1 - agree['top1_agreement']):.1f}% of the verification images; "
                                          "removed"))
            log(str(failures[-1]))
        else:
            log(f"verified model.fp16.onnx against model.onnx: max |Δlogit| {agree['max_abs_diff']:.2e}, "
                f"top-1 agreement {100 * agree['top1_agreement']:.1f}%")
            manifest["artifacts"].append(_entry(fp16_path, "fp16", "onnx", cfg.opset, verification=agree))
            _write_manifest(out, manifest)

    if cfg.int8:
        from .int8.build import build_int8

        with log.task(f"FP32 ONNX top-1 on {len(ds.val)} validation images", len(ds.val)) as tick:
            fp32_acc = evaluate_runner(OrtRunner(onnx_path, own=True), ds.val, rm.preprocess, len(rm.classes),
                                       tick=tick)
        report.accuracy["fp32"] = {"top1": fp32_acc.top1, "top5": fp32_acc.top5, "numerics": ORT_CPU}
        fp32_entry["accuracy"] = report.accuracy["fp32"]
        int8 = build_int8(rm, ds, onnx_path, out, cfg, fp32_acc, log, trained, crew)
        report.accuracy["int8"] = int8.accuracy
        report.guard = int8.guard
        report.int8 = int8.share
        report.qat = int8.qat
        manifest["calibration"] = int8.calibration
        if int8.qat:
            manifest["qat"] = int8.qat
        if int8.ok:
            manifest["artifacts"].append(_entry(out / "model.int8.onnx", "int8", "onnx", cfg.opset, target="tensorrt",
                                                accuracy=int8.accuracy, int8=int8.share,
                                                float_layers=int8.guard.get("float_layers", []),
                                                qat=_qat_used(int8.qat)))
            if int8.cpu and int8.cpu["written"]:
                report.accuracy["int8-cpu"] = int8.cpu["accuracy"]
                manifest["artifacts"].append(_entry(out / "model.int8-cpu.onnx", "int8", "onnx", cfg.opset, target="cpu",
                                                    accuracy=int8.cpu["accuracy"], int8=int8.cpu["int8"],
                                                    float_layers=int8.cpu["float_layers"], guard=int8.cpu["guard"] or None,
                                                    qat=_qat_used(int8.qat)))
            elif int8.cpu:  # after the engines, which model.int8.onnx still feeds
                cpu_miss = EdgetlError(int8.cpu["message"])
        else:
            failures.append(EdgetlError(int8.message))
        _write_manifest(out, manifest)

    if cfg.engine and not failures:
        report.notes.extend(_engines(cfg, out, manifest, ds, rm, log, report.accuracy.get("fp32")))
        _write_manifest(out, manifest)
    failures += [cpu_miss] if cpu_miss else []
    report.artifacts = manifest["artifacts"]
    if failures:
        report.ok = False
        first = failures[0]
        raise type(first)("; and ".join(str(f) for f in failures))
    return report


def _qat_used(qat: dict[str, Any] | None) -> bool | None:
    """The manifest's mark on INT8 artifacts made from quantization-aware weights (absent when QAT did not run)."""
    return None if qat is None else bool(qat["used"])


def _engines(cfg: ExportConfig, out: Path, manifest: dict[str, Any], ds: Any, rm: RunModel, log: Log,
             fp32: dict[str, float] | None) -> list[str]:
    from ..engines.builder import build_engine
    from ..runtime.tensorrt import available

    ok, why = available()
    if not ok:
        msg = f"TensorRT engines skipped: {why}; build them on the target with `edgetl build {out / 'model.int8.onnx'} --int8`"
        log(msg)
        return [msg]
    notes = []
    max_batch = 32 if cfg.batch == "dynamic" else int(cfg.batch)
    opt_batch = min(8, max_batch) if cfg.batch == "dynamic" else max_batch
    common = dict(min_batch=1 if cfg.batch == "dynamic" else max_batch, opt_batch=opt_batch, max_batch=max_batch,
                  workspace_mb=cfg.workspace_mb, dla_core=cfg.dla, timing_cache=out / "timing.cache")
    plans = []
    if cfg.fp16:
        from ..runtime.tensorrt import import_tensorrt, trt_version

        # TensorRT 11 builds strongly typed networks only: FP16 must already be in the ONNX.
        fp16_src = out / ("model.fp16.onnx" if trt_version(import_tensorrt()) >= (11,) else "model.onnx")
        plans.append(("fp16", fp16_src, {}))
    if cfg.int8 and (out / "model.int8.onnx").exists():
        if cfg.calib_mode == "implicit":
            from .int8.calibrate import calibration_split

            loader = make_loader(calibration_split(ds, cfg.calib, cfg.calib_size, cfg.seed), eval_transform(rm.preprocess), 8, shuffle=False, workers=0)
            batches = (x.numpy() for x, _ in loader)
            plans.append(("int8", out / "model.onnx", {"calibrator_batches": batches, "calib_cache": out / "trt_calib.cache"}))
        else:
            plans.append(("int8", out / "model.int8.onnx", {}))
    for precision, src, extra in plans:
        engine = out / f"model.{precision}.engine"
        t0 = time.perf_counter()
        side = build_engine(src, engine, precision, **common, **extra)
        log(f"built {engine.name} from {src.name} in {time.perf_counter() - t0:.0f}s "
            f"(TensorRT {side['tensorrt_version']}, {side['gpu']})")
        side["accuracy"] = _engine_accuracy(engine, ds, rm, fp32)
        log(f"{engine.name}: top-1 {side['accuracy']['top1']:.2f}% on the real engine (numerics: tensorrt)")
        manifest["artifacts"].append(side)
        notes.append(f"built {engine.name}")
    return notes


def _engine_accuracy(engine: Path, ds: Any, rm: RunModel, fp32: dict[str, float] | None) -> dict[str, Any]:
    """The engine's own top-1, beside the simulated figure of the ONNX it was built from."""
    from ..evaluate import evaluate_runner
    from ..runtime.numerics import TENSORRT
    from ..runtime.tensorrt import TrtRunner

    runner = TrtRunner(engine)
    try:
        acc = evaluate_runner(runner, ds.val, rm.preprocess, len(rm.classes))
    finally:
        runner.close()
    out: dict[str, Any] = {"top1": acc.top1, "top5": acc.top5, "numerics": TENSORRT}
    if fp32:
        out["delta_top1"] = acc.top1 - fp32["top1"]
    return out


def _entry(path: Path, precision: str, fmt: str, opset: int | None, **extra: Any) -> dict[str, Any]:
    import onnx

    entry: dict[str, Any] = {"file": path.name, "sha256": sha256_file(path), "precision": precision, "format": fmt,
                             "size_bytes": path.stat().st_size}
    if fmt == "onnx":
        proto = onnx.load(str(path), load_external_data=False)
        entry["opset"] = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        entry["input"] = _io(proto.graph.input[0])
        entry["output"] = _io(proto.graph.output[0])
    entry.update({k: v for k, v in extra.items() if v is not None})
    return entry


def _io(value_info: Any) -> dict[str, Any]:
    import onnx

    dims = [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]
    return {"name": value_info.name, "shape": dims,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name}


def _manifest_base(rm: RunModel, cfg: ExportConfig) -> dict[str, Any]:
    run = Path(cfg.run)
    return {
        "schema_version": 1, "edgetl_version": __version__,
        "model": rm.run["model"], "classes": rm.classes, "preprocess": rm.preprocess.to_dict(),
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "normalized": True},
        "output": {"name": OUTPUT_NAME, "meaning": "logits"},
        "source": {"run": str(run), "checkpoint": "best.pt", "sha256": sha256_file(run / "best.pt")},
        "artifacts": [],
    }


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(out / "manifest.json", manifest)
