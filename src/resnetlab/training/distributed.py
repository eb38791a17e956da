"""Many processes through PyTorch's own engine: `torchrun --nproc_per_node=N -m resnetlab train ...` (NCCL on
GPUs, gloo on CPU). Each rank trains on its slice of the global batch; only rank 0 writes the run directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from resnetlab.settings.device import resolve_device


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init_from_env(device: str) -> World:
    """Join the process group torchrun describes (a single process when WORLD_SIZE is absent or 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device).type == "cuda"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank, size, local)


def all_reduce(tensor: torch.Tensor, world: World, op: str = "sum") -> torch.Tensor:
    """`tensor` summed (or `op`: "max") over the ranks, in place."""
    if world.active:
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op.upper()))
    return tensor


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's value on every rank."""
    if not world.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
