"""The fast input pipeline: decode cache, batched augmentation, cached head features."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from edgetl.data.cache import BatchAugment, decode
from edgetl.data.feed import CachedFeed, LoaderFeed
from edgetl.data.sources import eval_transform, load_data
from edgetl.evaluate import evaluate_run
from edgetl.images import Preprocess, load_rgb
from edgetl.train.config import TrainConfig
from edgetl.train.distributed import Dist
from edgetl.train.loop import finetune

PP = Preprocess(32, 40, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic")


def test_cached_validation_batches_equal_the_eval_transform(tmp_path: Path) -> None:
    data = load_data(str(make_image_folder(tmp_path / "d", classes=3, per_class=6, size=50)), val_split=0.5)
    feed = CachedFeed(data, PP, 4, True, False, 0, Dist(), torch.device("cpu"), "memory")
    x = torch.cat([b for b, _ in feed.val()[1]])
    ref = torch.stack([eval_transform(PP)(load_rgb(p)) for p in data.val.items])
    assert torch.allclose(x, ref, atol=1e-5)
    loader = LoaderFeed(data, PP, 4, True, False, 0, 0, Dist(), False)
    assert torch.allclose(torch.cat([b for b, _ in loader.val()[1]]), ref, atol=1e-5)


def test_disk_cache_is_reused_and_invalidated_when_an_image_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    data = load_data(str(make_image_folder(tmp_path / "d", classes=2, per_class=4, size=48)), val_split=0.5)
    first = decode(data.train, PP, train=True, where="disk")
    files = sorted((tmp_path / "cache" / "decoded").iterdir())
    assert len(files) == 1 and first.shape == (len(data.train), 3, 40, 40)
    mtime = files[0].stat().st_mtime_ns
    assert torch.equal(decode(data.train, PP, train=True, where="disk"), first)
    assert files[0].stat().st_mtime_ns == mtime  # read back, not rebuilt
    p = Path(data.train.items[0])
    Image.new("RGB", (48, 48), "white").save(p)
    os.utime(p, ns=(mtime + 10**9, mtime + 10**9))
    again = decode(data.train, PP, train=True, where="disk")
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 2
    assert not torch.equal(again[0], first[0]) and torch.equal(again[1:], first[1:])
    # other preprocessing, other cache entry
    decode(data.train, PP.with_size(24), train=True, where="disk")
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 3


def test_batch_augment_is_seeded_normalized_and_flips() -> None:
    pp = Preprocess(16, 16, (0.5,) * 3, (0.5,) * 3, "bilinear")
    ramp = torch.arange(16, dtype=torch.uint8).mul(16).view(1, 1, 1, 16).expand(8, 3, 16, 16).contiguous()
    aug = BatchAugment(pp, hflip=True, trivial_augment=False)
    a = aug(ramp, torch.Generator().manual_seed(1))
    b = aug(ramp, torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 16, 16) and torch.equal(a, b)
    assert a.min() >= -1.0 - 1e-6 and a.max() <= 1.0 + 1e-6
    slopes = (a[:, 0, 8, -1] - a[:, 0, 8, 0]).sign()  # left-to-right ramp: flipped images run backwards
    assert (slopes > 0).any() and (slopes < 0).any()
    no_flip = BatchAugment(pp, hflip=False, trivial_augment=True)(ramp, torch.Generator().manual_seed(2))
    assert no_flip.shape == (8, 3, 16, 16)


def test_head_strategy_trains_on_cached_features(tmp_path: Path) -> None:
    """The head learns from cached features; the saved model evaluates (through PIL, the whole
    network) to what training reported, so the cached validation features were the real ones."""
    data = make_image_folder(tmp_path / "d", classes=3, per_class=10, size=32)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="timm/test_resnet", weights="none",
                      img_size=32, epochs=3, batch_size=8, workers=0, val_split=0.3, strategy="head", lr=1e-2)
    s = finetune(cfg)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["input_pipeline"] == "FeatureFeed"
    _, res, _ = evaluate_run(tmp_path / "run")
    assert res.top1 == pytest.approx(s.val_top1, abs=1e-6)
    views = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "views"), "feature_views": 2})
    assert finetune(views).epochs == 3


@pytest.mark.parametrize("cache", ["off", "memory"])
def test_both_pipelines_learn_digits(tmp_path: Path, cache: str) -> None:
    s = finetune(TrainConfig(data="digits", out=str(tmp_path / cache), model="timm/test_resnet", weights="none",
                             img_size=32, epochs=3, batch_size=32, lr=3e-3, workers=0, cache=cache))
    assert s.val_top1 > 85
    assert json.loads((tmp_path / cache / "run.json").read_text())["input_pipeline"] == (
        "LoaderFeed" if cache == "off" else "CachedFeed")
