"""`--strategy head` at speed: the frozen backbone runs once, the head trains on cached features.

With every backbone weight frozen and its BatchNorm in eval mode, the backbone is a fixed
function, so recomputing it each epoch is wasted work. The features are the input of the
classifier module (captured with a forward hook, so any timm or torchvision model works).
``views`` > 0 caches that many augmented passes over the training set and cycles through them,
keeping augmentation; ``views`` = 0 caches the un-augmented evaluation view. Dropout placed
before the classifier is not applied to cached features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


@torch.no_grad()
def extract(model: nn.Module, head: str, batches: Iterable[torch.Tensor], device: torch.device,
            amp_dtype: torch.dtype | None = None, channels_last: bool = False,
            on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """The classifier's input for every image in ``batches`` (normalized NCHW), as float32 on CPU."""
    captured: list[torch.Tensor] = []
    hook = model.get_submodule(head).register_forward_pre_hook(lambda m, args: captured.append(args[0].detach().float().cpu()))
    model.eval()
    try:
        for x in batches:
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                model(x)
            if on_batch:
                on_batch(x.shape[0])
    finally:
        hook.remove()
    return torch.cat(captured).flatten(1)
