"""torch.distributed helpers: one code path for 1 process and for ``torchrun --nproc_per_node=N``.

Under ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`setup_distributed` then joins the process group with ``nccl`` when CUDA is
available and ``gloo`` otherwise. Without those variables everything runs as a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "setup_distributed", "is_distributed", "barrier", "all_reduce_sum"]


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup_distributed(device: Optional[torch.device] = None) -> DistributedContext:
    """Join the process group if launched by ``torchrun`` (or already joined); pick the device.

    ``device`` overrides the default (``cuda:LOCAL_RANK`` when CUDA exists, else CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if device is None:
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    initialized_here = False
    if world > 1 and not is_distributed():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        initialized_here = True
    if is_distributed():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device, initialized_here)
    return DistributedContext(0, 1, 0, device, False)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op for one process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
