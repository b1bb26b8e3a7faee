"""Calibration for INT8: which images (`--calib` or a seeded, class-stratified sample), activation
ranges from them (minmax, entropy or percentile, through ONNX Runtime's calibrators), cached in
``calib.cache`` (ONNX Runtime's JSON ranges plus an ``edgetl_key``) so exporting again with the same
model and data skips calibration; and `edgetl calib`, which writes a calibration set to disk."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ... import limits
from ...choices import CalibMethod, values
from ...data.check import calibration_listing
from ...data.sources import DataSet, Split, eval_transform, load_data, make_loader, without
from ...errors import DataError, UsageError
from ...fileio import atomic_folder, atomic_write_json
from ...images import Preprocess
from ...progress import Tick, no_tick

CALIB_METHODS = values(CalibMethod)
CALIBRATOR_VERSION = 3  # bump when calibrate() changes, so old calib.cache files are not reused


def calibration_split(ds: DataSet, calib: str | None, size: int, seed: int = 0) -> Split:
    """``--calib DIR`` (an ImageFolder or a flat folder of images) or the run's training images, as a
    seeded, class-stratified sample of ``--calib-size`` where there are more."""
    if calib:
        root = Path(calib)
        if not root.is_dir():
            raise DataError(f"{root}: no such calibration folder")
        listing = calibration_listing(root)  # symlinks leaving the folder are refused
        if listing.errors():
            raise DataError(str(listing.errors()[0]))
        unknown = sorted(set(listing.classes) - set(ds.classes))
        if unknown:
            raise DataError(f"{root}: calibration classes {unknown[:5]} are not among the run's classes")
        split = Split(listing.files, listing.labels)
        if len(split) == 0:
            raise DataError(f"{root}: no images to calibrate with")
        return split.sample(size, seed)
    return ds.train.sample(size, seed)


def split_fingerprint(split: Split) -> str:
    h = hashlib.sha256()
    for item in split.items:
        if isinstance(item, np.ndarray):
            h.update(item.tobytes())
        else:
            h.update(str(Path(item).resolve()).encode())
            st = Path(item).stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def calib_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile}[name]


class CalibrationReader:
    """Feeds calibration images one at a time: ONNX Runtime's Entropy and Percentile calibrators
    fail on batches larger than 1 (their histograms are collected per sample)."""

    def __init__(self, split: Split, pp: Preprocess, tick: Tick = no_tick) -> None:
        self.loader = make_loader(split, eval_transform(pp), 1, shuffle=False, workers=0)
        self.it: Iterator[Any] | None = None
        self.tick = tick

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.it is None:
            self.it = iter(self.loader)
        batch = next(self.it, None)
        if batch is None:
            return None
        self.tick()
        return {"input": batch[0].numpy()}

    def rewind(self) -> None:
        self.it = None


def prepare(onnx_path: Path, work: Path) -> Path:
    """Shape inference and basic graph optimization, as ONNX Runtime asks before quantizing; then a
    unique name for every node. The guard and bias correction find layers by name, and inlined
    functions (torch's HardSwish in MobileNetV3) leave nodes named ""."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = work / "prep.onnx"
    quant_pre_process(str(onnx_path), str(prep), skip_symbolic_shape=True)
    model = onnx.load(str(prep))
    seen: set[str] = set()
    for k, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}_edgetl_{k}"
        seen.add(node.name)
    onnx.save(model, str(prep))
    return prep


def calibrate(prep: Path, split: Split, pp: Any, method: str, work: Path, tick: Tick = no_tick) -> dict[str, Any]:
    """Activation ranges as ONNX Runtime's JSON (TensorsData.to_dict).

    Called directly rather than through quantize_static, whose Entropy calibrator keeps 128
    histogram bins for 128 quantized bins and so returns plain min/max; here entropy is
    TensorRT's algorithm (KL divergence over 2,048 bins) and percentile clips at 99.999%.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    options: dict[str, Any] = {}  # minmax ranges stay asymmetric: the CPU variant's UINT8 activations use both ends
    if method == "entropy":
        options.update(symmetric=True, num_bins=2048, num_quantized_bins=128)
    elif method == "percentile":
        options.update(symmetric=True, num_bins=2048, percentile=99.999)
    calibrator = create_calibrator(prep, sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),
                                   augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=calib_method(method), extra_options=options)
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
        calibrator.collect_data(CalibrationReader(split, pp, tick))
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, work / "ranges.json")
    return json.loads((work / "ranges.json").read_text())


def cache_key(cache: Path) -> str | None:
    try:
        return json.loads(cache.read_text()).get("edgetl_key")
    except (OSError, ValueError, AttributeError):
        return None


def write_calibration_set(data: str, size: int, out: Path, seed: int = 0, val_split: float | None = None) -> dict[str, Any]:
    """`edgetl calib`: copy a seeded, class-stratified sample of training images into ``out/<class>/``.

    Files `check-data` calls bad are left out, replaced from the rest, and listed in calib.json. The
    folder is filled under a temporary name and renamed into place, so a failure leaves nothing.
    """
    import shutil

    from ...images import load_rgb

    limits.check({"--size": (size, limits.COUNT), "--seed": (seed, limits.SEED), "--val-split": (val_split, limits.FRACTION_OPEN)})
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: already exists and is not empty; pick another --out")
    ds = load_data(data, val_split, seed)
    split, skipped = _readable_sample(ds, size, seed)
    files = []
    with atomic_folder(out) as tmp:
        for i, (item, label) in enumerate(zip(split.items, split.labels)):
            d = tmp / ds.classes[label]
            d.mkdir(exist_ok=True)
            if isinstance(item, np.ndarray):
                dst = d / f"{i:06d}.png"
                load_rgb(item).save(dst)
            else:
                dst = d / f"{i:06d}_{Path(item).name}"
                shutil.copyfile(item, dst)
            files.append(str(dst.relative_to(tmp)))
        info = {"source": ds.name, "size": len(files), "seed": seed, "classes": ds.classes,
                "per_class": {c: split.labels.count(i) for i, c in enumerate(ds.classes)}, "files": files,
                "skipped": skipped}
        atomic_write_json(tmp / "calib.json", info)
    return info


def _readable_sample(ds: DataSet, size: int, seed: int) -> tuple[Split, dict[str, str]]:
    """The stratified sample, drawn again without the files check-data calls bad until all of it
    decodes; only newly drawn files are decoded. Returns the sample and {bad file: reason}."""
    from ...data.check import decode_all

    bad: dict[str, str] = {}
    checked: set[str] = set()
    while True:
        split = calibration_split(replace(ds, train=without(ds.train, bad)), None, size, seed)
        new = [Path(it) for it in split.items if not isinstance(it, np.ndarray) and str(it) not in checked]
        found = False
        for p, (_, _, finding) in zip(new, decode_all(new)):
            checked.add(str(p))
            if finding is not None and finding.level == "bad":
                bad[str(p)] = finding.message
                found = True
        if not found:
            return split, bad
