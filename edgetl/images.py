"""Image files: which names are images, decoding them upright, and the preprocessing recipe saved in run.json.

Torch-free on purpose: the deploy runtime (no PyTorch on a Jetson) shares it.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError, UsageError
from .limits import MAX_SIZE

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_PIL_INTERP = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}

ImageSource = Union[str, Path, np.ndarray, Image.Image]


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop ``size``, scale to 0..1, normalize."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.size < 8 or self.resize < self.size:
            raise ValueError(f"bad preprocessing sizes: size={self.size}, resize={self.resize}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    @classmethod
    def from_crop_pct(
        cls, size: int, crop_pct: float, mean: Any, std: Any, interpolation: str
    ) -> Preprocess:
        return cls(size, int(math.floor(size / crop_pct)), _triple(mean), _triple(std), interpolation)

    def with_size(self, size: int) -> Preprocess:
        """Same recipe at another crop size, keeping the resize/crop ratio."""
        resize = max(size, int(round(size * self.resize / self.size)))
        return Preprocess(size, resize, self.mean, self.std, self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """From run.json or manifest.json, checked before anything is allocated from it (ValueError)."""
        pp = cls(int(d["size"]), int(d["resize"]), _triple(d["mean"]), _triple(d["std"]),
                 str(d.get("interpolation", "bilinear")))
        if not (1 <= pp.size <= MAX_SIZE and pp.size <= pp.resize <= 2 * MAX_SIZE):
            raise ValueError(f"preprocess size {pp.size} / resize {pp.resize} outside 1..{MAX_SIZE} px")
        if not all(math.isfinite(v) for v in pp.mean + pp.std) or min(pp.std) <= 0:
            raise ValueError(f"preprocess mean {list(pp.mean)} / std {list(pp.std)} are not finite, positive stds")
        if pp.interpolation not in _PIL_INTERP:
            raise ValueError(f"preprocess interpolation {pp.interpolation!r} is not one of {', '.join(_PIL_INTERP)}")
        return pp

    @property
    def pil_interpolation(self) -> Image.Resampling:
        return _PIL_INTERP[self.interpolation]

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """torchvision's Resize(int) + CenterCrop arithmetic on a PIL image (PIL does the resampling)."""
        w, h = img.size
        new_w, new_h = (self.resize, int(self.resize * h / w)) if w <= h else (int(self.resize * w / h), self.resize)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), self.pil_interpolation)
        top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))

    def to_array(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image → normalized CHW float32, the model input; no PyTorch needed."""
        x = np.asarray(self.resize_crop(img), dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def _triple(v: Any) -> tuple[float, float, float]:
    t = tuple(float(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected 3 channel values, got {v!r}")
    return t  # type: ignore[return-value]


def env_limit(name: str, default: float) -> float:
    """A size limit from the environment, refused (exit 2) unless it is a finite positive number."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{name}={raw!r}: must be a finite positive number")
    return value


def max_pixels() -> int | None:
    """The largest image (width x height) decoded: ``EDGETL_MAX_PIXELS``, else Pillow's decompression-bomb
    limit (about 89 MP). Checked from the header, before any pixel is read."""
    if "EDGETL_MAX_PIXELS" not in os.environ:
        return Image.MAX_IMAGE_PIXELS
    limit = int(env_limit("EDGETL_MAX_PIXELS", 0))
    if Image.MAX_IMAGE_PIXELS and limit > Image.MAX_IMAGE_PIXELS:  # Pillow would refuse first
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def _check_size(size: tuple[int, int], name: str) -> None:
    w, h = size
    pixels = max_pixels()
    if pixels and w * h > pixels:
        raise DataError(f"{name}: image too large ({w}x{h}), refused as a possible decompression bomb "
                        "(EDGETL_MAX_PIXELS raises the limit)")
    limit = env_limit("EDGETL_MAX_ASPECT", MAX_ASPECT)
    if min(w, h) < 1 or max(w, h) / min(w, h) > limit:
        raise DataError(f"{name}: {w}x{h} px is more than {limit:g} times longer than wide; refused before "
                        "decoding (EDGETL_MAX_ASPECT raises the limit)")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, RGBA, CMYK, I;16, ...) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


MAX_ASPECT = 20.0  # longer side / shorter side; EDGETL_MAX_ASPECT sets another


def load_rgb(src: ImageSource) -> Image.Image:
    """Decode ``src`` (a path, a PIL image or an HxW[xC] uint8 array) into RGB, upright as its EXIF
    orientation says, with a clear error. An image more than MAX_ASPECT times longer than wide is
    refused from its header: resizing its short side to the model's input would take gigabytes."""
    if isinstance(src, Image.Image):
        _check_size(src.size, "image")
        return to_rgb(ImageOps.exif_transpose(src))
    if isinstance(src, np.ndarray):
        return to_rgb(Image.fromarray(src))
    path = Path(src)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(im.size, str(path))
                im.load()
                return to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file") from e
    except PermissionError as e:
        raise DataError(f"{path}: permission denied, not readable by this user") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: image too large, refused as a possible decompression bomb "
                        "(EDGETL_MAX_PIXELS raises the limit)") from e
    except UnidentifiedImageError as e:
        raise DataError(f"{path}: not an image file PIL can read") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or truncated image ({e})") from e
