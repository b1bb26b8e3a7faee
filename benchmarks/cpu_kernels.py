"""Lite0's CPU training step: PyTorch's own convolutions against edgetl's `FastConvs`, and glibc's
default allocator behaviour against `retain_freed_memory`.

    python benchmarks/cpu_kernels.py --img-size 64 --batch-size 32
    python benchmarks/cpu_kernels.py --img-size 224 --batch-size 32 --allocator --pairs 3

Kernels: two copies of the same model and optimizer (fp32, channels_last, fused AdamW) take turns,
a round of steps each, many rounds, so both meet the same machine. Allocator: glibc's settings
cannot be put back exactly once changed, so each side runs in its own fresh process, the two
alternating, ``--pairs`` times; both use edgetl's kernels. Prints the fastest and the median
round per step, page faults per step, and the ratio. `edgetl.train.cpu_kernels` says what each changes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
from torch import nn

from edgetl.train.cpu_kernels import FastConvs, retain_freed_memory
from edgetl.models import apply_strategy, build, set_train_mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=4, help="steps per round")
    ap.add_argument("--allocator", action="store_true", help="compare the allocator settings instead of the kernels")
    ap.add_argument("--pairs", type=int, default=3, help="with --allocator: processes per side")
    ap.add_argument("--child", choices=["default", "retained"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        with retain_freed_memory() if args.child == "retained" else nullcontext():
            print(json.dumps(_rounds(args, {args.child: _loop(*_batch(args), fast=True)})[args.child]))
        return
    if args.allocator:
        _allocators(args)
        return
    loops = {"PyTorch convolutions": _loop(*_batch(args), fast=False), "edgetl FastConvs": _loop(*_batch(args), fast=True)}
    ms = {k: [r["ms"] for r in v] for k, v in _rounds(args, loops).items()}
    print(f"Lite0 train step, {args.img_size} px, batch {args.batch_size}, fp32 channels_last, {torch.get_num_threads()} "
          f"threads, {args.rounds} alternating rounds of {args.steps} steps")
    _report(ms, "PyTorch convolutions")


def _allocators(args: argparse.Namespace) -> None:
    ms: dict[str, list[float]] = {"default": [], "retained": []}
    faults: dict[str, list[float]] = {"default": [], "retained": []}
    for _ in range(args.pairs):
        for side in ms:
            cmd = [sys.executable, __file__, "--child", side, "--img-size", str(args.img_size), "--batch-size",
                   str(args.batch_size), "--rounds", str(args.rounds), "--steps", str(args.steps)]
            rounds = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            ms[side].append(min(r["ms"] for r in rounds))
            faults[side].append(statistics.median(r["faults"] for r in rounds))
    print(f"Lite0 train step with FastConvs, {args.img_size} px, batch {args.batch_size}, {args.pairs} alternating "
          f"processes per side, fastest of {args.rounds} rounds of {args.steps} steps in each")
    for side in ms:
        print(f"{side:9} page faults a step {statistics.median(faults[side]):9.0f}  per process: "
              + " ".join(f"{v:.1f}" for v in ms[side]) + " ms")
    _report(ms, "default")


def _report(ms: dict[str, list[float]], base_name: str) -> None:
    base = ms[base_name]
    for name, v in ms.items():
        print(f"{name:22} fastest {min(v):7.1f} ms  median {statistics.median(v):7.1f} ms  "
              f"speed-up {min(base) / min(v):.2f}x (fastest) {statistics.median(base) / statistics.median(v):.2f}x (median)")


def _batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (args.batch_size,))


def _rounds(args: argparse.Namespace, loops: dict) -> dict[str, list[dict[str, float]]]:
    """Per loop and round: milliseconds and minor page faults per step."""
    out: dict[str, list[dict[str, float]]] = {k: [] for k in loops}
    for _ in range(args.rounds):
        for name, step in loops.items():
            step()  # one untimed step: the other loop ran last
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            for _ in range(args.steps):
                step()
            out[name].append({"ms": (time.perf_counter() - t0) / args.steps * 1000,
                              "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / args.steps})
    return out


def _loop(x: torch.Tensor, y: torch.Tensor, fast: bool):
    torch.manual_seed(0)
    b = build("efficientnet_lite0", 10, "imagenet")
    model = b.model.to(memory_format=torch.channels_last)
    apply_strategy(model, b.head, "full")
    set_train_mode(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)

    convs = FastConvs() if fast else nullcontext()

    def step() -> None:
        with convs:
            out = model(x)
        loss = crit(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


if __name__ == "__main__":
    main()
