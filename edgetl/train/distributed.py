"""Data-parallel fine-tuning under `torchrun`: NCCL on GPUs, gloo on CPUs.

`torchrun --nproc_per_node N -m edgetl finetune ...` sets RANK/WORLD_SIZE/LOCAL_RANK; each process
trains on its shard with the global batch split between them, gradients are averaged by DDP,
metrics are summed across ranks, and only rank 0 writes files and draws progress.
`torchrun ... -m edgetl export RUN --int8 --qat` joins the same way; there rank 0 works alone first and
tells the others (`from_leader`) whether they train.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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


LEADER_WAIT = timedelta(hours=24)  # how long the others wait for rank 0's word: --qat auto runs PTQ first


def leader_group(d: Dist) -> Any:
    """A gloo group for rank 0's word to the others (CPU objects, also beside NCCL), with a wait long
    enough for the work rank 0 does alone before it speaks. Collective: every rank calls it."""
    return dist.new_group(backend="gloo", timeout=LEADER_WAIT)


def from_leader(group: Any, value: Any = None) -> Any:
    """Rank 0's ``value`` (any picklable object), on every rank; the others block until rank 0 sends it."""
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def all_sum(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (counts, confusion matrices, loss sums); identity without DDP."""
    if d.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
