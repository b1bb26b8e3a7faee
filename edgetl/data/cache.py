"""Fast input pipeline: decode once into a uint8 cache, augment whole batches as tensors.

The plain recipe decodes, resizes and augments every image with PIL on every epoch. Here each
image is decoded and resized once (in parallel), kept as uint8 in memory or in a memory-mapped
file keyed by the data and the preprocessing, and the training augmentation (random resized crop,
flip, optional TrivialAugment) runs on whole batches with tensor ops, on the training device.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..fileio import atomic_write
from ..images import Preprocess, load_rgb
from .sources import Split

CACHE_VERSION = 1
MEMORY_BUDGET = 4 << 30  # decoded bytes kept in RAM; larger sets go to a memory-mapped file


def cache_dir() -> Path:
    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl")) / "decoded"


def fingerprint(split: Split) -> str:
    """Changes when any file (path, size, mtime) or in-memory image changes."""
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for item in split.items:
        if isinstance(item, np.ndarray):
            h.update(item.tobytes())
        else:
            st = Path(item).stat()
            h.update(f"{Path(item).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _square(img, side: int, pp: Preprocess) -> np.ndarray:
    """Shorter side to ``side``, centre square: what random crops are taken from."""
    sq = Preprocess(side, side, pp.mean, pp.std, pp.interpolation)
    return np.asarray(sq.resize_crop(img), dtype=np.uint8)


def decode(split: Split, pp: Preprocess, *, train: bool, where: str = "auto", workers: int | None = None,
           on_image: Callable[[int], None] | None = None) -> torch.Tensor:
    """uint8 [N, 3, S, S]: training images as the centre square at ``pp.resize`` px (crops come
    from it), validation images exactly as evaluation crops them (``pp.size``)."""
    side = pp.resize if train else pp.size
    nbytes = len(split) * 3 * side * side
    key = hashlib.sha256(f"{fingerprint(split)}:{train}:{side}:{pp.interpolation}:{pp.resize}:{pp.size}".encode()).hexdigest()[:24]
    path = cache_dir() / f"{key}.u8"
    if where == "auto":
        where = "memory" if nbytes <= MEMORY_BUDGET else "disk"
    if where == "disk" and path.is_file() and path.stat().st_size == nbytes:
        return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=(len(split), 3, side, side)))

    def one(i: int) -> np.ndarray:
        img = load_rgb(split.items[i])
        arr = _square(img, side, pp) if train else np.asarray(pp.resize_crop(img), dtype=np.uint8)
        return arr.transpose(2, 0, 1)

    out = np.empty((len(split), 3, side, side), dtype=np.uint8)
    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 1) + 2)) as pool:  # PIL releases the GIL
        for i, arr in enumerate(pool.map(one, range(len(split)))):
            out[i] = arr
            if on_image:
                on_image(1)
    if where == "disk":
        atomic_write(path, lambda f: f.write(out.tobytes()))
        return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=out.shape))
    return torch.from_numpy(out)


class BatchAugment:
    """Random resized crop (scale 0.25-1, ratio 3/4-4/3) + flip for a whole batch in one grid_sample,
    optional TrivialAugmentWide on chunks of 8, then scaling and normalization."""

    def __init__(self, pp: Preprocess, hflip: bool, trivial_augment: bool) -> None:
        self.pp, self.hflip, self.trivial = pp, hflip, trivial_augment
        self.mode = "bicubic" if pp.interpolation == "bicubic" else ("nearest" if pp.interpolation == "nearest" else "bilinear")

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        area = torch.empty(b).uniform_(0.25, 1.0, generator=g)
        log_r = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
        w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
        h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
        cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if self.hflip else torch.ones(b)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
        theta = theta.to(x.device)
        size = self.pp.size
        grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
        out = F.grid_sample(x.float(), grid, mode=self.mode, padding_mode="border", align_corners=False)
        if self.trivial:
            from torchvision.transforms import v2

            ta = v2.TrivialAugmentWide()
            u8 = out.round().clamp(0, 255).to(torch.uint8)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
                out = torch.cat([ta(c) for c in u8.split(8)]).float()
        mean = torch.tensor(self.pp.mean, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.pp.std, device=x.device).view(1, 3, 1, 1) * 255
        return (out.clamp(0, 255) - mean) / std


def normalize(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """uint8 evaluation crops → the model input (same values as `data.eval_transform`)."""
    mean = torch.tensor(pp.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pp.std, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
            g: torch.Generator | None = None, drop_last: bool = False,
            shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Index batches over the cache; ``shard`` = (rank, world) gives each process its slice."""
    n = images.shape[0]
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    rank, world = shard
    order = order[rank::world]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        if len(idx):
            yield images[idx.sort().values if not shuffle else idx], labels[idx]
