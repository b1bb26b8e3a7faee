"""Training-step throughput of Lite0 under each precision (fp32, AMP fp16 with GradScaler, AMP bf16),
memory format (NCHW, channels_last) and with or without torch.compile, side by side in one process.
The optimizer is fused AdamW, as in `edgetl finetune`; the ratio is against the first row printed
(fp32 NCHW eager by default).

    python benchmarks/amp_throughput.py --device cuda --img-size 224 --batch-size 64
    python benchmarks/amp_throughput.py --device cpu --img-size 64 --batch-size 32 --steps 20 --no-compile
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from edgetl.models import build


def steps_per_second(device: torch.device, dtype: torch.dtype | None, channels_last: bool, compiled: bool,
                     size: int, bs: int, steps: int) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build("efficientnet_lite0", 10, "imagenet").model.to(device).train().to(memory_format=fmt)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=fmt)
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
    ap.add_argument("--precisions", default="fp32,fp16,bf16", help="fp16 runs on CUDA only (CPU autocast fp16 is slow)")
    ap.add_argument("--formats", default="nchw,channels_last")
    args = ap.parse_args()
    device = torch.device(args.device)
    wanted = args.precisions.split(",")
    variants: list[tuple[str, torch.dtype | None]] = [("fp32", None)] if "fp32" in wanted else []
    if device.type == "cuda" and "fp16" in wanted:
        variants.append(("amp fp16", torch.float16))
    if "bf16" in wanted and (device.type == "cpu" or torch.cuda.is_bf16_supported()):
        variants.append(("amp bf16", torch.bfloat16))
    formats = [f == "channels_last" for f in args.formats.split(",")]
    print(f"{device}, {args.img_size} px, batch {args.batch_size}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'precision':<10} {'format':<14} {'compile':<8} {'img/s':>9} {'vs first row':>13}")
    base = None
    for name, dtype in variants:
        for channels_last in formats:
            for compiled in ([False] if args.no_compile else [False, True]):
                rate = args.batch_size * steps_per_second(device, dtype, channels_last, compiled, args.img_size,
                                                          args.batch_size, args.steps)
                base = base or rate
                fmt = "channels_last" if channels_last else "NCHW"
                print(f"{name:<10} {fmt:<14} {'yes' if compiled else 'no':<8} {rate:9.1f} {rate / base:12.2f}x",
                      flush=True)


if __name__ == "__main__":
    main()
