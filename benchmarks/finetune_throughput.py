"""edgetl's fine-tuning loop against the plain PyTorch recipe, side by side in one process.

    python benchmarks/finetune_throughput.py --data ../shared/datasets/cifar10-mini --per-class 100 --epochs 3

Reference (the source article's recipe in PyTorch): torchvision ImageFolder, PIL transforms
(RandomResizedCrop, flip, ToTensor, Normalize), NCHW fp32 eager, a DataLoader with default
settings. edgetl: `edgetl.train.loop.finetune` with its defaults (decode cache, batched tensor
augmentation; cached features for --strategy head). Same images, model, initial weights, batch
size, image size, optimizer, schedule and number of epochs; both report wall time per epoch
(training + validation) and validation top-1.

The two loops take turns epoch by epoch (edgetl's epoch, then the reference's), so that both
meet the same machine: on a shared VM, speed drifts by 20% within minutes. The reference's
epochs therefore run inside `edgetl.train.loop.finetune`, under the same allocator setting as
edgetl's (`edgetl.train.cpu_kernels.retain_freed_memory`).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

from edgetl.train.config import TrainConfig
from edgetl.models import apply_strategy, build, set_train_mode
from edgetl.train.loop import Hooks, finetune


def subset(src: Path, dst: Path, per_class: int) -> Path:
    for split in ("train", "val"):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            (dst / split / cls.name).mkdir(parents=True)
            files = sorted(cls.iterdir())
            for f in files[: per_class if split == "train" else len(files)]:
                shutil.copy(f, dst / split / cls.name / f.name)
    return dst


def reference(data: Path, strategy: str, epochs: int, bs: int, size: int, lr: float, seed: int) -> Iterator[tuple[float, float]]:
    """The plain loop; yields (seconds, val top-1) after each epoch."""
    torch.manual_seed(seed)
    b = build("efficientnet_lite0", 10, "imagenet")
    model, pp = b.model, b.preprocess.with_size(size)
    apply_strategy(model, b.head, strategy)
    interp = transforms.InterpolationMode.BICUBIC
    norm = transforms.Normalize(pp.mean, pp.std)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=interp),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    val_tf = transforms.Compose([transforms.Resize(pp.resize, interpolation=interp), transforms.CenterCrop(size),
                                 transforms.ToTensor(), norm])
    train = torch.utils.data.DataLoader(datasets.ImageFolder(str(data / "train"), train_tf), batch_size=bs,
                                        shuffle=True, drop_last=True)
    val = torch.utils.data.DataLoader(datasets.ImageFolder(str(data / "val"), val_tf), batch_size=bs)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=lr)
    total, warm = epochs * len(train), min(len(train), epochs * len(train) // 5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    for epoch in range(epochs):
        torch.manual_seed(seed * 1000 + epoch)  # edgetl reseeds the global generator between turns
        t0 = time.perf_counter()
        set_train_mode(model)
        for x, y in train:
            loss = crit(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in val:
                correct += int((model(x).argmax(1) == y).sum())
                n += len(y)
        yield time.perf_counter() - t0, 100.0 * correct / n


@dataclass
class Side:
    rows: list[tuple[float, float]]  # (seconds, val top-1) per epoch
    total: float  # the whole run: model build, one-off set-up, epochs

    @property
    def setup(self) -> float:
        return self.total - sum(r[0] for r in self.rows)


class Turns(Hooks):
    """Runs one reference epoch after each of edgetl's epochs; its time (the first turn includes the
    reference's model build) is kept apart from edgetl's."""

    def __init__(self, ref: Iterator[tuple[float, float]]) -> None:
        self.ref, self.side = ref, Side([], 0.0)

    def epoch_end(self, row: dict[str, float]) -> None:
        t0 = time.perf_counter()
        self.side.rows.append(next(self.ref))
        self.side.total += time.perf_counter() - t0


def side_by_side(data: Path, strategy: str, epochs: int, bs: int, size: int, lr: float, seed: int,
                 work: Path) -> tuple[Side, Side]:
    """The reference's run and edgetl's (which includes the decode cache and, for head, the features)."""
    turns = Turns(reference(data, strategy, epochs, bs, size, lr, seed))
    t0 = time.perf_counter()
    s = finetune(TrainConfig(data=str(data), out=str(work / f"run-{strategy}-{seed}"), strategy=strategy, epochs=epochs,
                             batch_size=bs, img_size=size, lr=lr, hflip=True, seed=seed), hooks=turns, check="off")
    mine = Side([(r["seconds"], r["val_top1"]) for r in s.history], time.perf_counter() - t0 - turns.side.total)
    return turns.side, mine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/cifar10-mini"))
    ap.add_argument("--per-class", type=int, default=100, help="training images per class (val: all)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--strategies", default="full,head")
    ap.add_argument("--seeds", type=int, default=1, help="repeat both loops with seeds 0..N-1: accuracy at this size "
                    "moves by a point or two from seed to seed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(args.data, Path(tmp) / "data", args.per_class)
        for strategy in args.strategies.split(","):
            runs = [side_by_side(data, strategy, args.epochs, args.batch_size, args.img_size, args.lr, seed, Path(tmp))
                    for seed in range(args.seeds)]
            report(strategy, args, [r for r, _ in runs], [m for _, m in runs])


def report(strategy: str, args: argparse.Namespace, refs: list[Side], mines: list[Side]) -> None:
    print(f"\nstrategy {strategy}: {args.per_class * 10} train images, {args.img_size} px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads; set-up outside the epochs: reference "
          f"{statistics.mean(r.setup for r in refs):.1f}s (model build), edgetl {statistics.mean(m.setup for m in mines):.1f}s "
          f"(model build, decode cache{', features' if strategy == 'head' else ''}, checkpoint writes)")
    print(f"{'seed':>4} {'epoch':>5} {'reference s':>12} {'edgetl s':>9} {'speed-up':>9} {'ref top-1':>10} {'edgetl top-1':>13}")
    for seed, (ref, mine) in enumerate(zip(refs, mines)):
        for i, ((rs, ra), (ms, ma)) in enumerate(zip(ref.rows, mine.rows), 1):
            print(f"{seed:>4} {i:>5} {rs:12.1f} {ms:9.1f} {rs / ms:8.1f}x {ra:10.1f} {ma:13.1f}")
    later = slice(1, None) if args.epochs > 1 else slice(None)
    r_t = sum(r[0] for ref in refs for r in ref.rows[later])
    m_t = sum(m[0] for mine in mines for m in mine.rows[later])
    whole = sum(r.total for r in refs) / sum(m.total for m in mines)
    ref_acc, my_acc = [ref.rows[-1][1] for ref in refs], [mine.rows[-1][1] for mine in mines]
    spread = (lambda v: f" ± {statistics.stdev(v):.1f}") if len(refs) > 1 else (lambda v: "")
    print(f"epochs after the first: {r_t / m_t:.1f}x; whole run incl. set-up: {whole:.2f}x; final top-1 "
          f"reference {statistics.mean(ref_acc):.1f}{spread(ref_acc)}, edgetl {statistics.mean(my_acc):.1f}"
          f"{spread(my_acc)}: Δ {statistics.mean(my_acc) - statistics.mean(ref_acc):+.1f} points "
          f"(mean over {len(refs)} seed(s))")


if __name__ == "__main__":
    main()
