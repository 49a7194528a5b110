"""The box-curve stage of the evaluation, on the maps' device and in a pool of worker processes.

* :func:`maps_to_uint8`: ``uint8(255 * map)`` of a batch of maps on their own device (the bytes of
  :func:`camkit.boxes.scoremap_to_uint8` of each map after ``.float()``), so a map crosses to the host
  at one byte per pixel.
* :class:`MetricPool`: ``submit(u8 (B, H, W), boxes, thresholds)`` returns a future of the batch's V1 and
  V2 curves (:func:`camkit.boxes.iou_curves_of_uint8` of every map). With ``workers=0`` the curves are
  computed at once, in this process; with ``workers=N >= 1`` by N worker processes (``forkserver`` start
  method where the platform has it, else ``spawn``; never ``fork`` under torch). The uint8 maps travel
  through shared memory: the pool copies each batch into a block of ``multiprocessing.shared_memory``
  that it owns (blocks are reused once their task is done, and a bigger one is made when a batch does
  not fit), and the task carries only the block's name and the batch's shape, with the small int64
  box arrays; the worker reads the maps in place. Results do not depend on N: each task's curves are
  the serial path's, and the caller merges them in submission order.

The pool is a context manager: leaving it, normally or on an exception (in a worker, in the caller, or
``KeyboardInterrupt``), cancels the pending tasks, joins every worker and unlinks every block, so no
child process and no shared-memory segment remains.
Workers ignore SIGINT: Ctrl-C reaches the parent, which shuts the pool down.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import shared_memory
from typing import List, Sequence, Tuple

import numpy as np
import torch

from camkit.boxes import iou_curves_of_uint8

__all__ = ["maps_to_uint8", "batch_curves", "default_metric_workers", "MetricPool"]


def maps_to_uint8(maps: torch.Tensor) -> torch.Tensor:
    """``uint8(255 * maps)`` on the maps' device, wsolevaluation's conversion.

    Args:
        maps: (B, H, W) real tensor in [0, 1], on any device; computed in float32 (``maps.float()``).
    Returns:
        (B, H, W) uint8 tensor on the same device: the truncating cast of the float32 product, the same
        bytes as :func:`camkit.boxes.scoremap_to_uint8` of each ``maps[i].float()``.
    Raises:
        ValueError: for maps that are not (B, H, W), are empty, hold NaN or values outside [0, 1].
    """
    if maps.dim() != 3 or maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"score maps must be (B, H, W) with H, W >= 1, got shape {tuple(maps.shape)}")
    maps = maps.detach().float()
    if maps.numel() == 0:
        return torch.zeros(maps.shape, dtype=torch.uint8, device=maps.device)
    if torch.isnan(maps).any():
        raise ValueError("score map contains NaN; fix the map (e.g. torch.nan_to_num) before extracting boxes")
    low, high = maps.min(), maps.max()
    if low < 0 or high > 1:
        raise ValueError(f"score map values must lie in [0, 1], got range [{float(low)}, {float(high)}]; "
                         "normalise it first (e.g. per-image min-max)")
    return (maps * 255).to(torch.uint8)


def batch_curves(u8: np.ndarray, boxes: Sequence[np.ndarray], thresholds: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """V1 and V2 curves of a batch: ``u8`` (B, H, W) uint8, one (g, 4) int64 box set per map, (T,) taus.

    Returns ``(v1, v2)``, each (B, T) float64, row i = ``iou_curves_of_uint8(u8[i], boxes[i], thresholds)``.
    """
    rows = [iou_curves_of_uint8(u, b, thresholds) for u, b in zip(u8, boxes)]
    if not rows:
        empty = np.zeros((0, len(thresholds)))
        return empty, empty.copy()
    v1, v2 = zip(*rows)
    return np.stack(v1), np.stack(v2)


def default_metric_workers() -> int:
    """The available cores (CPU affinity where the platform has it) minus one; 0 (in-process) below 3 cores.

    With one or two cores a worker only competes with the engine for the same cores (measured on 2
    cores: 0, 1 and 2 workers took the same time, ``benchmarks/bench_eval.py --end-to-end``), and
    each pool costs a start-up, so small machines keep the metrics in the calling process.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return cores - 1 if cores >= 3 else 0


#: a worker's blocks, attached once by name (the parent never reuses a name for another block)
_ATTACHED = {}


def _shared_batch_curves(name: str, shape: Tuple[int, ...], boxes, thresholds):
    """:func:`batch_curves` of the (B, H, W) uint8 maps at the start of the shared block ``name``."""
    if name not in _ATTACHED:
        _ATTACHED[name] = shared_memory.SharedMemory(name=name)
    u8 = np.ndarray(shape, dtype=np.uint8, buffer=_ATTACHED[name].buf)
    return batch_curves(u8, boxes, thresholds)


class _Blocks:
    """The parent's shared-memory blocks: :meth:`take` one of at least ``nbytes`` (a free one, else a
    new one), :meth:`give` it back when its task is done, :meth:`unlink_all` at the end."""

    def __init__(self):
        self._free: List[shared_memory.SharedMemory] = []
        self._all: List[shared_memory.SharedMemory] = []
        self._lock = threading.Lock()        # give() runs in the executor's callback thread

    def take(self, nbytes: int) -> shared_memory.SharedMemory:
        with self._lock:
            fitting = [block for block in self._free if block.size >= nbytes]
            if fitting:
                block = min(fitting, key=lambda b: b.size)
                self._free.remove(block)
                return block
        block = shared_memory.SharedMemory(create=True, size=nbytes)
        with self._lock:
            self._all.append(block)
        return block

    def give(self, block: shared_memory.SharedMemory) -> None:
        with self._lock:
            self._free.append(block)

    def names(self) -> List[str]:
        with self._lock:
            return [block.name for block in self._all]

    def unlink_all(self) -> None:
        with self._lock:
            blocks, self._all, self._free = self._all, [], []
        for block in blocks:
            block.close()
            block.unlink()


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C is the parent's to handle (it shuts the pool down)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_context():
    """``forkserver`` (workers fork from a clean server that has imported this module once: cheap
    starts, no fork of a process running torch threads) where available, else ``spawn``."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _checked_workers(workers) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"metric_workers must be a whole number >= 0 (0 = the metrics in this process, N = N "
                         f"worker processes), got {workers!r}")
    return workers


class MetricPool:
    """Box curves of uint8 map batches, in this process (``workers=0``) or in ``workers`` processes.

    Args:
        workers: 0 = compute in :meth:`submit` itself; N >= 1 = N worker processes, started here.

    Use it as a context manager (or call :meth:`close`): leaving it joins every worker.
    """

    def __init__(self, workers: int = 0):
        self.workers = _checked_workers(workers)
        self._executor = None
        self._blocks = _Blocks()
        if self.workers:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=_start_context(),
                                                 initializer=_ignore_sigint)

    def submit(self, u8: np.ndarray, boxes: List[np.ndarray], thresholds: np.ndarray) -> Future:
        """A future of :func:`batch_curves` ``(v1, v2)`` for ``u8`` (B, H, W) uint8 and its box sets."""
        if self._executor is None:
            future: Future = Future()
            try:
                future.set_result(batch_curves(u8, boxes, thresholds))
            except Exception as err:  # the same as a worker's: raised by result()
                future.set_exception(err)
            return future
        u8 = np.ascontiguousarray(u8, np.uint8)
        if u8.size == 0:
            return self._executor.submit(batch_curves, u8, boxes, thresholds)
        block = self._blocks.take(u8.nbytes)
        np.ndarray(u8.shape, dtype=np.uint8, buffer=block.buf)[...] = u8
        future = self._executor.submit(_shared_batch_curves, block.name, u8.shape, boxes, thresholds)
        future.add_done_callback(lambda _done: self._blocks.give(block))
        return future

    def close(self) -> None:
        """Cancel what has not started, join every worker and unlink every block (idempotent)."""
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
        finally:
            self._blocks.unlink_all()

    def __enter__(self) -> "MetricPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
