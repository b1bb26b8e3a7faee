"""FP32 ONNX from the fine-tuned PyTorch model, verified against it.

The ONNX takes the normalized NCHW float tensor and returns logits, so every backend shares one
preprocessing path and one output contract. Opset 17 by default so TensorRT 8.5 (JetPack 5) reads
it; the weights live inside the file. timm's dynamic "same" padding is frozen to one static Pad.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..data.sources import Split, eval_transform, make_loader
from ..errors import ArtifactError
from ..fileio import atomic_write_bytes
from ..images import Preprocess
from ..runtime.base import Runner

INPUT_NAME, OUTPUT_NAME = "input", "logits"
MAX_LOGIT_DIFF = 1e-3  # FP32 ONNX vs PyTorch, relative to the largest logit magnitude (at least 1)
VERIFY_IMAGES = 64


class _StaticPad(nn.Module):
    """TF-style 'same' padding frozen for one input size: a plain Pad + op in the ONNX graph."""

    def __init__(self, inner: nn.Module, pads: tuple[int, int, int, int], value: float) -> None:
        super().__init__()
        self.inner, self.pads, self.value = inner, pads, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(F.pad(x, self.pads, value=self.value))


def freeze_same_padding(model: nn.Module, size: int) -> nn.Module:
    """A copy of ``model`` whose timm dynamic 'same' padding is static for ``size`` x ``size`` inputs.

    timm's tf_* models compute padding from the input shape at run time, which the ONNX
    exporter writes as ~400 Shape/Gather/Ceil nodes; with the spatial size fixed, one Pad does.
    """
    from timm.layers import Conv2dSame
    from timm.layers.padding import get_same_padding
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

    model = copy.deepcopy(model).eval()
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: sizes.__setitem__(n, tuple(args[0].shape[-2:])))
             for n, m in model.named_modules() if isinstance(m, (Conv2dSame, MaxPool2dSame, AvgPool2dSame))]
    if not hooks:
        return model
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for name, (ih, iw) in sizes.items():
        m = model.get_submodule(name)
        k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(getattr(m, "dilation", 1))
        ph, pw = get_same_padding(ih, k[0], s[0], d[0]), get_same_padding(iw, k[1], s[1], d[1])
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if isinstance(m, Conv2dSame):
            inner: nn.Module = nn.Conv2d(m.in_channels, m.out_channels, k, s, 0, d, m.groups, m.bias is not None)
            inner.load_state_dict(m.state_dict())
            value = 0.0
        elif isinstance(m, MaxPool2dSame):
            inner, value = nn.MaxPool2d(k, s, 0, d, ceil_mode=m.ceil_mode), float("-inf")
        else:
            inner, value = nn.AvgPool2d(k, s, 0, ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad), 0.0
        model.set_submodule(name, _StaticPad(inner, pads, value))
    return model


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def export_onnx(model: nn.Module, path: Path, size: int, opset: int, batch: str = "dynamic") -> None:
    """Eval-mode TorchScript-based export (opset <= 17 capable), weights inside, checked by onnx.checker."""
    import onnx

    static = freeze_same_padding(model, size)
    n = 1 if batch == "dynamic" else int(batch)
    buf = io.BytesIO()
    warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
    dyn = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch == "dynamic" else None
    with torch.no_grad():
        torch.onnx.export(static, (torch.zeros(n, 3, size, size),), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dyn,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_name, proto.producer_version = "edgetl", __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ArtifactError(f"{path}: exported graph fails onnx.checker ({str(e).splitlines()[0]})") from e
    atomic_write_bytes(path, proto.SerializeToString())


def verify_batch(val: Split, pp: Preprocess, n: int = VERIFY_IMAGES) -> np.ndarray:
    """Real validation images, spread over the split, preprocessed exactly as in evaluation."""
    idx = np.linspace(0, len(val) - 1, num=min(n, len(val))).round().astype(int)
    loader = make_loader(val.subset(sorted(set(idx.tolist()))), eval_transform(pp), 256, shuffle=False, workers=0)
    return torch.cat([x for x, _ in loader]).numpy()


def verify_against_torch(onnx_path: Path, model: nn.Module, x: np.ndarray) -> dict[str, float]:
    """Largest absolute logit difference and top-1 agreement; past tolerance the export fails loudly."""
    from ..runtime.onnxruntime import OrtRunner

    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    got = OrtRunner(onnx_path, own=True).run(x)
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    tol = MAX_LOGIT_DIFF * max(1.0, float(np.abs(ref).max()))
    if diff > tol or agree < 1.0:
        raise ArtifactError(f"{onnx_path}: ONNX Runtime disagrees with PyTorch (max |Δlogit| {diff:.3g} > {tol:.3g} "
                            f"or top-1 agreement {100 * agree:.1f}% < 100%)")
    return {"images": len(x), "max_abs_diff": diff, "top1_agreement": agree}


def agreement(ref_runner: Runner, runner: Runner, x: np.ndarray) -> dict[str, float]:
    ref, got = ref_runner.run(x), runner.run(x)
    return {"images": len(x), "max_abs_diff": float(np.abs(got - ref).max()),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
