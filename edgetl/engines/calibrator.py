"""Calibration images for TensorRT's own (implicit) INT8 calibration: batches preprocessed exactly as
`edgetl eval` does, without PyTorch, and the ``IInt8EntropyCalibrator2`` that feeds them to the builder."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..artifacts.manifest import read_json_object
from ..errors import DataError, UsageError
from ..fileio import atomic_write_bytes
from ..runtime.cuda import DeviceBuffer


def calibration_batches(calib_dir: Path, preprocess: dict[str, Any], batch_size: int) -> Iterator[np.ndarray]:
    """Float32 NCHW batches of the images under ``calib_dir`` (any depth), preprocessed as in evaluation.

    The recipe is ``manifest["preprocess"]`` ({size, resize, mean, std, interpolation}): shorter side
    resized to ``resize`` with PIL's interpolation, centre crop ``size``, /255, (x - mean) / std, CHW.
    PIL and numpy only, so it runs on a Jetson without PyTorch. The folder is checked now (DataError
    when it holds no images); images are decoded lazily, batch by batch; the last batch may be smaller.
    """
    from ..images import Preprocess

    if batch_size < 1:
        raise UsageError(f"calibration batch size must be >= 1, got {batch_size}")
    try:
        pp = Preprocess.from_dict(preprocess)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"unusable preprocessing record {preprocess!r} ({e})") from e
    files = _image_files(Path(calib_dir))
    return _batches(files, pp, batch_size)


def onnx_preprocess(onnx_path: Path) -> dict[str, Any]:
    """The preprocessing recorded for an exported ONNX: ``manifest["preprocess"]`` of the manifest.json next
    to it, else ``preprocess`` of the run.json one folder up (``RUN/export/model.onnx`` → ``RUN/run.json``)."""
    onnx_path = Path(onnx_path)
    for record in (onnx_path.parent / "manifest.json", onnx_path.parent.parent / "run.json"):
        if record.is_file():
            doc = read_json_object(record, "preprocessing record")
            if isinstance(doc, dict) and isinstance(doc.get("preprocess"), dict):
                return doc["preprocess"]
    raise UsageError(f"{onnx_path}: no preprocessing record (manifest.json next to it, or ../run.json); calibration "
                     f"images need the one `edgetl export` writes")


def entropy_calibrator(trt: ModuleType, batches: Iterable[np.ndarray], input_shape: tuple[int, ...],
                        cache: Path | None, onnx: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` fed from ``batches``; the class is defined here so that tensorrt
    stays a lazy import.

    TensorRT calibrates at one fixed shape: the first batch's size for a dynamic-batch ONNX (set as the
    calibration profile), the ONNX's own batch otherwise; a short last batch is filled by repeating its
    images. Errors raised while producing batches (a corrupt image) must not unwind through TensorRT's
    C++ frames, so they are kept and re-raised by ``build_engine`` after the build returns.
    """
    it = iter(batches)
    first = next(it, None)  # decodes the first images now, so a bad folder fails before the build
    has_cache = cache is not None and cache.is_file() and cache.stat().st_size > 0
    if first is None and not has_cache:
        raise DataError("no calibration images were given")
    rest = tuple(input_shape[1:])
    if first is not None and (first.ndim != 4 or tuple(first.shape[1:]) != rest):
        raise DataError(f"calibration batches have shape {tuple(first.shape)}, but {onnx} takes N x "
                        f"{' x '.join(map(str, rest))}: preprocess them to the model's input size")
    batch = input_shape[0] if input_shape[0] > 0 else (len(first) if first is not None else 1)
    pending: Iterator[np.ndarray] = itertools.chain([first], it) if first is not None else it

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # required by the pybind trampoline (segfaults without)
            self.shape = (batch, *rest)
            self.buffer = DeviceBuffer()
            self.error: BaseException | None = None
            self.images = 0

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks: the batch is part of the calibration shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.error is not None:
                return None
            try:
                b = next(pending, None)
                if b is None:
                    return None
                if tuple(b.shape[1:]) != rest:
                    raise DataError(f"calibration batch of shape {tuple(b.shape)} does not fit {self.shape}")
                self.images += min(len(b), batch)
                host = np.ascontiguousarray(b[:batch] if len(b) >= batch else np.resize(b, self.shape),
                                            dtype=np.float32)
                return [self.buffer.upload(host)]
            except BaseException as e:  # noqa: BLE001 - re-raised by build_engine
                self.error = e
                return None

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if has_cache and cache is not None else None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is None:
                return
            try:
                atomic_write_bytes(cache, bytes(data))
            except BaseException as e:  # noqa: BLE001 - re-raised by build_engine
                self.error = e

        def release(self) -> None:
            self.buffer.free()

    return _EntropyCalibrator()


def _image_files(root: Path) -> list[Path]:
    """The calibration images, listed as check-data lists them (symlinks leaving ``root`` refused)."""
    from ..data.check import calibration_listing

    if not root.is_dir():
        raise DataError(f"{root}: no such calibration folder")
    listing = calibration_listing(root)
    if listing.errors():
        raise DataError(str(listing.errors()[0]))
    return listing.files


def _batches(files: list[Path], pp: Any, batch_size: int) -> Iterator[np.ndarray]:
    from ..images import load_rgb

    batch: list[np.ndarray] = []
    for f in files:
        batch.append(pp.to_array(load_rgb(f)))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
