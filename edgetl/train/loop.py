"""`edgetl finetune`: transfer learning with the source article's three strategies.

Every epoch ends with an atomic last.pt (model, optimizer, scheduler, scaler), metrics.csv
and run.json, written as one unit that SIGINT/SIGTERM wait for, so a run stopped or killed at
any point resumes from its last complete epoch (curves.png, drawn after them when matplotlib is
installed, is a picture of metrics.csv and not needed to resume). Each epoch's randomness (shuffling,
augmentation, dropout) is seeded from (seed, epoch), which is what makes a resumed run equal
to an uninterrupted one. Weights that stopped being finite are never saved.

About 400 lines because setup, the epoch loop, validation, early stop and signal handling share
one run's state; the files a run writes and reads back live in `train.checkpoint`.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import plots
from ..data.check import DataReport, check_data
from ..data.feed import CachedFeed, FeatureFeed, Feed, LoaderFeed, epoch_seed
from ..data.sources import BUILTIN_SOURCES, DataSet, load_data
from ..errors import Interrupted, TrainingError, UsageError
from ..fileio import atomic_write_json, folder_lock
from ..images import Preprocess
from ..metrics import EvalResult, Scorer
from ..models import apply_strategy, build, set_train_mode
from . import cpu_kernels as cputrain
from . import logs
from .checkpoint import (
    amp_name,
    best_payload,
    last_payload,
    remove_stale_temporaries,
    restore,
    run_record,
    save_checkpoint,
    with_metrics,
    write_metrics,
)
from .config import TrainConfig
from .distributed import Dist, all_sum
from .distributed import setup as setup_dist
from .distributed import teardown as teardown_dist

CHECK_MODES = ("skip", "strict", "off")  # bad files: skip and list them | refuse the data | do not check


class Hooks:
    """Progress callbacks; the CLI draws them, the library stays silent."""

    def data_checked(self, report: DataReport) -> None: ...
    def start(self, cfg: TrainConfig, data: DataSet, pp: Preprocess, device: str, amp: str | None) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, loss: float, top1: float, images_per_s: float) -> None: ...
    def validating(self, steps: int) -> None: ...
    def preparing(self, what: str, steps: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def epoch_end(self, row: dict[str, float]) -> None: ...


@dataclass
class Summary:
    run: str
    status: str
    epochs: int
    best_epoch: int
    val_top1: float
    val_top5: float
    history: list[dict[str, float]] = field(default_factory=list)


Prepare = Callable[[nn.Module, Preprocess, torch.device, Hooks], nn.Module]


def finetune(cfg: TrainConfig, resume: bool = False, hooks: Hooks | None = None, check: str = "skip",
             prepare: Prepare | None = None) -> Summary:
    """Train per ``cfg`` into ``cfg.out``; with ``resume`` continue from ``cfg.out/last.pt``.

    ``check`` runs `check_data` on an ImageFolder first: ``skip`` leaves bad files out (listed in
    ``data_check.json``), ``strict`` refuses the data on any finding, ``off`` trusts it. ``prepare``
    turns the built model into the one to train before the strategy applies (quantization-aware
    training fake-quantizes it); on resume it runs again, and last.pt then restores its state.
    """
    cfg.validate()
    if check not in CHECK_MODES:
        raise UsageError(f"check must be one of {', '.join(CHECK_MODES)}")
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 holds the run folder for all ranks
        return _finetune(cfg, resume, hooks, check, prepare)
    with folder_lock(Path(cfg.out), "finetune"):
        return _finetune(cfg, resume, hooks, check, prepare)


def _finetune(cfg: TrainConfig, resume: bool, hooks: Hooks | None, check: str, prepare: Prepare | None) -> Summary:
    hooks = hooks or Hooks()
    out = Path(cfg.out)
    if not resume and (out / "last.pt").exists():
        raise UsageError(f"{out}: already holds a run; pass --resume {out} to continue it, or another --out")
    logs.require(cfg.log)
    device = pick_device(cfg.device)
    report = None
    if check != "off" and cfg.data not in BUILTIN_SOURCES:
        report = check_data(Path(cfg.data), val_split=cfg.val_split)
        report.raise_for(strict=check == "strict")
        hooks.data_checked(report)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.val_split, cfg.seed, report.skipped if report else ())
    built = build(cfg.model, len(data.classes), cfg.weights)
    model, head = built.model, built.head
    pp = built.preprocess.with_size(cfg.img_size) if cfg.img_size else built.preprocess
    d = setup_dist(device.type)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    if prepare is not None:
        model = prepare(model, pp, device, hooks)
    trainable = apply_strategy(model, head, cfg.strategy, cfg.unfreeze)
    if not d.main:
        hooks = Hooks()  # only rank 0 draws progress and writes files
    channels_last = cfg.channels_last
    model.to(device)
    if channels_last:  # GPUs and oneDNN on CPUs: Lite0 train steps about 1.7x faster than NCHW (RESULTS.md)
        model.to(memory_format=torch.channels_last)
    amp_dtype = _amp_dtype(cfg.amp, device)
    hflip = data.hflip if cfg.hflip is None else cfg.hflip
    hooks.start(cfg, data, pp, str(device), amp_name(amp_dtype))
    feed, net = _feed(cfg, data, pp, model, head, d, device, amp_dtype, channels_last, hflip, hooks)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if channels_last:
            _plain_strides_for_1x1(model)
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    steps_per_epoch = max(1, feed.train(1)[0])
    opt = _optimizer(model, cfg, head, set(trainable))
    sched = _scheduler(opt, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    state = {"epoch": 0, "best_top1": -1.0, "best_top5": 0.0, "best_epoch": 0, "stale": 0}
    history: list[dict[str, float]] = []
    if resume:
        state, history = restore(out, model, opt, sched, scaler, device)
        if d.main:
            remove_stale_temporaries(out)

    run = run_record(cfg, data, pp, head, str(device), amp_dtype, len(trainable), report)
    run["world_size"] = d.world
    run["input_pipeline"] = type(feed).__name__
    if report is not None and d.main:
        atomic_write_json(out / "data_check.json", report.to_dict())
    status = "running"
    log = logs.open_log(cfg, out) if d.main else None
    convs = cputrain.FastConvs() if cputrain.applies(device, channels_last, amp_dtype, cfg.compile) else nullcontext()
    memory = cputrain.retain_freed_memory() if device.type == "cpu" else nullcontext()
    trainer = _Trainer(model, net, criterion, opt, sched, scaler, cfg, device, amp_dtype, hooks, d, channels_last,
                       convs)
    with Signals() as sig, memory:
        try:
            for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
                t0 = time.perf_counter()
                torch.manual_seed(epoch_seed(cfg.seed, epoch))
                steps, batches = feed.train(epoch)
                hooks.epoch_start(epoch, cfg.epochs, steps)
                tr_loss, tr_top1, n_img = trainer.epoch(batches, epoch, state["epoch"])
                val_steps, val_batches = feed.val()
                hooks.validating(val_steps)
                with np.errstate(invalid="ignore", over="ignore"):  # non-finite logits are judged just below
                    ev = evaluate_batches(net, val_batches, device, len(data.classes), amp_dtype, channels_last, d)
                finite = _finite(model)
                if not (finite and math.isfinite(ev.loss)):
                    what = f"validation loss {ev.loss}" if finite else "non-finite weights"
                    raise TrainingError(f"epoch {epoch} ended with {what}, not saved; {_kept(state['epoch'])}; "
                                        "lower --lr or enable --clip-grad")
                secs = time.perf_counter() - t0
                row = {"epoch": epoch, "train_loss": tr_loss, "train_top1": tr_top1, "val_loss": ev.loss,
                       "val_top1": ev.top1, "val_top5": ev.top5, "lr": opt.param_groups[-1]["lr"],
                       "seconds": secs, "images_per_s": n_img / secs}
                with sig.deferred():  # the epoch's files are one unit: a signal waits until all are written
                    history.append(row)
                    state["epoch"] = epoch
                    improved = ev.top1 > state["best_top1"]
                    if improved:
                        state.update(best_top1=ev.top1, best_top5=ev.top5, best_epoch=epoch, stale=0)
                    else:
                        state["stale"] += 1
                    stop = bool(cfg.early_stop and state["stale"] >= cfg.early_stop)
                    status = "early_stopped" if stop else "running"
                    if d.main:
                        if improved:
                            save_checkpoint(out / "best.pt", best_payload(model, cfg, data, pp, epoch, ev.top1))
                        save_checkpoint(out / "last.pt", last_payload(model, opt, sched, scaler, cfg, data, state))
                        write_metrics(out, history)
                        atomic_write_json(out / "run.json", with_metrics(run, state, status))
                # Deferred too: matplotlib (its first import catches `Exception` around mplot3d), TensorBoard
                # and MLflow would swallow an Interrupted raised inside them, and the run would go on.
                with sig.deferred():
                    if d.main and plots.available():  # a picture of what metrics.csv holds; not needed to resume
                        plots.training_curves(history, state["best_epoch"], out / "curves.png")
                    if log is not None:
                        log.epoch(row)
                hooks.epoch_end(row)
                if stop:
                    break
            else:
                status = "finished"
                if d.main:
                    atomic_write_json(out / "run.json", with_metrics(run, state, status))
        except Interrupted:
            sig.ignore()  # a second Ctrl-C must not cut the last write short
            status = "interrupted"
            if d.main and (out / "last.pt").exists():
                atomic_write_json(out / "run.json", with_metrics(run, state, status))
            raise
        except TrainingError as e:
            status = "failed"
            if d.main and (out / "last.pt").exists():
                atomic_write_json(out / "run.json", {**with_metrics(run, state, status), "error": str(e)})
            raise
        finally:
            if log is not None:
                log.close(status)
            teardown_dist(d)
    return Summary(str(out), status, state["epoch"], state["best_epoch"], state["best_top1"], state["best_top5"], history)


def _feed(cfg: TrainConfig, data: DataSet, pp: Preprocess, model: nn.Module, head: str, d: Dist,
          device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool, hflip: bool,
          hooks: Hooks) -> tuple[Feed, nn.Module]:
    """The input pipeline for this run, and the module the loop calls (the head alone on features)."""
    bs = max(1, cfg.batch_size // d.world)  # the global batch is split between ranks
    images: LoaderFeed | CachedFeed
    if cfg.cache == "off":
        images = LoaderFeed(data, pp, bs, hflip, cfg.trivial_augment, _workers(cfg), cfg.seed, d, device.type == "cuda")
    else:
        hooks.preparing("decoding images into the cache", len(data.train) + len(data.val))
        images = CachedFeed(data, pp, bs, hflip, cfg.trivial_augment, cfg.seed, d, device, cfg.cache, hooks.advance)
    if cfg.strategy == "head" and cfg.feature_cache:
        def progress(what: str, steps: int) -> Any:
            hooks.preparing(what, steps)
            return lambda n: hooks.advance()

        feats = FeatureFeed(images, model, head, cfg.feature_views, cfg.seed, bs, device, amp_dtype, channels_last, progress)
        return feats, model.get_submodule(head)
    return images, model


@dataclass
class _Trainer:
    """What every training step uses, fixed for the run; `epoch` runs one pass over ``batches``."""

    model: nn.Module
    net: nn.Module  # the model as called: DDP- or torch.compile-wrapped, or the head over cached features
    criterion: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    cfg: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    hooks: Hooks
    d: Dist
    channels_last: bool
    convs: AbstractContextManager

    def epoch(self, batches: Any, epoch: int, saved: int) -> tuple[float, float, int]:
        """(mean loss, top-1 %, images) over all ranks; ``saved`` is the last epoch on disk, for the message
        when the loss stops being finite."""
        model, net, opt, scaler = self.model, self.net, self.opt, self.scaler
        cfg, device, d = self.cfg, self.device, self.d
        set_train_mode(model)
        params = [p for p in model.parameters() if p.requires_grad]
        loss_sum, correct, n, t0 = 0.0, 0, 0, time.perf_counter()
        for step, (x, y) in enumerate(batches):
            x, y = _to(x, y, device, self.channels_last)
            with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                with self.convs:  # cputrain.FastConvs where it applies, entered once per forward
                    logits = net(x)
                loss = self.criterion(logits.float(), y)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch}, step {step}; "
                                    f"{_kept(saved)}; lower --lr or enable --clip-grad")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            scaler.step(opt)
            scaler.update()
            self.sched.step()
            bs = y.shape[0]
            loss_sum += loss.item() * bs
            correct += int((logits.argmax(1) == y).sum())
            n += bs
            self.hooks.step(loss_sum / n, 100.0 * correct / n, n * d.world / (time.perf_counter() - t0))
        totals = all_sum(d, torch.tensor([loss_sum, float(correct), float(n)], dtype=torch.float64))
        loss_sum, correct, n = float(totals[0]), float(totals[1]), int(totals[2])
        return loss_sum / max(n, 1), 100.0 * correct / max(n, 1), n


@torch.no_grad()
def evaluate_batches(net: nn.Module, batches: Any, device: torch.device, num_classes: int,
                     amp_dtype: torch.dtype | None = None, channels_last: bool = False, d: Dist | None = None) -> EvalResult:
    """Top-1/top-5 (percent), mean cross-entropy and the confusion matrix, summed over ranks."""
    net.eval()
    scorer = Scorer(num_classes)
    for x, y in batches:
        x, y = _to(x, y, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = net(x).float()
        scorer.update(logits.cpu().numpy(), y.cpu().numpy())
    if d is not None and d.enabled:
        scorer.merge(all_sum(d, torch.from_numpy(scorer.state())).numpy())
    return scorer.result()


def evaluate_loader(model: nn.Module, loader: Any, device: torch.device, num_classes: int,
                    amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> EvalResult:
    """`evaluate_batches` for a DataLoader of images (what `edgetl eval` uses)."""
    return evaluate_batches(model, loader, device, num_classes, amp_dtype, channels_last)


def _to(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.as_tensor(y).to(device, non_blocking=True)


def _plain_strides_for_1x1(model: nn.Module) -> None:
    """1x1 conv weights with contiguous strides. channels_last gives them strides (C, 1, C, C), the same
    memory as (C, 1, 1, 1), but their gradients come back with the latter, and DDP's reducer, which lays
    its buckets out by the parameters' strides, would copy each one and warn ("Grad strides do not match
    bucket view strides") on every rank."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[2:] == (1, 1):
            p.data = p.data.clone(memory_format=torch.contiguous_format)


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


def _kept(saved_epoch: int) -> str:
    return f"last.pt and best.pt keep epoch {saved_epoch} and earlier" if saved_epoch else "no checkpoint was written"


def pick_device(name: str) -> torch.device:
    """--device as a torch.device: auto is CUDA where PyTorch sees a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to PyTorch here; use --device cpu")
    return torch.device(name)


def _amp_dtype(amp: bool | None, device: torch.device) -> torch.dtype | None:
    """fp16 (with GradScaler) or bf16 on CUDA by default; on CPU only when asked, as bf16."""
    if amp is False or (amp is None and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def _workers(cfg: TrainConfig) -> int:
    if cfg.workers is not None:
        return cfg.workers
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def _optimizer(model: nn.Module, cfg: TrainConfig, head: str, trainable: set[str]) -> torch.optim.Optimizer:
    """Four groups: (backbone|head) x (decay|no decay); norms and biases (ndim <= 1) get no weight decay."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for n, p in model.named_parameters():
        if n in trainable:
            groups.setdefault((n.startswith(head + "."), p.ndim > 1), []).append(p)
    lr = cfg.base_lr
    param_groups = [
        {"params": ps, "lr": lr * (1.0 if is_head else cfg.backbone_lr_scale),
         "weight_decay": cfg.weight_decay if decay else 0.0}
        for (is_head, decay), ps in sorted(groups.items())
    ]
    # One fused kernel for all parameters instead of a Python loop over tensors (RESULTS.md: 3x on CPU).
    fused = all(p.device.type in ("cpu", "cuda") for g in param_groups for p in g["params"])
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, nesterov=True, fused=fused)
    return torch.optim.AdamW(param_groups, lr=lr, fused=fused)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up (capped at a fifth of training), then cosine decay to zero, stepped per batch."""
    total = cfg.epochs * steps_per_epoch
    warm = min(int(cfg.warmup_epochs * steps_per_epoch), total // 5)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class Signals:
    """SIGINT/SIGTERM become ``Interrupted``, except inside ``deferred()``, which finishes first.

    Outside the main thread signals are left alone (Python only delivers them there).
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self.depth = 0
        self.ignoring = False
        self.old: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        try:
            self.old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:
            self.old = {}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)

    def _handler(self, signum: int, _frame: Any) -> None:
        if self.ignoring:
            return
        if self.depth:
            self.pending = self.pending or signum
            return
        raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None:
            signum, self.pending = self.pending, None
            raise Interrupted(signum)

    def ignore(self) -> None:
        """Already stopping: later signals change nothing."""
        self.ignoring = True
