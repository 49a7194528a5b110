"""torch.distributed in one place: one code path for 1 process and for ``torchrun --nproc_per_node=N``.

Under ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`setup_distributed` then joins the process group with ``nccl`` when the device
is CUDA and ``gloo`` otherwise. Without those variables everything runs as a single process, and
every helper here is the identity (:func:`all_reduce_sum`) or a no-op (:func:`barrier`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "setup_distributed", "teardown_distributed", "is_distributed", "world",
           "barrier", "all_reduce_sum"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its ``rank`` of ``world_size``, its ``local_rank`` and ``device``.

    ``initialized_here`` is true when :func:`setup_distributed` created the process group.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def world() -> Tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` without a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device: Optional[torch.device] = None) -> DistributedContext:
    """Join the process group if launched by ``torchrun`` (or already joined); pick the device.

    ``device`` overrides the default (``cuda:LOCAL_RANK`` when CUDA exists, else CPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if device is None:
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    initialized_here = False
    if world_size > 1 and not is_distributed():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        initialized_here = True
    if is_distributed():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device, initialized_here)
    return DistributedContext(0, 1, 0, device, False)


def teardown_distributed() -> None:
    """Wait for every rank, then destroy the process group (no-op without one): the end of a command."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks, as a new tensor on ``tensor``'s device.

    The input is not modified. Without a process group (or with one rank) the sum is ``tensor``
    itself. A CPU tensor under ``nccl`` travels through the current CUDA device, a CUDA tensor under
    ``gloo`` through the CPU.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return tensor
    device = tensor.device
    work = tensor
    if dist.get_backend() == "nccl" and device.type != "cuda":
        work = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    elif dist.get_backend() == "gloo" and device.type != "cpu":
        work = tensor.cpu()
    work = work.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(device)
