"""What the training loop eats: batches of model inputs and labels, epoch by epoch.

Three feeds behind one interface, chosen by `finetune`:
- ``LoaderFeed``: PIL transforms in a DataLoader (``--cache off``): any data set size, the plain recipe.
- ``CachedFeed``: images decoded once into a uint8 cache, augmented as whole batches on the device.
- ``FeatureFeed``: ``--strategy head``; cached backbone features, so an epoch costs a linear layer.
Each epoch's shuffling and augmentation derive from (seed, epoch), so a resumed run sees the
same batches as an uninterrupted one; under torchrun each rank takes its own shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from ..images import Preprocess
from ..train.distributed import Dist
from .sources import DataSet, ImageDataset, eval_transform, make_loader, train_transform

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Feed(Protocol):
    def train(self, epoch: int) -> tuple[int, Batches]: ...
    def val(self) -> tuple[int, Batches]: ...


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


class LoaderFeed:
    def __init__(self, data: DataSet, pp: Preprocess, batch_size: int, hflip: bool, trivial: bool, workers: int,
                 seed: int, dist: Dist, pin: bool) -> None:
        self.data, self.pp, self.bs, self.seed, self.dist, self.pin = data, pp, batch_size, seed, dist, pin
        self.train_tf = train_transform(pp, hflip, trivial)
        self.workers = workers
        self.val_split = data.val.subset(range(dist.rank, len(data.val), dist.world))

    def train(self, epoch: int) -> tuple[int, Batches]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        drop = len(self.data.train) >= self.bs * self.dist.world
        if self.dist.enabled:
            sampler = DistributedSampler(ImageDataset(self.data.train, self.train_tf), self.dist.world, self.dist.rank,
                                         shuffle=True, seed=epoch_seed(self.seed, epoch), drop_last=drop)
            loader = torch.utils.data.DataLoader(ImageDataset(self.data.train, self.train_tf), batch_size=self.bs,
                                                 sampler=sampler, num_workers=self.workers, generator=g,
                                                 pin_memory=self.pin, drop_last=drop)
        else:
            loader = make_loader(self.data.train, self.train_tf, self.bs, shuffle=True, workers=self.workers,
                                 generator=g, drop_last=drop, pin_memory=self.pin)
        return len(loader), loader  # type: ignore[return-value]

    def val(self) -> tuple[int, Batches]:
        loader = make_loader(self.val_split, eval_transform(self.pp), self.bs, shuffle=False, workers=self.workers)
        return len(loader), loader  # type: ignore[return-value]

    def train_eval(self) -> tuple[int, Batches]:
        """This rank's training images, un-augmented (for cached features)."""
        split = self.data.train.subset(range(self.dist.rank, len(self.data.train), self.dist.world))
        loader = make_loader(split, eval_transform(self.pp), self.bs, shuffle=False, workers=self.workers)
        return len(loader), loader  # type: ignore[return-value]


class CachedFeed:
    def __init__(self, data: DataSet, pp: Preprocess, batch_size: int, hflip: bool, trivial: bool, seed: int,
                 dist: Dist, device: torch.device, where: str, on_image: Callable[[int], None] | None = None) -> None:
        from .cache import BatchAugment, decode

        self.bs, self.seed, self.dist, self.device, self.pp = batch_size, seed, dist, device, pp
        self.train_u8 = decode(data.train, pp, train=True, where=where, on_image=on_image)
        self.train_y = torch.tensor(data.train.labels)
        self.val_u8 = decode(data.val, pp, train=False, where=where, on_image=on_image)
        self.val_y = torch.tensor(data.val.labels)
        self.augment = BatchAugment(pp, hflip, trivial)

    def _steps(self, n: int, drop: bool) -> int:
        per_rank = len(range(self.dist.rank, n, self.dist.world))
        return per_rank // self.bs if drop else -(-per_rank // self.bs)

    def train(self, epoch: int) -> tuple[int, Batches]:
        from .cache import batches

        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        g_aug = torch.Generator().manual_seed(epoch_seed(self.seed, epoch) + 1 + self.dist.rank)
        drop = len(self.train_y) >= self.bs * self.dist.world

        def gen() -> Batches:
            for x, y in batches(self.train_u8, self.train_y, self.bs, shuffle=True, g=g, drop_last=drop,
                                shard=(self.dist.rank, self.dist.world)):
                yield self.augment(x.to(self.device, non_blocking=True), g_aug), y
        return self._steps(len(self.train_y), drop), gen()

    def train_eval(self) -> tuple[int, Batches]:
        """This rank's training images as evaluation crops (centre of the cached square)."""
        from .cache import batches, normalize

        lo = (self.pp.resize - self.pp.size) // 2

        def gen() -> Batches:
            for x, y in batches(self.train_u8, self.train_y, self.bs, shuffle=False, shard=(self.dist.rank, self.dist.world)):
                crop = x[:, :, lo:lo + self.pp.size, lo:lo + self.pp.size]
                yield normalize(crop.to(self.device, non_blocking=True), self.pp), y
        return self._steps(len(self.train_y), False), gen()

    def val(self) -> tuple[int, Batches]:
        from .cache import batches, normalize

        def gen() -> Batches:
            for x, y in batches(self.val_u8, self.val_y, self.bs, shuffle=False, shard=(self.dist.rank, self.dist.world)):
                yield normalize(x.to(self.device, non_blocking=True), self.pp), y
        return self._steps(len(self.val_y), False), gen()


class FeatureFeed:
    """Backbone features of a frozen model: ``views`` augmented passes over this rank's training
    images (0: one un-augmented pass), cycled through epoch by epoch, and the validation features."""

    def __init__(self, images: LoaderFeed | CachedFeed, model: nn.Module, head: str, views: int, seed: int,
                 batch_size: int, device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool,
                 progress: Callable[[str, int], Callable[[int], None]]) -> None:
        self.bs, self.seed = batch_size, seed
        self.views: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k in range(max(1, views)):
            torch.manual_seed(epoch_seed(seed, -(k + 1)))
            n, it = images.train(-(k + 1)) if views else images.train_eval()
            what = f"caching features (view {k + 1} of {views})" if views else "caching features"
            self.views.append(_extract(model, head, it, device, amp_dtype, channels_last, progress(what, n)))
        n, it = images.val()
        self.val_x, self.val_y = _extract(model, head, it, device, amp_dtype, channels_last,
                                          progress("caching validation features", n))

    def train(self, epoch: int) -> tuple[int, Batches]:
        from .cache import batches

        feats, labels = self.views[(epoch - 1) % len(self.views)]
        drop = len(labels) >= self.bs
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        steps = len(labels) // self.bs if drop else -(-len(labels) // self.bs)
        return steps, batches(feats, labels, self.bs, shuffle=True, g=g, drop_last=drop)

    def val(self) -> tuple[int, Batches]:
        from .cache import batches

        return -(-len(self.val_y) // self.bs), batches(self.val_x, self.val_y, self.bs, shuffle=False)


def _extract(model: nn.Module, head: str, it: Batches, device: torch.device, amp_dtype: torch.dtype | None,
             channels_last: bool, on_batch: Callable[[int], None]) -> tuple[torch.Tensor, torch.Tensor]:
    from ..train.features import extract

    labels: list[torch.Tensor] = []

    def xs() -> Iterator[torch.Tensor]:
        for x, y in it:
            labels.append(torch.as_tensor(y))
            yield x
    feats = extract(model, head, xs(), device, amp_dtype, channels_last, on_batch)
    return feats, torch.cat(labels)
