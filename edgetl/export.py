"""`edgetl export`: verified FP32 ONNX, FP16 ONNX, calibrated INT8 Q/DQ ONNX, TensorRT engines, manifest.json.

The ONNX takes the normalized NCHW float tensor and returns logits, so every backend
shares one preprocessing path and one output contract. Opset 17 by
default so TensorRT 8.5 (JetPack 5) reads it; the weights live inside the file.
"""

from __future__ import annotations

import copy
import io
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, limits
from .artifacts.manifest import ARTIFACT_FILES, read_manifest
from .data.sources import Split, eval_transform, make_loader, run_data
from .errors import ArtifactError, EdgetlError, UsageError
from .evaluate import RunModel, load_run_model
from .fileio import atomic_write_bytes, atomic_write_json, folder_lock, sha256_file
from .images import Preprocess
from .limits import Range

INPUT_NAME, OUTPUT_NAME = "input", "logits"
MAX_LOGIT_DIFF = 1e-3  # FP32 ONNX vs PyTorch, relative to the largest logit magnitude (at least 1)
MIN_FP16_AGREEMENT = 0.97  # top-1 agreement of FP16 vs FP32 on the verification images
VERIFY_IMAGES = 64


@dataclass
class ExportConfig:
    run: str
    out: str | None = None
    int8: bool = False
    fp16: bool = False
    calib: str | None = None
    calib_size: int = 512
    calib_method: str = "minmax"
    quantize_stem: bool = False
    bias_correction: bool = True
    int8_cpu: bool = False
    calib_mode: str = "explicit"
    max_drop: float = 1.0
    min_int8: float = 0.8
    opset: int = 17
    batch: str = "dynamic"
    engine: bool = True
    workspace_mb: int = 2048
    dla: int | None = None
    seed: int = 0

    def validate(self) -> ExportConfig:
        from .quantize import CALIB_METHODS

        limits.check({
            "--opset": (self.opset, Range(13, 21)),  # Q/DQ needs 13; TensorRT 8.5 reads at most 17
            "--calib-size": (self.calib_size, limits.COUNT),
            "--max-drop": (self.max_drop, limits.POINTS),
            "--min-int8": (self.min_int8, Range(0, 1)),  # share of the MACs
            "--workspace": (self.workspace_mb, limits.WORKSPACE_MB),
            "--dla": (self.dla, limits.DLA_CORE),
        })
        if self.calib_method not in CALIB_METHODS:
            raise UsageError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}")
        if self.calib_mode not in ("explicit", "implicit"):
            raise UsageError("--calib-mode must be explicit or implicit")
        if self.batch != "dynamic" and not (self.batch.isdigit() and int(self.batch) >= 1):
            raise UsageError(f"--batch must be 'dynamic' or a positive integer, got {self.batch!r}")
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run) / "export"


@dataclass
class ExportReport:
    out: str
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    guard: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None  # Int8Share.to_dict() of model.int8.onnx
    notes: list[str] = field(default_factory=list)
    ok: bool = True


class Log:
    """Progress lines from export; the CLI prints them, tests ignore them."""

    def __call__(self, msg: str) -> None: ...


def export(cfg: ExportConfig, log: Log | None = None) -> ExportReport:
    """Write and verify every artifact; raise EdgetlError if one fails its check (it is removed, the
    others are still made) or INT8 cannot meet ``max_drop``. Afterwards the folder holds exactly the
    artifacts its manifest lists: none from an earlier export, none that failed."""
    cfg.validate()
    rm = load_run_model(Path(cfg.run))
    ds = run_data(rm.run)  # the run's own split, without the files its data check skipped
    out = cfg.out_dir
    with folder_lock(out, "export"):
        for stale in out.glob(".quant-*"):  # left by an export that was killed
            shutil.rmtree(stale, ignore_errors=True)
        (out / "manifest.json").unlink(missing_ok=True)  # nothing from an earlier export is vouched for now
        try:
            return _export(cfg, rm, ds, out, log or Log())
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


def _export(cfg: ExportConfig, rm: RunModel, ds: Any, out: Path, log: Log) -> ExportReport:
    report = ExportReport(str(out))
    manifest = _manifest_base(rm, cfg)

    onnx_path = out / "model.onnx"
    log(f"exporting {rm.run['model']} to {onnx_path} (opset {cfg.opset}, batch {cfg.batch})")
    export_onnx(rm.model, onnx_path, rm.preprocess.size, cfg.opset, cfg.batch)
    x_verify = _verify_batch(ds.val, rm.preprocess)
    ver = verify_against_torch(onnx_path, rm.model, x_verify)
    log(f"verified model.onnx against PyTorch on {len(x_verify)} images: max |Δlogit| {ver['max_abs_diff']:.2e}, "
        f"top-1 agreement {100 * ver['top1_agreement']:.1f}%")
    fp32_entry = _entry(onnx_path, "fp32", "onnx", cfg.opset, verification=ver)
    manifest["artifacts"].append(fp32_entry)
    _write_manifest(out, manifest)

    from .evaluate import evaluate_runner
    from .runtime.numerics import ORT_CPU
    from .runtime.onnxruntime import OrtRunner

    failures: list[EdgetlError] = []
    if cfg.fp16:
        fp16_path = out / "model.fp16.onnx"
        to_fp16(onnx_path, fp16_path)
        agree = _agreement(OrtRunner(onnx_path, own=True), OrtRunner(fp16_path, own=True), x_verify)
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
        from .quantize import build_int8

        log(f"evaluating FP32 ONNX on {len(ds.val)} validation images")
        fp32_acc = evaluate_runner(OrtRunner(onnx_path, own=True), ds.val, rm.preprocess, len(rm.classes))
        report.accuracy["fp32"] = {"top1": fp32_acc.top1, "top5": fp32_acc.top5, "numerics": ORT_CPU}
        fp32_entry["accuracy"] = report.accuracy["fp32"]
        int8 = build_int8(rm, ds, onnx_path, out, cfg, fp32_acc, log)
        report.accuracy["int8"] = int8.accuracy
        report.guard = int8.guard
        report.int8 = int8.share
        manifest["calibration"] = int8.calibration
        if int8.ok:
            manifest["artifacts"].append(_entry(out / "model.int8.onnx", "int8", "onnx", cfg.opset, target="tensorrt",
                                                accuracy=int8.accuracy, int8=int8.share,
                                                float_layers=int8.guard.get("float_layers", [])))
            if int8.cpu and int8.cpu["written"]:
                report.accuracy["int8-cpu"] = int8.cpu["accuracy"]
                manifest["artifacts"].append(_entry(out / "model.int8-cpu.onnx", "int8", "onnx", cfg.opset, target="cpu",
                                                    accuracy=int8.cpu["accuracy"], int8=int8.cpu["int8"],
                                                    float_layers=int8.cpu["float_layers"]))
        else:
            failures.append(EdgetlError(int8.message))
        _write_manifest(out, manifest)

    if cfg.engine and not failures:
        report.notes.extend(_engines(cfg, out, manifest, ds, rm, log, report.accuracy.get("fp32")))
        _write_manifest(out, manifest)
    report.artifacts = manifest["artifacts"]
    if failures:
        report.ok = False
        first = failures[0]
        raise type(first)("; and ".join(str(f) for f in failures))
    return report


# ---- FP32 ONNX -------------------------------------------------------------------------------

class _StaticPad(nn.Module):
    """TF-style 'same' padding frozen for one input size: a plain Pad + op in the ONNX graph."""

    def __init__(self, inner: nn.Module, pads: tuple[int, int, int, int], value: float) -> None:
        super().__init__()
        self.inner, self.pads, self.value = inner, pads, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(F.pad(x, self.pads, value=self.value))


def freeze_same_padding(model: nn.Module, size: int) -> nn.Module:
    """A copy of ``model`` whose timm dynamic 'same' padding is static for ``size`` x ``size`` inputs.

    timm's tf_* models compute padding from the input shape at run time, which the ONNX
    exporter writes as ~400 Shape/Gather/Ceil nodes; with the spatial size fixed, one Pad does.
    """
    from timm.layers import Conv2dSame
    from timm.layers.padding import get_same_padding
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

    model = copy.deepcopy(model).eval()
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: sizes.__setitem__(n, tuple(args[0].shape[-2:])))
             for n, m in model.named_modules() if isinstance(m, (Conv2dSame, MaxPool2dSame, AvgPool2dSame))]
    if not hooks:
        return model
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for name, (ih, iw) in sizes.items():
        m = model.get_submodule(name)
        k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(getattr(m, "dilation", 1))
        ph, pw = get_same_padding(ih, k[0], s[0], d[0]), get_same_padding(iw, k[1], s[1], d[1])
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if isinstance(m, Conv2dSame):
            inner: nn.Module = nn.Conv2d(m.in_channels, m.out_channels, k, s, 0, d, m.groups, m.bias is not None)
            inner.load_state_dict(m.state_dict())
            value = 0.0
        elif isinstance(m, MaxPool2dSame):
            inner, value = nn.MaxPool2d(k, s, 0, d, ceil_mode=m.ceil_mode), float("-inf")
        else:
            inner, value = nn.AvgPool2d(k, s, 0, ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad), 0.0
        model.set_submodule(name, _StaticPad(inner, pads, value))
    return model


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def export_onnx(model: nn.Module, path: Path, size: int, opset: int, batch: str = "dynamic") -> None:
    """Eval-mode TorchScript-based export (opset <= 17 capable), weights inside, checked by onnx.checker."""
    import onnx

    static = freeze_same_padding(model, size)
    n = 1 if batch == "dynamic" else int(batch)
    buf = io.BytesIO()
    warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
    dyn = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch == "dynamic" else None
    with torch.no_grad():
        torch.onnx.export(static, (torch.zeros(n, 3, size, size),), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dyn,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_name, proto.producer_version = "edgetl", __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ArtifactError(f"{path}: exported graph fails onnx.checker ({str(e).splitlines()[0]})") from e
    atomic_write_bytes(path, proto.SerializeToString())


def _verify_batch(val: Split, pp: Preprocess, n: int = VERIFY_IMAGES) -> np.ndarray:
    """Real validation images, spread over the split, preprocessed exactly as in evaluation."""
    idx = np.linspace(0, len(val) - 1, num=min(n, len(val))).round().astype(int)
    loader = make_loader(val.subset(sorted(set(idx.tolist()))), eval_transform(pp), 256, shuffle=False, workers=0)
    return torch.cat([x for x, _ in loader]).numpy()


def verify_against_torch(onnx_path: Path, model: nn.Module, x: np.ndarray) -> dict[str, float]:
    """Largest absolute logit difference and top-1 agreement; past tolerance the export fails loudly."""
    from .runtime.onnxruntime import OrtRunner

    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = OrtRunner(onnx_path, own=True).run(x)
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    tol = MAX_LOGIT_DIFF * max(1.0, float(np.abs(ref).max()))
    if diff > tol or agree < 1.0:
        raise ArtifactError(f"{onnx_path}: ONNX Runtime disagrees with PyTorch (max |Δlogit| {diff:.3g} > {tol:.3g} "
                            f"or top-1 agreement {100 * agree:.1f}% < 100%)")
    return {"images": len(x), "max_abs_diff": diff, "top1_agreement": agree}


def _agreement(ref_runner: Any, runner: Any, x: np.ndarray) -> dict[str, float]:
    ref, got = ref_runner.run(x), runner.run(x)
    return {"images": len(x), "max_abs_diff": float(np.abs(got - ref).max()),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}


# ---- FP16 ------------------------------------------------------------------------------------

def to_fp16(src: Path, dst: Path) -> None:
    """float16 weights and compute, float32 inputs and outputs (casts at the edges)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _toposort(half.graph)
    onnx.checker.check_model(half)
    atomic_write_bytes(dst, half.SerializeToString())


def _toposort(graph: Any) -> None:
    """The converter appends its input casts at the end of the node list; the checker wants order."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ArtifactError(f"FP16 graph has a cycle or a dangling input at node {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


# ---- engines and manifest ----------------------------------------------------------------------

def _engines(cfg: ExportConfig, out: Path, manifest: dict[str, Any], ds: Any, rm: RunModel, log: Log,
             fp32: dict[str, float] | None) -> list[str]:
    from .engines.builder import build_engine
    from .runtime.tensorrt import available

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
        from .runtime.tensorrt import import_tensorrt, trt_version

        # TensorRT 11 builds strongly typed networks only: FP16 must already be in the ONNX.
        fp16_src = out / ("model.fp16.onnx" if trt_version(import_tensorrt()) >= (11,) else "model.onnx")
        plans.append(("fp16", fp16_src, {}))
    if cfg.int8 and (out / "model.int8.onnx").exists():
        if cfg.calib_mode == "implicit":
            from .quantize import calibration_split

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
    from .evaluate import evaluate_runner
    from .runtime.numerics import TENSORRT
    from .runtime.tensorrt import TrtRunner

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
