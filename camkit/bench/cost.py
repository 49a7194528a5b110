"""What a CAM call costs: the environment, peak memory, the floor pass and the interleaved timing.

The *floor* of a layer is the least any gradient CAM at that layer pays: a forward and one
``torch.autograd.grad`` of the top-1 logits to the layer's output (:func:`floor_pass`).
:func:`measure_cost` times every (method, layer) and the floors round by round, interleaved, so
machine load affects all of them alike, and reports each call's best round and its ratio to the
floor of the same layer.
"""
from __future__ import annotations

import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from camkit._version import __version__
from camkit.explain import Explainer
from camkit.layers import call_counts, resolve_layer

__all__ = ["environment", "PeakMemory", "synchronize", "model_device", "floor_pass", "CostRow",
           "measure_cost"]

Job = Tuple[str, str]  # (method or "floor" or "all", layer)


# ------------------------------------------------------------------------------------ environment
def environment(device: torch.device) -> Dict[str, Any]:
    """Versions, device and threads of this process, recorded with every result.

    Returns:
        A dict with ``camkit``, ``torch``, ``torchvision``, ``python``, ``platform``, ``device``,
        ``torch_threads``, ``cpu_count``, ``cpu`` and, on CUDA, ``gpu`` and ``cuda``.
    """
    import torchvision

    info = {"camkit": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cpu": _cpu_name()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------------------- memory
def _status_kib(field_name: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so RSS peaks show new allocations.

    Without it, memory freed by an earlier call stays in the process and is reused, and a later call's
    peak RSS looks like zero. A no-op where glibc is not available.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a ``with`` block above its starting level, in MiB (``peak_mib`` on exit).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the peak RSS
    (``VmHWM``) after resetting it through ``/proc/self/clear_refs``; where that is not possible,
    ``ru_maxrss`` (the process peak, so only increases are seen) and ``exact`` is False.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib: float = math.nan
        self.exact = True

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        _release_free_memory()
        self._start = _status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.exact = False
        if self._start is None:
            import resource

            self.exact = False
            self._start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2 ** 20
            return
        peak = _status_kib("VmHWM") if self.exact else None
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_mib = max(0.0, (peak - self._start) / 1024.0)


# ---------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer reads the work's real end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def floor_pass(model: nn.Module, batch: torch.Tensor, layer: str) -> torch.Tensor:
    """The floor every gradient CAM pays: one forward, one ``autograd.grad`` to ``layer``.

    The forward runs without autograd up to the layer; the layer's output becomes a leaf that requires
    grad, so the graph (and the backward) cover only the part of the network after it, the least any
    method that needs ``dS/dA`` at that layer can do.

    Args:
        model: a classifier returning ``(B, K)`` logits.
        batch: ``(B, 3, H, W)`` preprocessed images on the model's device.
        layer: a module name, or ``"name@k"`` for the k-th call of a reused module.

    Returns:
        The ``(B, C, h, w)`` gradient of the summed top-1 logits w.r.t. the layer's output.
    """
    spec = resolve_layer(model, layer)
    calls: List[int] = []
    leaves: List[torch.Tensor] = []

    def hook(module, inputs, output):
        calls.append(1)
        # call -1 (the last): every call becomes a leaf and the last one wins; detaching an earlier
        # call does not change the gradient w.r.t. a later call's output
        if spec.call == -1 or len(calls) - 1 == spec.call:
            torch.set_grad_enabled(True)
            leaf = output.detach().requires_grad_()
            leaves[:] = [leaf]
            return leaf
        return None

    if spec.call < -1:  # "name@-k": count the calls in a dry run first
        spec = type(spec)(spec.name, spec.module, call_counts(model, batch)[spec.module] + spec.call)
    handle = spec.module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(batch)
        with torch.enable_grad():
            score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            return torch.autograd.grad(score, leaves[0])[0]
    finally:
        handle.remove()


@dataclass
class CostRow:
    """The cost of one (method, layer) call on the cost batch.

    ``method`` is a method name, ``"all"`` (every method in one call) or ``"floor"``; ``seconds`` is
    the best round's seconds per call, ``ratio_to_floor`` divides it by the same layer's floor and
    ``peak_memory_mib`` is above the level before the call. A call that failed has NaN numbers and
    its ``error``.
    """

    method: str
    layer: str
    seconds: float
    images_per_second: float
    ratio_to_floor: float
    peak_memory_mib: float
    batch_size: int
    error: Optional[str] = None


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}" if str(error) else type(error).__name__


def _jobs(methods: Sequence[str], layers: Sequence[str], include_all: bool) -> List[Job]:
    """Per layer: the floor, each method, then ``"all"`` (when asked and there are several methods)."""
    jobs: List[Job] = []
    for layer in layers:
        jobs.append(("floor", layer))
        jobs += [(m, layer) for m in methods]
        if include_all and len(methods) > 1:
            jobs.append(("all", layer))
    return jobs


class _Timer:
    """Runs the jobs of :func:`measure_cost`, keeping each job's round times, memory peak and error."""

    def __init__(self, model: nn.Module, batch: torch.Tensor, methods: Sequence[str], jobs: List[Job],
                 preprocess):
        self.model, self.batch, self.methods, self.jobs = model, batch, list(methods), jobs
        self.preprocess = preprocess
        self.explainers = {job: self._explainer(list(methods) if job[0] == "all" else [job[0]], job[1])
                           for job in jobs if job[0] != "floor"}
        self.times: Dict[Job, List[float]] = {job: [] for job in jobs}
        self.peaks: Dict[Job, float] = {}
        self.errors: Dict[Job, str] = {}

    def _explainer(self, methods: List[str], layer: str) -> Explainer:
        return Explainer(self.model, methods=methods, layers=[layer], preprocess=self.preprocess)

    def call(self, job: Job):
        method, layer = job
        if method == "floor":
            return floor_pass(self.model, self.batch, layer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.explainers[job](self.batch)

    def peak(self, job: Job) -> None:
        """One call under :class:`PeakMemory` (also the warm-up)."""
        with PeakMemory(self.batch.device) as memory:
            self.call(job)
        self.peaks[job] = memory.peak_mib

    def time(self, job: Job) -> None:
        synchronize(self.batch.device)
        start = time.perf_counter()
        self.call(job)
        synchronize(self.batch.device)
        self.times[job].append(time.perf_counter() - start)

    def run(self, job: Job, measure) -> None:
        """``measure(job)``, recording an error instead of raising (e.g. CAM off the head's layer)."""
        if job in self.errors:
            return
        try:
            measure(job)
        except Exception as error:  # noqa: BLE001 - a method that cannot run at a layer is a result
            self.errors[job] = _error_text(error)

    def restrict_all_to_working_methods(self) -> None:
        """After the warm-up: ``"all"`` of a layer runs the methods that worked there alone."""
        layers = dict.fromkeys(layer for _, layer in self.jobs)
        for layer in layers:
            working = [m for m in self.methods if (m, layer) not in self.errors]
            if ("all", layer) in self.explainers and working:
                self.explainers[("all", layer)] = self._explainer(working, layer)
                self.run(("all", layer), self.peak)

    def row(self, job: Job) -> CostRow:
        method, layer = job
        size = int(self.batch.shape[0])
        if job in self.errors:
            return CostRow(method, layer, math.nan, math.nan, math.nan, math.nan, size, self.errors[job])
        floor_times = self.times[("floor", layer)]
        floor = min(floor_times) if floor_times else math.nan
        seconds = min(self.times[job])
        return CostRow(method, layer, seconds, size / seconds, seconds / floor, self.peaks.get(job, math.nan),
                       size)


def measure_cost(model: nn.Module, batch: torch.Tensor, methods: Sequence[str], layers: Sequence[str],
                 repeats: int = 5, include_all: bool = True, preprocess=None) -> List[CostRow]:
    """Time every (method, layer) and the floor on ``batch``, interleaved round by round.

    Each round runs, for each layer, the floor then each method (and every method that works at that
    layer together, as ``"all"``, when ``include_all``). One warm-up round, which also measures each
    call's peak memory, is discarded. Seconds are the best (minimum) of ``repeats`` rounds: on a shared
    machine other load only ever adds time, so the minimum is the most stable estimate of a call's own
    cost.

    Args:
        model: a classifier returning ``(B, K)`` logits, in eval mode.
        batch: ``(B, 3, H, W)`` preprocessed images on the model's device.
        methods, layers: what to time; a method that fails at a layer gets a row with its error.
        repeats: timed rounds after the warm-up (at least 1).
        include_all: also time every method in one call per layer.
        preprocess: passed to :class:`camkit.explain.Explainer`.

    Returns:
        One :class:`CostRow` per job, in the order floor, methods, ``"all"``, layer by layer.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 (timed rounds after the warm-up), got {repeats}")
    jobs = _jobs(methods, layers, include_all)
    timer = _Timer(model, batch, methods, jobs, preprocess)
    for job in jobs:
        if job[0] != "all":
            timer.run(job, timer.peak)
    timer.restrict_all_to_working_methods()
    for _ in range(repeats):
        for job in jobs:
            timer.run(job, timer.time)
    return [timer.row(job) for job in jobs]
