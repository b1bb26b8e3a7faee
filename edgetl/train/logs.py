"""`finetune --log`: experiment logs where people already look.

``tensorboard`` writes event files into RUN/tensorboard (``tensorboard --logdir runs`` shows every run);
``mlflow`` logs to an MLflow tracking store, by default a SQLite file in the working directory, the one
``mlflow ui`` opens (MLflow 3 retired the plain ``./mlruns`` folder store). Both mirror metrics.csv, one
step per epoch under its column names, plus the run's configuration. A resumed run goes on logging into
the same place: TensorBoard appends to the folder, MLflow continues the run whose id RUN/mlflow.json
keeps. The libraries are optional extras, imported only here and only when asked for; a missing one
stops `finetune` before any work, with the install command.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Protocol

from .. import extras
from ..errors import UsageError
from ..fileio import atomic_write_json
from .config import TrainConfig

EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # --log -> the package it imports
MLFLOW_EXPERIMENT = "edgetl"
MLFLOW_RECORD = "mlflow.json"


class ExperimentLog(Protocol):
    def epoch(self, row: dict[str, float]) -> None: ...
    def close(self, status: str) -> None: ...


def require(kind: str) -> None:
    """UsageError (exit 2) when ``--log kind`` cannot work here."""
    if kind != "none":
        extras.require(EXTRAS[kind], kind, f"--log {kind}")


def open_log(cfg: TrainConfig, out: Path) -> ExperimentLog | None:
    if cfg.log == "tensorboard":
        return _TensorBoard(cfg, out)
    if cfg.log == "mlflow":
        return _MLflow(cfg, out)
    return None


class _TensorBoard:
    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(cfg.to_dict(), indent=2) + "\n```")

    def epoch(self, row: dict[str, float]) -> None:
        for name, value in row.items():
            if name != "epoch":
                self.writer.add_scalar(name, value, int(row["epoch"]))
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


class _MLflow:
    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        for name in ("mlflow", "alembic"):  # their INFO lines about creating tables would interleave the progress
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        record = out / MLFLOW_RECORD
        uri = cfg.log_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
        try:
            if record.exists():  # resuming: continue the run it logged into
                kept = json.loads(record.read_text())
                uri, self.run_id = kept["tracking_uri"], kept["run_id"]
                self.client = MlflowClient(tracking_uri=uri)
                self.client.update_run(self.run_id, status="RUNNING")
                return
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(MLFLOW_EXPERIMENT)
            run = self.client.create_run(experiment_id, run_name=out.name,
                                         tags={"edgetl.run_folder": str(out.resolve())})
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in cfg.to_dict().items()])
        except Exception as e:  # an unreachable server, a locked database, a bad URI
            raise UsageError(f"--log mlflow: tracking store {uri}: {type(e).__name__}: {e}") from None
        atomic_write_json(record, {"tracking_uri": uri, "run_id": self.run_id})

    def epoch(self, row: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in row.items()
                                                    if k != "epoch"])

    def close(self, status: str) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag("edgetl.status", status)])
        self.client.set_terminated(self.run_id, {"finished": "FINISHED", "early_stopped": "FINISHED",
                                                 "interrupted": "KILLED"}.get(status, "FAILED"))
