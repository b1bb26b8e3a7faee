"""Data-parallel fine-tuning under `torchrun`: NCCL on GPUs, gloo on CPUs.

`torchrun --nproc_per_node N -m edgetl finetune ...` sets RANK/WORLD_SIZE/LOCAL_RANK; each process
trains on its shard with the global batch split between them, gradients are averaged by DDP,
metrics are summed across ranks, and only rank 0 writes files and draws progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> Dist:
    """Join the process group torchrun describes; a plain run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(d.local_rank)
    return d


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (counts, confusion matrices, loss sums); identity without DDP."""
    if d.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
