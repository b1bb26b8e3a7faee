"""What `edgetl auto` is asked to search (`AutoConfig`, validated once). Torch-free: `--help` reads it."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import limits
from ..choices import AutoTarget, CacheMode
from ..errors import UsageError
from ..limits import Range
from ..options import check_fields, option

SEARCH, TARGET, OUTPUT = "Search", "Target", "Output"
STRATEGIES = ("head", "partial1", "partial2", "full")  # partial N: the last N stages and the head
OFFLINE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")  # models.BUNDLED_WEIGHTS (tested)
OFFLINE = "offline"  # --models default: OFFLINE_MODELS and whatever cached weights `auto` finds (auto.search)


@dataclass
class AutoConfig:
    data: str = option("digits", "ImageFolder root (train/ + val/, or one folder with --val-split), or 'digits'.",
                       SEARCH, metavar="PATH")
    out: str | None = option(None, "Search folder: trials/, auto.json, pareto.png, the winner run in winner/ "
                             "(default runs/auto-<data>).", OUTPUT, metavar="DIR")
    models: str = option(OFFLINE, "Candidate models, comma-separated, or 'offline': the bundled EfficientNet-Lite0/1/2 "
                         "and every model `edgetl models` lists whose ImageNet weights are cached here (torch hub, "
                         "Hugging Face cache), found when the search starts.", SEARCH, metavar="A,B")
    weights: str = option("imagenet", "Starting weights of every candidate: imagenet or none.", SEARCH,
                          metavar="WEIGHTS")
    strategies: str = option(",".join(STRATEGIES), "Fine-tuning strategies to try (partialN: the last N stages).",
                             SEARCH, metavar="A,B")
    img_sizes: str = option("96,128,160", "Input sizes to try, in px.", SEARCH, metavar="N,M")
    lr_min: float = option(3e-4, "Smallest peak learning rate tried (log-uniform up to --lr-max).", SEARCH,
                           legal=limits.POSITIVE)
    lr_max: float = option(3e-3, "Largest peak learning rate tried.", SEARCH, legal=limits.POSITIVE)
    epochs: int = option(3, "Epochs of a trial that survives every pruning round (cheap trials stop after one).",
                         SEARCH, legal=Range(1, 1000))
    trials: int | None = option(None, "Most trials to run (default: as many as --time-budget allows).", SEARCH,
                                legal=limits.COUNT)
    time_budget: str = option("20m", "Wall-clock limit of the search and the finalists' export and timing, e.g. "
                              "90s, 15m, 1h.", SEARCH, metavar="TIME")
    finalists: int = option(3, "Best trials exported to --target and timed (with --max-latency-ms: that many within "
                            "the limit; a model already over it at a smaller size is not exported again).", TARGET,
                            legal=Range(1, 50))
    target: str = option("ort-int8", "What the finalists are timed as: the INT8 CPU artifact (ort-int8) or FP32 "
                         "ONNX (ort-fp32) on ONNX Runtime here, or a TensorRT engine (trt-int8, trt-fp16) built and "
                         "timed here; where TensorRT cannot run, trt-* finalists are ranked by top-1 with GFLOPs per "
                         "image as the stated latency proxy.", TARGET, choices=AutoTarget)
    max_latency_ms: float | None = option(None, "Finalists slower than this (p50, batch --batch-size-deploy) are "
                                          "out.", TARGET, legal=limits.POSITIVE)
    batch_size_deploy: int = option(1, "Batch size the finalists are timed at.", TARGET, legal=limits.BATCH)
    max_drop: float = option(0.5, "With --target ort-int8: the INT8 export's accuracy budget (as export "
                             "--max-drop).", TARGET, legal=limits.POINTS)
    batch_size: int = option(64, "Training images per step.", SEARCH, legal=limits.BATCH)
    val_split: float | None = option(None, "Hold out this stratified fraction for validation (default 0.2 when "
                                     "there is no val/).", SEARCH, legal=limits.FRACTION_OPEN)
    cache: str = option("auto", "Training data cache, as finetune --cache.", SEARCH, choices=CacheMode)
    workers: int | None = option(None, "DataLoader workers, as finetune --workers.", SEARCH, legal=limits.WORKERS)
    seed: int = option(0, "Seed of the sampler and of every trial.", SEARCH, legal=limits.SEED)

    def validate(self) -> AutoConfig:
        check_fields(self)
        if self.lr_min > self.lr_max:
            raise UsageError(f"--lr-min {self.lr_min:g} is above --lr-max {self.lr_max:g}")
        if self.weights not in ("imagenet", "none"):
            raise UsageError("--weights must be imagenet or none")
        bad = [s for s in self.strategy_list if s not in ("head", "full") and not re.fullmatch(r"partial[1-9]\d*", s)]
        if bad or not self.strategy_list:
            raise UsageError(f"--strategies: {', '.join(bad) or '(empty)'} unknown; use head, full or partialN")
        if not self.model_list:
            raise UsageError("--models: give at least one model")
        self.size_list  # raises on a bad list
        self.budget_seconds  # raises on a bad duration
        return self

    @property
    def model_list(self) -> list[str]:
        """The models named, or ``["offline"]``, which the search resolves (it needs torch to look)."""
        return [m.strip() for m in self.models.split(",") if m.strip()]

    @property
    def strategy_list(self) -> list[str]:
        return [m.strip() for m in self.strategies.split(",") if m.strip()]

    @property
    def size_list(self) -> list[int]:
        try:
            sizes = sorted({int(v) for v in self.img_sizes.split(",") if v.strip()})
        except ValueError:
            raise UsageError(f"--img-sizes: {self.img_sizes!r} is not a comma-separated list of integers") from None
        if not sizes or not all(16 <= v <= limits.MAX_SIZE for v in sizes):
            raise UsageError(f"--img-sizes: each between 16 and {limits.MAX_SIZE} px")
        return sizes

    @property
    def budget_seconds(self) -> float:
        return parse_duration(self.time_budget)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"auto-{Path(self.data).name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1.5h`` or plain seconds → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--time-budget: {text!r} is not a duration like 90s, 15m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
