"""`edgetl check-data`: list and fully decode a data set before hours of training depend on it.

Torch-free, so the check starts fast and runs where training will not. The folder walk here is
also what `edgetl.data.sources` trains from, so what the check accepts is exactly what training reads.
Decoding runs in threads: Pillow releases the GIL while it decodes, and threads need no process
start-up, no pickling and no care about signals.

Findings come in three levels:
- ``error``: training cannot start (empty class, classes that differ, a symlink out of the root);
- ``bad``: a file that cannot be used (corrupt, truncated, zero-byte, a decompression bomb, or
  unreadable: permission denied, for a file or a nested folder); training skips it and lists it in
  ``RUN/data_check.json``;
- ``warning``: worth knowing, harmless to training (hidden folders, non-image files, very small or
  very large images, calibration classes missing).
``--strict`` turns every finding into a failure (exit 3). Input files are only ever read.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .. import limits
from ..errors import DataError
from ..fileio import is_inside
from ..images import IMAGE_EXTENSIONS, load_rgb
from ..images import max_pixels as bomb_limit
from ..progress import Log, Tick, as_log, no_tick

MIN_SIDE = 16  # px: a shorter side below this is mostly upsampling noise at any model input size
MAX_PIXELS = 40_000_000  # decoding dominates training time long before Pillow's bomb limit (~89 MP)
LEVELS = ("error", "bad", "warning")


@dataclass(frozen=True)
class Finding:
    level: str  # error | bad | warning
    kind: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Listing:
    """One ImageFolder walked, nothing decoded: classes, image files per class, and what was passed over."""

    root: Path
    classes: list[str]
    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]


def data_folders(root: Path, val_split: float | None = None) -> dict[str, Path]:
    """The folders `--data ROOT` trains from: train/ and val/, or one folder split by ``val_split``."""
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir() and val_split is None:
        return {"train": train_dir, "val": val_dir}
    return {"train": train_dir if train_dir.is_dir() else root}


def list_image_folder(folder: Path, boundary: Path | None = None) -> Listing:
    """Walk ``folder``/<class>/... without raising: classes are the sorted, non-hidden sub-folders.

    Hidden entries and non-image files are passed over (hidden folders and non-image files are
    reported); a file or class folder whose real path leaves ``boundary`` (default ``folder``) is
    refused, so a data folder never reads elsewhere; symlinked sub-folders are not followed.
    """
    folder = Path(folder)
    real_boundary = Path(boundary or folder).resolve()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such data folder")
    try:
        entries = sorted(folder.iterdir())
    except PermissionError as e:
        raise DataError(f"{folder}: permission denied, cannot list the data folder") from e
    listing = Listing(folder, [d.name for d in entries if d.is_dir() and not d.name.startswith(".")])
    add = listing.findings.append
    for e in entries:
        if e.name.startswith("."):
            if e.is_dir():
                add(Finding("warning", "hidden_folder", str(e), "hidden folder, skipped"))
        elif not e.is_dir() and e.suffix.lower() in IMAGE_EXTENSIONS:
            add(Finding("warning", "not_in_class", str(e), f"image outside any class folder of {folder}, skipped"))
    if not listing.classes:
        add(Finding("error", "no_classes", str(folder), f"no class folders (expected {folder}/<class>/<image>)"))
    def unreadable(e: OSError) -> None:
        where = Path(e.filename)
        if isinstance(e, PermissionError):
            level = "error" if where == top else "bad"  # a whole class missing stops training
            add(Finding(level, "permission", str(where), "permission denied: folder not readable, its images are left out"))
        else:
            add(Finding("bad", "unreadable", str(where), f"folder not readable ({e.strerror or e}), its images are left out"))

    for idx, cls in enumerate(listing.classes):
        top = folder / cls
        if not _inside(top, real_boundary):
            add(Finding("error", "outside_root", str(top), f"symlink points outside the data root {boundary or folder}, refused"))
            continue
        n_before, n_findings = len(listing.files), len(listing.findings)
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable, followlinks=False):
            here = Path(dirpath)
            for d in sorted(dirnames):
                if d.startswith("."):
                    add(Finding("warning", "hidden_folder", str(here / d), "hidden folder, skipped"))
                elif (here / d).is_symlink():
                    add(Finding("warning", "symlinked_folder", str(here / d), "symlinked folder, not followed"))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink())
            for fn in sorted(filenames):
                p = here / fn
                if fn.startswith("."):
                    continue
                if p.suffix.lower() not in IMAGE_EXTENSIONS:
                    add(Finding("warning", "not_image", str(p), f"not an image file ({p.suffix or 'no extension'}), skipped"))
                    continue
                if p.is_symlink() and not _inside(p, real_boundary):
                    add(_escape_finding(p, f"the data root {boundary or folder}"))
                    continue
                listing.files.append(p)
                listing.labels.append(idx)
        if len(listing.files) == n_before and not any(f.kind == "permission" and f.path == str(top)
                                                      for f in listing.findings[n_findings:]):
            add(Finding("error", "empty_class", str(top), "class folder holds no images"))
    return listing


def _inside(path: Path, real_root: Path) -> bool:
    """Whether ``path``'s real location is inside ``real_root``; a symlink loop is not."""
    try:
        return is_inside(path.resolve(), real_root)
    except (OSError, RuntimeError):  # Python before 3.13 raises RuntimeError for a symlink loop
        return False


def _escape_finding(path: Path, root: str) -> Finding:
    try:
        path.resolve(strict=True)
    except (OSError, RuntimeError):
        return Finding("error", "broken_symlink", str(path), "symlink loop or dangling symlink, refused")
    return Finding("error", "outside_root", str(path), f"symlink points outside {root}, refused")


@dataclass
class DataReport:
    """Everything `check-data` learned; ``to_dict`` is what ``RUN/data_check.json`` holds."""

    root: str
    folders: dict[str, dict[str, Any]]
    findings: list[Finding]
    modes: dict[str, int]
    sizes: dict[str, Any]
    images: int
    seconds: float

    def by_level(self, level: str) -> list[Finding]:
        return [f for f in self.findings if f.level == level]

    @property
    def skipped(self) -> list[str]:
        """Files training leaves out: the ``bad`` ones."""
        return [f.path for f in self.by_level("bad")]

    def summary(self) -> str:
        counts = Counter(f.level for f in self.findings)
        kinds = Counter(f.kind for f in self.by_level("bad"))
        bad = ", ".join(f"{n} {k.replace('_', '-')}" for k, n in kinds.most_common())
        return (f"{self.root}: {self.images} images decoded in {self.seconds:.1f} s; "
                f"bad files: {counts['bad']}{f' ({bad})' if bad else ''}; "
                f"errors: {counts['error']}; warnings: {counts['warning']}")

    def lines(self, limit: int = 10) -> list[str]:
        """Plain-text report for people: summary, modes and sizes, then up to ``limit`` findings, worst first."""
        out = [self.summary()]
        if self.modes:
            sz = self.sizes
            out.append("modes: " + ", ".join(f"{m} {n}" for m, n in self.modes.items())
                       + f"; sizes (w x h): min {sz['min'][0]}x{sz['min'][1]}, median {sz['median'][0]}x{sz['median'][1]}, "
                       f"max {sz['max'][0]}x{sz['max'][1]}")
        worst = self._worst_first()
        out += [f"  {f.level:7} {f}" for f in worst[:limit]]
        if len(worst) > limit:
            out.append(f"  ... and {len(worst) - limit} more")
        return out

    def raise_for(self, strict: bool) -> None:
        """DataError (exit 3) naming the first problem: on any error, or with ``strict`` on any finding."""
        stop = self.by_level("error") or (self._worst_first() if strict else [])
        if stop:
            notes = ([] if stop[0].level == "error" else ["--strict"]) + (
                [f"{len(stop) - 1} more: `edgetl check-data {self.root}` lists them"] if len(stop) > 1 else [])
            raise DataError(f"{stop[0]}" + (f" ({'; '.join(notes)})" if notes else ""))

    def _worst_first(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: LEVELS.index(f.level))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": 1, "root": self.root, "folders": self.folders, "images": self.images,
            "seconds": round(self.seconds, 3), "modes": self.modes, "sizes": self.sizes,
            "counts": {lvl: len(self.by_level(lvl)) for lvl in LEVELS}, "skipped": self.skipped,
            "findings": [f.__dict__ for f in self.findings],
        }


def check_data(root: Path, calib: Path | None = None, *, val_split: float | None = None,
               min_side: int = MIN_SIDE, max_megapixels: float = MAX_PIXELS / 1e6,
               workers: int | None = None, log: Log | None = None) -> DataReport:
    """List the folders `--data root` trains from (and ``calib``), decode every image, report findings."""
    limits.check({"--min-side": (min_side, limits.NON_NEGATIVE), "--max-megapixels": (max_megapixels, limits.POSITIVE),
                  "--workers": (workers, limits.WORKERS)})
    max_pixels = int(max_megapixels * 1e6)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    start = time.perf_counter()
    listings = {name: list_image_folder(f, boundary=root) for name, f in data_folders(root, val_split).items()}
    if calib is not None:
        calib = Path(calib)
        if not calib.is_dir():
            raise DataError(f"{calib}: no such calibration folder")
        listings["calib"] = calibration_listing(calib)
    findings = [f for lst in listings.values() for f in lst.findings]
    findings += _class_differences(listings)
    files = [p for lst in listings.values() for p in lst.files]
    with as_log(log).task(f"decoding {len(files)} images", len(files)) as tick:
        results = decode_all(files, min_side, max_pixels, workers, tick)
    modes: Counter[str] = Counter()
    sizes: list[tuple[int, int]] = []
    bad: set[Path] = set()
    for p, (mode, size, finding) in zip(files, results):
        if mode:
            modes[mode] += 1
            sizes.append(size)
        if finding:
            findings.append(finding)
            if finding.level == "bad":
                bad.add(p)
    folders = {}
    for name, lst in listings.items():
        usable = Counter(lbl for p, lbl in zip(lst.files, lst.labels) if p not in bad)
        folders[name] = {"path": str(lst.root), "classes": lst.classes, "images": sum(usable.values()),
                         "per_class": {c: usable[i] for i, c in enumerate(lst.classes)}}
        for i, c in enumerate(lst.classes):
            if usable[i] == 0 and any(lbl == i for lbl in lst.labels):
                findings.append(Finding("error", "no_usable_images", str(lst.root / c), "every image in this class folder is unreadable"))
    return DataReport(str(root), folders, findings, dict(modes.most_common()), _size_stats(sizes),
                      len(files) - len(bad), time.perf_counter() - start)


def calibration_listing(calib: Path) -> Listing:
    """A calibration folder is an ImageFolder, or a flat folder of images (no classes to compare)."""
    try:
        entries = list(calib.iterdir())
    except PermissionError as e:
        raise DataError(f"{calib}: permission denied, cannot list the calibration folder") from e
    if any(p.is_dir() and not p.name.startswith(".") for p in entries):
        return list_image_folder(calib)
    return flat_image_files(calib)


def flat_image_files(folder: Path) -> Listing:
    """The images directly in ``folder``; symlinks leaving it are refused, as in class folders."""
    real = Path(folder).resolve()
    lst = Listing(Path(folder), [])
    try:
        entries = sorted(Path(folder).iterdir())
    except PermissionError as e:
        raise DataError(f"{folder}: permission denied, cannot list the folder") from e
    for p in entries:
        if p.name.startswith(".") or not (p.is_file() or p.is_symlink()):
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            lst.findings.append(Finding("warning", "not_image", str(p), f"not an image file ({p.suffix or 'no extension'}), skipped"))
        elif not _inside(p, real):
            lst.findings.append(_escape_finding(p, f"the folder {folder}"))
        else:
            lst.files.append(p)
            lst.labels.append(0)
    if not lst.files:
        lst.findings.append(Finding("error", "no_images", str(folder), "holds no images"))
    return lst


def _class_differences(listings: dict[str, Listing]) -> list[Finding]:
    train = listings["train"]
    out = []
    if "val" in listings and listings["val"].classes and listings["val"].classes != train.classes:
        only_t = sorted(set(train.classes) - set(listings["val"].classes))
        only_v = sorted(set(listings["val"].classes) - set(train.classes))
        out.append(Finding("error", "class_mismatch", str(listings["val"].root),
                           f"classes differ from {train.root} (only in train: {only_t or '-'}; only in val: {only_v or '-'})"))
    calib = listings.get("calib")
    if calib is not None and calib.classes:
        unknown = sorted(set(calib.classes) - set(train.classes))
        missing = sorted(set(train.classes) - set(calib.classes))
        if unknown:
            out.append(Finding("error", "class_mismatch", str(calib.root), f"calibration classes {unknown[:5]} are not among the training classes"))
        if missing:
            out.append(Finding("warning", "calib_missing_classes", str(calib.root), f"no calibration images for classes {missing[:5]}"))
    return out


def decode_all(files: list[Path], min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS,
               workers: int | None = None, tick: Tick = no_tick) -> list[tuple[str | None, tuple[int, int], Finding | None]]:
    """(mode, size, finding) per file, decoded in parallel; order follows ``files``."""
    n = workers or min(8, os.cpu_count() or 1)
    results = []

    def collect(decoded: Iterable[tuple[str | None, tuple[int, int], Finding | None]]) -> None:
        for result in decoded:
            results.append(result)
            tick()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's per-file EXIF/palette notes; bombs are checked explicitly
        if n <= 1 or len(files) < 64:
            collect(_decode(p, min_side, max_pixels) for p in files)
        else:
            with ThreadPoolExecutor(n, thread_name_prefix="check-data") as ex:
                collect(ex.map(lambda p: _decode(p, min_side, max_pixels), files, chunksize=32))
    return results


def _decode(path: Path, min_side: int, max_pixels: int) -> tuple[str | None, tuple[int, int], Finding | None]:
    """Header first (mode, size, bomb check), then the same full decode training does."""
    def bad(kind: str, message: str) -> tuple[None, tuple[int, int], Finding]:
        return None, (0, 0), Finding("bad", kind, str(path), message)

    try:
        if path.stat().st_size == 0:
            return bad("zero_byte", "zero-byte file")
        with Image.open(path) as im:
            mode, size = im.mode, im.size
    except FileNotFoundError:
        return bad("missing", "vanished while being checked")
    except PermissionError:
        return bad("permission", "permission denied: not readable by this user")
    except Image.DecompressionBombError:
        return bad("bomb", "image too large, refused as a possible decompression bomb")
    except UnidentifiedImageError:
        return bad("unidentified", "not an image file PIL can read")
    except (OSError, SyntaxError, ValueError) as e:
        return bad("corrupt", f"corrupt or truncated image ({e})")
    limit = bomb_limit()
    if limit and size[0] * size[1] > limit:
        return bad("bomb", f"image too large ({size[0]}x{size[1]}), refused as a possible decompression bomb")
    try:
        load_rgb(path)
    except DataError as e:
        cause = e.__cause__
        kind = "truncated" if cause is not None and "truncated" in str(cause) else "corrupt"
        why, prefix = str(e), f"{path}: "
        why = why[len(prefix):] if why.startswith(prefix) else why  # str.removeprefix is Python 3.9+
        return None, size, Finding("bad", kind, str(path), why)
    if min(size) < min_side:
        return mode, size, Finding("warning", "too_small", str(path), f"{size[0]}x{size[1]} px, shorter side under {min_side} px")
    if size[0] * size[1] > max_pixels:
        return mode, size, Finding("warning", "too_large", str(path),
                                   f"{size[0]}x{size[1]} px, over {max_pixels / 1e6:g} MP: slow to decode every epoch")
    return mode, size, None


def _size_stats(sizes: Iterable[tuple[int, int]]) -> dict[str, Any]:
    sizes = list(sizes)
    if not sizes:
        return {}
    ws, hs = [w for w, _ in sizes], [h for _, h in sizes]
    return {"min": [min(ws), min(hs)], "median": [int(statistics.median(ws)), int(statistics.median(hs))],
            "max": [max(ws), max(hs)],
            "most_common": [[w, h, n] for (w, h), n in Counter(sizes).most_common(5)]}
