"""edgetl.images: the preprocessing recipe, and the torch-free decoder agreeing with torchvision."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import IMAGENET, needs_imagenet
from PIL import Image

from edgetl.images import Preprocess


def test_preprocess_round_trips_and_rescales() -> None:
    pp = Preprocess.from_crop_pct(224, 0.875, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert (pp.size, pp.resize) == (224, 256)
    assert Preprocess.from_dict(pp.to_dict()) == pp
    assert (pp.with_size(64).size, pp.with_size(64).resize) == (64, 73)


@needs_imagenet
@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_numpy_preprocessing_matches_torchvision_within_one_grey_level(interp: str) -> None:
    from torchvision import transforms as T

    pp = Preprocess(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interp)
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interp]
    ref_tf = T.Compose([T.Resize(256, interpolation=mode), T.CenterCrop(224), T.ToTensor(),
                        T.Normalize(pp.mean, pp.std)])
    for f in sorted(IMAGENET.glob("*.JPEG"))[:8]:
        img = Image.open(f).convert("RGB")
        ours = pp.to_array(img)
        ref = ref_tf(img).numpy()
        grey_levels = np.abs(ours - ref) * np.asarray(pp.std)[:, None, None] * 255
        assert grey_levels.max() <= 1.0, f.name
