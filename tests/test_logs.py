"""`finetune --log tensorboard|mlflow`: the real libraries read back what edgetl logged, and it equals
metrics.csv; a resumed run goes on logging into the same place."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest


def finetune(out: Path, epochs: int, resume: bool = False, **options: object) -> None:
    """In-process, as the CLI calls it (saves a Python start and a torch import per run)."""
    from edgetl.train.checkpoint import resume_config
    from edgetl.train.config import TrainConfig
    from edgetl.train.loop import finetune as run

    cfg = resume_config(out, epochs) if resume else TrainConfig(
        data="digits", out=str(out), model="timm/test_resnet", weights="none", img_size=32, epochs=epochs,
        batch_size=32, workers=0, **options)
    run(cfg.validate(), resume=resume)


def metrics(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_tensorboard_event_files_hold_metrics_csv_and_the_config(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    finetune(run, 2, log="tensorboard")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    expected = metrics(run)
    assert len(expected) == 2
    for name in ("train_loss", "val_loss", "train_top1", "val_top1", "val_top5", "lr", "seconds"):
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        assert [s for s, _ in logged] == [1, 2], name
        assert [v for _, v in logged] == pytest.approx([row[name] for row in expected], rel=1e-5), name
    config = [t for t in events.Tags()["tensors"] if t.startswith("config")]
    assert config, events.Tags()


def test_mlflow_run_holds_metrics_csv_params_and_status_and_resume_continues_it(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run, store = tmp_path / "run", f"sqlite:///{tmp_path / 'store.db'}"
    finetune(run, 1, log="mlflow", log_uri=store)
    finetune(run, 2, resume=True)  # logs on: run.json keeps --log and --log-uri
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("edgetl")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resumed run continued the first one
    logged = runs[0]
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert logged.data.params["model"] == "timm/test_resnet"  # params as the run started (MLflow keeps them fixed)
    assert logged.data.tags["edgetl.status"] == "finished"
    expected = metrics(run)
    for name in ("val_top1", "train_loss", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(logged.info.run_id, name))
        assert [s for s, _ in history] == [1, 2]
        assert [v for _, v in history] == pytest.approx([row[name] for row in expected], rel=1e-5)  # metrics.csv rounds


def test_a_log_that_cannot_be_written_stops_finetune_before_training(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edgetl", "finetune", "--data", "digits", "--model", "timm/test_resnet",
                        "--weights", "none", "--img-size", "32", "--epochs", "1", "--workers", "0", "--quiet",
                        "--out", str(tmp_path / "run"), "--log", "mlflow", "--log-uri", "bogus://nowhere"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 2 and "--log mlflow: tracking store bogus://nowhere" in r.stderr
    assert not (tmp_path / "run" / "last.pt").exists()
