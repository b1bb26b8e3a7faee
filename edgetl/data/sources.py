"""Data sources (ImageFolder, scikit-learn digits, CIFAR-10), splits and torch datasets."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2 as T

from ..errors import DataError
from ..images import ImageSource, Preprocess, load_rgb
from .check import data_folders, list_image_folder

BUILTIN_SOURCES = ("digits", "cifar10")


@dataclass
class Split:
    """Labelled images: file paths or in-memory uint8 arrays, with class indices."""

    items: Sequence[ImageSource]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Sequence[int]) -> Split:
        return Split([self.items[i] for i in idx], [self.labels[i] for i in idx])

    def sample(self, n: int, seed: int = 0) -> Split:
        """``n`` images in the classes' proportions (all where ``n`` covers them): the first ``n`` of an
        ImageFolder listing would be its first class or two."""
        return self if n >= len(self) else self.subset(stratified_sample(self.labels, n, seed))


@dataclass
class DataSet:
    """A train/val pair with class names in index order; ``hflip`` says whether mirroring keeps labels."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    hflip: bool = True


def load_data(spec: str, val_split: float | None = None, seed: int = 0, skip: Collection[str] = ()) -> DataSet:
    """Resolve ``--data``: ``digits``, ``cifar10``, or an ImageFolder root (with or without train/ and val/).

    ``skip`` lists files to leave out (the bad files `edgetl check-data` found). They are removed
    after the split, so which images land in train or val never depends on which files are bad.
    """
    if val_split is not None and not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be between 0 and 1, got {val_split}")
    if spec == "digits":
        return _digits(val_split or 0.2, seed)
    if spec == "cifar10":
        return _cifar10()
    root = Path(spec)
    if not root.exists():
        raise DataError(f"{root}: no such data folder (or pass --data digits / cifar10)")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; --data wants an ImageFolder root, 'digits' or 'cifar10'")
    folders = data_folders(root, val_split)
    if "val" in folders:
        classes, train = scan_image_folder(folders["train"], boundary=root)
        val_classes, val = scan_image_folder(folders["val"], boundary=root)
        if val_classes != classes:
            only_t = sorted(set(classes) - set(val_classes))
            only_v = sorted(set(val_classes) - set(classes))
            raise DataError(
                f"{folders['val']}: classes differ from {folders['train']} "
                f"(only in train: {only_t or '-'}; only in val: {only_v or '-'})"
            )
    else:
        classes, everything = scan_image_folder(folders["train"], boundary=root)
        tr, va = stratified_split(everything.labels, val_split or 0.2, seed)
        train, val = everything.subset(tr), everything.subset(va)
    if len(classes) < 2:
        hint = (f"; {folders['train']} holds only a {classes[0]}/ folder: put the class folders in "
                f"{root}/train/<class>/ and {root}/val/<class>/, or in {root}/<class>/" if classes and
                classes[0] in ("train", "val") else "")
        raise DataError(f"{folders['train']}: {len(classes)} class folder(s) {classes}; fine-tuning a classifier "
                        f"needs at least two{hint}")
    if skip:
        train, val = without(train, skip), without(val, skip)
        present = set(train.labels)
        empty = [c for i, c in enumerate(classes) if i not in present]
        if empty:
            raise DataError(f"{folders['train'] / empty[0]}: no readable training images left after skipping bad files")
    return DataSet(str(root), classes, train, val)


def run_data(info: dict) -> DataSet:
    """The exact train/val split a run trained on, from its run.json (bad files skipped as then)."""
    cfg, data = info["config"], info.get("data", {})
    return load_data(cfg["data"], cfg.get("val_split"), cfg.get("seed", 0), data.get("skipped", ()))


def without(split: Split, skip: Collection[str]) -> Split:
    """``split`` less the files named in ``skip``."""
    s = set(skip)
    return split.subset([i for i, item in enumerate(split.items) if str(item) not in s])


def scan_image_folder(root: Path, boundary: Path | None = None) -> tuple[list[str], Split]:
    """Classes are the sorted, non-hidden sub-folders; hidden files and non-image files are skipped.

    Raises on the first structural problem `check-data` calls an error: no classes, an empty class,
    or a symlink whose target leaves ``boundary`` (default ``root``): a data folder must not read elsewhere.
    """
    listing = list_image_folder(Path(root), boundary)
    errors = listing.errors()
    if errors:
        raise DataError(str(errors[0]))
    return listing.classes, Split(listing.files, listing.labels)


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded per-class split, so every class keeps its share in train and val."""
    rng = np.random.default_rng(seed)
    labels_a = np.asarray(labels)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for c in np.unique(labels_a):
        idx = np.flatnonzero(labels_a == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.extend(idx[:n_val].tolist())
        train_idx.extend(idx[n_val:].tolist())
    return sorted(train_idx), sorted(val_idx)


def stratified_sample(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """Exactly ``n`` seeded indices, each class's share by largest remainder."""
    labels_a = np.asarray(labels)
    classes, counts = np.unique(labels_a, return_counts=True)
    quota = counts * n / len(labels_a)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for c, k in zip(classes, take):
        idx = np.flatnonzero(labels_a == c)
        picked.extend(rng.permutation(idx)[:k].tolist())
    return sorted(picked)


def _digits(val_split: float, seed: int) -> DataSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    everything = Split(list(images), [int(t) for t in d.target])
    tr, va = stratified_split(everything.labels, val_split, seed)
    # Mirrored digits are other glyphs (or none), so no horizontal flips here.
    return DataSet("digits", [str(n) for n in d.target_names], everything.subset(tr), everything.subset(va), hflip=False)


def _cifar10() -> DataSet:
    from torchvision.datasets import CIFAR10

    cache = Path(os.environ.get("EDGETL_DATA_CACHE", Path.home() / ".cache" / "edgetl" / "cifar10"))
    try:
        train = CIFAR10(str(cache), train=True, download=True)
        test = CIFAR10(str(cache), train=False, download=True)
    except Exception as e:  # URLError, socket errors, HTTP errors: all mean "could not fetch"
        raise DataError(
            f"cifar10: cannot download to {cache} ({type(e).__name__}); offline, pass "
            "--data PATH to an ImageFolder copy of it, or --data digits (bundled)"
        ) from e
    return DataSet(
        "cifar10", list(train.classes),
        Split(list(train.data), [int(t) for t in train.targets]),
        Split(list(test.data), [int(t) for t in test.targets]),
    )


def eval_transform(pp: Preprocess) -> T.Compose:
    """Deterministic resize, centre crop and normalization: the recipe every artifact is judged with."""
    return T.Compose([
        T.Lambda(pp.resize_crop),  # on the PIL image, the exact code the torch-free runtime uses
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(list(pp.mean), list(pp.std)),
    ])


def train_transform(pp: Preprocess, hflip: bool, trivial_augment: bool) -> T.Compose:
    ops: list = [
        T.ToImage(),
        T.RandomResizedCrop(pp.size, scale=(0.25, 1.0), interpolation=_tv_interp(pp.interpolation), antialias=True),
    ]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    if trivial_augment:
        ops.append(T.TrivialAugmentWide(interpolation=_tv_interp(pp.interpolation)))
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(list(pp.mean), list(pp.std))]
    return T.Compose(ops)


def _tv_interp(name: str) -> T.InterpolationMode:
    return {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
            "nearest": T.InterpolationMode.NEAREST}[name]


class ImageDataset(torch.utils.data.Dataset):
    """Decodes on access; a bad file raises DataError naming it."""

    def __init__(self, split: Split, transform: T.Compose) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.split.items[i])), self.split.labels[i]


def make_loader(
    split: Split, transform: T.Compose, batch_size: int, *, shuffle: bool, workers: int,
    generator: torch.Generator | None = None, pin_memory: bool = False, drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        ImageDataset(split, transform), batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        generator=generator, pin_memory=pin_memory, drop_last=drop_last,
        persistent_workers=False,
    )
