from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder

from edgetl.errors import Interrupted, UsageError
from edgetl.train.checkpoint import resume_config
from edgetl.train.config import TrainConfig
from edgetl.train.loop import Hooks, finetune


def test_digits_two_epochs_at_64px_beats_90_percent(digits_run: Path) -> None:
    run = json.loads((digits_run / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["metrics"]["val_top1"] > 90.0 and run["metrics"]["epochs"] == 2
    assert run["model"] == "efficientnet_lite0" and run["classes"] == [str(i) for i in range(10)]
    assert run["preprocess"] == {"size": 64, "resize": 73, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    assert run["strategy"] == "full" and run["config"]["lr"] == 2e-3


def test_checkpoints_load_with_weights_only(digits_run: Path) -> None:
    for name in ("best.pt", "last.pt"):
        ck = torch.load(digits_run / name, weights_only=True)
        assert ck["classes"] == [str(i) for i in range(10)] and "classifier.weight" in ck["model"]
    last = torch.load(digits_run / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and {"optimizer", "scheduler", "scaler"} <= set(last)


def test_metrics_csv_has_a_row_per_epoch(digits_run: Path) -> None:
    rows = list(csv.DictReader(open(digits_run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "seconds", "images_per_s"}
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])


class _StopAfter(Hooks):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_end(self, row: dict[str, float]) -> None:
        if row["epoch"] == self.epoch:
            raise Interrupted(signal.SIGTERM)


def _tiny(tmp_path: Path, out: str, **kw) -> TrainConfig:
    data = tmp_path / "data"
    if not data.exists():
        make_image_folder(data, classes=3, per_class=8)
    base = dict(data=str(data), out=str(tmp_path / out), model="resnet18", weights="none", img_size=32,
                epochs=3, batch_size=4, workers=0, val_split=0.25, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    straight = finetune(_tiny(tmp_path, "a"))
    with pytest.raises(Interrupted):
        finetune(_tiny(tmp_path, "b"), hooks=_StopAfter(1))
    assert json.loads((tmp_path / "b" / "run.json").read_text())["status"] == "interrupted"
    resumed = finetune(resume_config(tmp_path / "b"), resume=True)
    assert resumed.epochs == straight.epochs == 3
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in straight.history], rel=1e-5)


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    finetune(_tiny(tmp_path, "a", epochs=1))
    with pytest.raises(UsageError, match="already holds a run; pass --resume"):
        finetune(_tiny(tmp_path, "a", epochs=1))


def test_early_stop_ends_the_run(tmp_path: Path) -> None:
    s = finetune(_tiny(tmp_path, "es", epochs=8, lr=1e-9, early_stop=1))
    assert s.status == "early_stopped" and s.epochs < 8


@pytest.mark.parametrize("strategy", ["head", "partial"])
def test_frozen_weights_do_not_move(tmp_path: Path, strategy: str) -> None:
    from edgetl.models import build

    cfg = _tiny(tmp_path, strategy, epochs=1, strategy=strategy, unfreeze=1, weights="none")
    finetune(cfg)
    trained = torch.load(tmp_path / strategy / "last.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    init = build("resnet18", 3, "none").model.state_dict()
    assert torch.equal(trained["layer1.0.conv1.weight"], init["layer1.0.conv1.weight"])
    assert torch.equal(trained["bn1.running_mean"], init["bn1.running_mean"])  # frozen BN kept its statistics
    assert not torch.equal(trained["fc.weight"], init["fc.weight"])
    moved = not torch.equal(trained["layer4.1.conv2.weight"], init["layer4.1.conv2.weight"])
    assert moved == (strategy == "partial")


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--backbone-lr-scale"):
        finetune(_tiny(tmp_path, "x", backbone_lr_scale=0))
