"""Training throughput of edgetl's step under fp32, AMP fp16 (GradScaler) and AMP bf16, with and
without torch.compile, side by side in one process (for GPU machines; runs on CPU too, slowly).

    python benchmarks/amp_throughput.py --device cuda --img-size 224 --batch-size 64
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from edgetl.models import build


def steps_per_second(device: torch.device, dtype: torch.dtype | None, compiled: bool, size: int, bs: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build("efficientnet_lite0", 10, "imagenet").model.to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,), device=device)
    crit = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = crit(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):  # warm-up (and compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
        return steps / (start.elapsed_time(end) / 1000)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    variants = [("fp32", None), ("amp fp16", torch.float16)]
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        variants.append(("amp bf16", torch.bfloat16))
    base = None
    print(f"{'precision':<10} {'compile':<8} {'img/s':>9} {'vs fp32 eager':>14}")
    for name, dtype in variants:
        for compiled in ([False] if args.no_compile else [False, True]):
            rate = steps_per_second(device, dtype, compiled, args.img_size, args.batch_size, args.steps) * args.batch_size
            base = base or rate
            print(f"{name:<10} {'yes' if compiled else 'no':<8} {rate:9.1f} {rate / base:13.2f}x", flush=True)


if __name__ == "__main__":
    main()
