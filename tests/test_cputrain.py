"""The CPU training kernels give PyTorch's own results, and are taken where they are meant to be."""

from __future__ import annotations

import ctypes
import os
import resource
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetl.models import apply_strategy, build, set_train_mode
from edgetl.train.cpu_kernels import FastConvs, applies, retain_freed_memory

CL = torch.channels_last


def _grads(fn, inputs: list[torch.Tensor], fast: bool) -> tuple[torch.Tensor, str, tuple[torch.Tensor, ...]]:
    torch.manual_seed(1)
    with FastConvs() if fast else nullcontext():
        y = fn()
    g = torch.randn_like(y)
    return y, y.grad_fn.name(), torch.autograd.grad(y, inputs, g)


@pytest.mark.parametrize("k,stride,pad,bias", [(5, 1, 2, False), (5, 2, 0, True), (7, 1, 3, False)])
def test_wide_depthwise_weight_gradient_equals_pytorchs(k: int, stride: int, pad: int, bias: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 32, 9, 9).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(32, 1, k, k).contiguous(memory_format=CL).requires_grad_()
    b = torch.randn(32, requires_grad=True) if bias else None
    inputs = [t for t in (x, w, b) if t is not None]
    conv = lambda: F.conv2d(x, w, b, stride, pad, 1, 32)  # noqa: E731
    y0, name0, g0 = _grads(conv, inputs, fast=False)
    y1, name1, g1 = _grads(conv, inputs, fast=True)
    assert name0 == "ConvolutionBackward0" and name1 == "_DepthwiseBackward"
    torch.testing.assert_close(y1, y0)
    for a, e in zip(g1, g0):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("hw,routed", [(2, True), (4, True), (5, False)])
def test_small_1x1_convolution_runs_as_gemm_with_pytorchs_numbers(hw: int, routed: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 24, hw, hw).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(40, 24, 1, 1).contiguous(memory_format=CL).requires_grad_()
    b = torch.randn(40, requires_grad=True)
    conv = lambda: F.conv2d(x, w, b)  # noqa: E731
    y0, _, g0 = _grads(conv, [x, w, b], fast=False)
    y1, name1, g1 = _grads(conv, [x, w, b], fast=True)
    assert (name1 != "ConvolutionBackward0") == routed
    assert y1.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y1, y0)
    for a, e in zip(g1, g0):
        torch.testing.assert_close(a, e)


def test_other_convolutions_pass_through() -> None:
    x = torch.randn(2, 32, 6, 6).contiguous(memory_format=CL).requires_grad_()
    dw3 = torch.randn(32, 1, 3, 3, requires_grad=True)  # oneDNN's own depthwise kernel takes 3x3
    dw5 = torch.randn(32, 1, 5, 5, requires_grad=True)
    with FastConvs():
        assert F.conv2d(x, dw3, None, 1, 1, 1, 32).grad_fn.name() == "ConvolutionBackward0"
        assert F.conv2d(x.contiguous(), dw5, None, 1, 2, 1, 32).grad_fn.name() == "ConvolutionBackward0"  # NCHW
        assert F.conv2d(x, dw5, None, 1, "same", 1, 32).grad_fn.name() == "ConvolutionBackward0"
        assert F.conv2d(x.double(), dw5.double(), None, 1, 2, 1, 32).grad_fn.name() == "ConvolutionBackward0"
        with torch.no_grad():
            assert F.conv2d(x, dw5, None, 1, 2, 1, 32).grad_fn is None


def test_lite0_training_step_matches_plain_pytorch() -> None:
    """The bundled model's loss and every gradient, with and without the fast kernels."""
    torch.manual_seed(0)
    b = build("efficientnet_lite0", 4, "imagenet")
    model = b.model.to(memory_format=CL)
    apply_strategy(model, b.head, "full")
    set_train_mode(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=CL)
    y = torch.tensor([0, 1, 2, 3])
    results = []
    for fast in (False, True):
        model.load_state_dict(state)  # batch-norm running statistics move in train mode
        model.zero_grad()
        with FastConvs() if fast else nullcontext():
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss0, g0), (loss1, g1) = results
    torch.testing.assert_close(loss1, loss0)
    for name, g in g0.items():  # summation order differs: compare against each tensor's scale
        assert float((g1[name] - g).abs().max()) <= 1e-4 * float(g.abs().max()) + 1e-6, name


def test_applies_to_fp32_eager_channels_last_on_cpu_only() -> None:
    cpu = torch.device("cpu")
    assert applies(cpu, True, None, False)
    assert not applies(cpu, False, None, False)
    assert not applies(cpu, True, torch.bfloat16, False)
    assert not applies(cpu, True, None, True)
    assert not applies(torch.device("cuda"), True, None, False)


def _faults_for_big_buffers() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(16 << 20).fill_(1.0)  # 64 MiB, above glibc's largest mmap threshold
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="needs glibc")
@pytest.mark.skipif(any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ),
                    reason="the environment tunes glibc's allocator, which edgetl then leaves alone")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    outside = _faults_for_big_buffers()
    with retain_freed_memory():
        _faults_for_big_buffers()  # the first buffer is new memory either way
        inside = _faults_for_big_buffers()
    assert outside > 4 * 16384 and inside < outside // 4
