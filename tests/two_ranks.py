"""Run a function on two gloo ranks (spawned processes) and return rank 0's result."""
import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, world, port, path, fn, args):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(*args)
        if rank == 0:
            torch.save(result, path)
    finally:
        dist.destroy_process_group()


def on_two_ranks(fn, *args):
    """``fn(*args)`` under a 2-process gloo group; rank 0's return value (``fn`` must be picklable)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(2, port, path, fn, args), nprocs=2, join=True)
        return torch.load(path, weights_only=False)
