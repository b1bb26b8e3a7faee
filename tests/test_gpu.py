"""CUDA paths: AMP fine-tuning and the PyTorch runner on a GPU. Skipped where there is none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.train.config import TrainConfig
from edgetl.train.loop import finetune

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("amp", [True, False])
def test_cuda_finetune_with_and_without_amp(tmp_path: Path, amp: bool) -> None:
    import torch

    s = finetune(TrainConfig(data="digits", out=str(tmp_path / "run"), model="timm/test_resnet", weights="none",
                             img_size=32, epochs=2, batch_size=64, lr=3e-3, device="cuda", amp=amp))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["device"].startswith("cuda") and s.val_top1 > 80
    expected = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if amp else None
    assert run["amp"] == expected


def test_torch_runner_on_cuda_matches_cpu(tiny_run: Path) -> None:
    from edgetl.evaluate import open_runner

    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    cpu = open_runner(tiny_run, device="cpu").run(x)
    gpu = open_runner(tiny_run, device="cuda").run(x)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)
