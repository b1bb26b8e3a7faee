from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import IMAGENET, needs_imagenet
from torch import nn

from edgetl.errors import ArtifactError, UsageError
from edgetl.models import apply_strategy, build, resolve, set_train_mode, stages


@pytest.fixture(scope="module")
def lite0() -> object:
    return build("efficientnet_lite0", 10, "imagenet")


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_resolve_names() -> None:
    assert resolve("efficientnet_lite0").family == "bundled"
    assert resolve("resnet18").family == "torchvision"
    assert resolve("timm/resnet18").family == "timm"
    assert resolve("mobilenetv4_conv_small").family == "timm"
    with pytest.raises(UsageError, match="unknown model 'nope'"):
        resolve("nope")


def test_new_head_fits_the_classes(lite0) -> None:
    assert lite0.head == "classifier"
    assert lite0.model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    r18 = build("resnet18", 7, "none")
    assert r18.head == "fc" and r18.model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


def test_head_strategy_trains_only_the_classifier_and_freezes_bn(lite0) -> None:
    m = lite0.model
    apply_strategy(m, lite0.head, "head")
    assert _trainable(m) == {"classifier.weight", "classifier.bias"}
    set_train_mode(m)
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    assert m.classifier.training


def test_partial_strategy_trains_last_stages_plus_head(lite0) -> None:
    m = lite0.model
    groups = stages(m, lite0.head)
    assert len(groups) == 8 and groups[0][0] == "conv_stem.weight"
    apply_strategy(m, lite0.head, "partial", unfreeze=2)
    expected = set(groups[-1]) | set(groups[-2]) | {"classifier.weight", "classifier.bias"}
    assert _trainable(m) == expected
    set_train_mode(m)
    assert m.bn2.training and not m.bn1.training
    with pytest.raises(UsageError, match="this model has 8 stages"):
        apply_strategy(m, lite0.head, "partial", unfreeze=9)


def test_full_strategy_trains_everything(lite0) -> None:
    apply_strategy(lite0.model, lite0.head, "full")
    assert _trainable(lite0.model) == {n for n, _ in lite0.model.named_parameters()}


def test_torchvision_partial_uses_resnet_layers() -> None:
    b = build("resnet18", 4, "none")
    apply_strategy(b.model, b.head, "partial", unfreeze=1)
    names = _trainable(b.model)
    assert names and all(n.startswith(("layer4.", "fc.")) for n in names) and "fc.weight" in names


def test_weights_file_round_trip_pt_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = build("resnet18", 4, "none").model
    torch.save(src.state_dict(), tmp_path / "w.pt")
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    for f in ("w.pt", "w.safetensors"):
        b = build("resnet18", 4, str(tmp_path / f))
        assert torch.equal(b.model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    # another model's weights: refused, not silently half-loaded
    torch.save(build("mobilenet_v3_small", 4, "none").model.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="other.pt: weights do not fit"):
        build("resnet18", 4, str(tmp_path / "other.pt"))


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch EVIL_MARKER",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="evil.pt: not a loadable tensor file"):
        build("resnet18", 4, str(tmp_path / "evil.pt"))
    assert not (tmp_path / "EVIL_MARKER").exists()


@needs_imagenet
@pytest.mark.parametrize("name, size, resize", [("efficientnet_lite0", 224, 256), ("efficientnet_lite1", 240, 272),
                                                ("efficientnet_lite2", 260, 292)])
def test_bundled_weights_classify_real_imagenet_photos(name: str, size: int, resize: int) -> None:
    """Checks each package's tensor mapping and the preprocessing: 88-91% here, chance is 0.1%."""
    import timm

    from edgetl.data.sources import eval_transform
    from edgetl.images import load_rgb
    from edgetl.models import _load_bundled

    pp = build(name, 10, "none").preprocess
    assert (pp.size, pp.resize, pp.interpolation, pp.mean) == (size, resize, "bicubic", (0.5, 0.5, 0.5))
    ref = resolve(name)
    assert ref.family == "bundled"
    model = timm.create_model(ref.arch)  # with its ImageNet classifier, which build() replaces
    _load_bundled(model, name)
    model.eval()
    rows = list(csv.DictReader(open(IMAGENET / "labels.csv")))
    tf = eval_transform(pp)
    x = torch.stack([tf(load_rgb(IMAGENET / r["file"])) for r in rows])
    y = torch.tensor([int(r["imagenet_index"]) for r in rows])
    with torch.no_grad():
        top1 = (model(x).argmax(1) == y).float().mean().item()
    assert top1 >= 0.8
