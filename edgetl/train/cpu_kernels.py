"""CPU training speed-ups: convolutions where oneDNN, as PyTorch calls it, picks a slow kernel,
and an allocator that keeps freed activation memory.

Found by profiling Lite0's channels_last training step (RESULTS.md):

- Depthwise weight gradients of kernels wider than 3. oneDNN's depthwise weight-gradient
  kernel only takes kernels up to 3 wide; wider ones go to its generic grouped kernel, which
  pads every one-channel group to a full register block (16x16 with AVX-512), so it computes
  256 times the work. Asking the same kernel for groups of one block of channels and keeping
  the diagonal gives the same numbers for a 16th of the work.
- 1x1 convolutions on feature maps of 16 pixels or fewer are one matrix multiply, and the
  plain GEMM beats oneDNN's per-call convolution set-up there.
- glibc hands buffers above its mmap threshold back to the kernel when they are freed, so every
  step faults its activations in again: about 380,000 page faults a step for Lite0 at 224 px,
  batch 32.

`FastConvs` applies the first two to `F.conv2d` calls made while it is active; everything else
passes through unchanged. `retain_freed_memory` is the third.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MAX_GEMM_PIXELS = 16  # 1x1 convolutions on at most this many output pixels run as a GEMM
ONEDNN_DW_MAX_KW = 3  # widest kernel oneDNN's depthwise weight-gradient kernel takes


def applies(device: torch.device, channels_last: bool, amp_dtype: torch.dtype | None, compiled: bool) -> bool:
    """fp32 eager channels_last on CPU: the only setting both replacements were written and measured for."""
    return device.type == "cpu" and channels_last and amp_dtype is None and not compiled


@functools.cache
def _block() -> int:
    """oneDNN's channel block on this CPU: 16 floats with AVX-512, else 8."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def _pair(v: Any) -> list[int]:
    return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v), int(v)]


class _Depthwise(torch.autograd.Function):
    """A depthwise convolution whose weight gradient comes from groups of ``block`` channels."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: list[int],
                padding: list[int], dilation: list[int], block: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation, block, b is not None)
        return F.conv2d(x, w, b, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        stride, padding, dilation, block, has_bias = ctx.conf
        c = x.shape[1]
        conv = (stride, padding, dilation, False, [0, 0])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(gy, x, w, None, *conv, c, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            # Only the weight's shape matters for a weight gradient: one block-wide group per block of channels.
            wide = x.new_empty((c, block, *w.shape[2:])).contiguous(memory_format=torch.channels_last)
            g = torch.ops.aten.convolution_backward(gy, x, wide, None, *conv, c // block, [False, True, False])[1]
            ch = torch.arange(c, device=x.device)
            gw = g[ch, ch % block].unsqueeze(1).contiguous(memory_format=torch.channels_last)
        if has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None


def _gemm_1x1(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 stride-1 convolution of a channels_last tensor as one matrix multiply (a free view both ways)."""
    n, c, h, wd = x.shape
    y = x.permute(0, 2, 3, 1).reshape(n * h * wd, c) @ w.reshape(w.shape[0], c).t()
    if b is not None:
        y = y + b
    return y.view(n, h, wd, -1).permute(0, 3, 1, 2)


class FastConvs(TorchFunctionMode):
    """Routes the two slow `F.conv2d` cases (module docstring) to the faster equivalents."""

    def __init__(self) -> None:
        super().__init__()
        self.block = _block()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d and torch.is_grad_enabled():
            fast = self._route(*args, **kwargs)
            if fast is not None:
                return fast
        return func(*args, **kwargs)

    def _route(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, stride: Any = 1,
               padding: Any = 0, dilation: Any = 1, groups: int = 1) -> torch.Tensor | None:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4 or isinstance(padding, str)
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return None
        c = x.shape[1]
        if (groups == c == w.shape[0] and w.shape[1] == 1 and w.shape[3] > ONEDNN_DW_MAX_KW
                and c % self.block == 0 and w.requires_grad):
            return _Depthwise.apply(x, w, b, _pair(stride), _pair(padding), _pair(dilation), self.block)
        if (groups == 1 and tuple(w.shape[2:]) == (1, 1) and _pair(stride) == [1, 1] and _pair(padding) == [0, 0]
                and x.shape[2] * x.shape[3] <= MAX_GEMM_PIXELS):
            return _gemm_1x1(x, w, b)
        return None


# glibc mallopt parameters and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


@contextmanager
def retain_freed_memory() -> Iterator[None]:
    """Inside, freed memory stays in the process for the next step (what jemalloc or a caching
    allocator would do); on leaving, glibc's defaults come back and the heap is trimmed.
    Does nothing where the C library is not glibc, or where the user tunes glibc's allocator."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    tuned = any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ)
    if libc is None or not hasattr(libc, "gnu_get_libc_version") or tuned:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
        libc.malloc_trim(0)
