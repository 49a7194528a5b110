"""Benchmark every CAM method at every layer: localisation quality and cost, side by side.

``camkit benchmark`` (and ``benchmarks/run_all.py``) produce, for one model and one dataset:

* **quality** per (method, layer), from :mod:`camkit.metrics` through the explanation engine:
  computed by :func:`camkit.evaluate` with maps of the ground-truth class (wsolevaluation):
  MaxBoxAccV2 and MaxBoxAcc@{30,50,70} (every contour's box), GT-known / Top-1 / Top-5 Loc (largest
  contour, IoU 50, at the best threshold), PxAP, pIoU and Peak-IoU where masks exist, and the model's
  classification top-1;
* **cost** per (method, layer) on one fixed batch: images per second, the ratio to the *floor*
  (a bare forward with one hook plus one ``torch.autograd.grad`` to that layer, timed in the same
  rounds, interleaved, so machine load affects both alike) and the peak memory above the baseline
  (CUDA allocator statistics on GPU; on CPU the process's peak RSS, reset through
  ``/proc/self/clear_refs`` after freed heap pages are returned with glibc's ``malloc_trim``).
  Seconds are the best of the timed rounds;
* optional **peers** (pytorch-grad-cam, torchcam, captum) when importable: the same method on the same
  inputs, their maximum absolute difference from camkit after identical post-processing (bilinear
  upsampling with ``align_corners=False``, then per-image min-max), and their speed relative to
  camkit (``peer seconds / camkit seconds``). Missing peers are listed as skipped.

Outputs in ``--out``: ``report.md`` (markdown tables and the environment), ``results.json``,
``quality.csv``, ``cost.csv``, ``peers.csv`` (when peers ran) and figures ``quality_<metric>.png``
(metric vs layer, one line per method), ``cost.png`` (the cost table) and ``cost_ratio.png``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from camkit.methods import STANDARD_METHODS as DEFAULT_METHODS

__all__ = ["BenchmarkResult", "run_benchmark", "measure_cost", "compare_peers", "environment",
           "write_outputs", "load_dataset", "add_arguments", "run", "DESCRIPTION", "EPILOG"]

QUALITY_METRICS = ("MaxBoxAccV2", "MaxBoxAcc@30", "MaxBoxAcc@50", "MaxBoxAcc@70", "GT-known", "Top-1 Loc",
                   "Top-5 Loc", "PxAP", "pIoU", "PeakIoU")

DESCRIPTION = ("Localisation quality (MaxBoxAccV2, MaxBoxAcc@30/50/70, GT-known and Top-1/5 Loc, PxAP and "
               "Peak-IoU where masks exist, classification top-1) and cost (images/s, ratio to a bare forward+grad, peak memory) of "
               "every method at every layer, written as markdown, CSV/JSON and plots.")

EPILOG = """\
examples:
  # the real MobileNetV2 on the 50 annotated ImageNet dev images (a few minutes on 2 CPU cores)
  camkit benchmark --model mobilenet_v2:../shared/assets/weights/mobilenet_v2_imagenet.pth \\
      --data ../shared/assets/imagenet-val-dev50 --layers features.6 features.13 features.18 --out bench/

  # a wsolevaluation-format dataset (metadata/<split>/*.txt, images/, masks/ for OpenImages)
  camkit benchmark --model torchvision:resnet50 --weights r50.pth \\
      --data wsol:/data/CUB:/data/wsolevaluation/metadata/CUB/test --out bench/

  # the synthetic benchmark (masks, so PxAP and Peak-IoU too), your own model
  camkit benchmark --model mymodels:tiny --data synthetic:64 --methods gradcam pcs --out bench/

datasets (--data):
  DIR                    a folder with annotations.json (as ../shared/assets/imagenet-val-dev50)
  wsol:ROOT[:METADATA]   wsolevaluation metadata format: images under ROOT, the four metadata files in
                         METADATA (default ROOT/metadata/test); masks for OpenImages-style mask lines
  synthetic[:N[:SIZE]]   camkit's synthetic WSOL benchmark (N images, default 64, of SIZE pixels)

Layers default to the model's suggested list (shallow to deep) or the last spatial layer.
Timings are ratios measured side by side; absolute images/s depend on the machine (see report.md).
Peers (pytorch-grad-cam, torchcam, captum) run when importable; --no-peers skips them.
"""


# ------------------------------------------------------------------------------------ environment
def environment(device: torch.device) -> Dict[str, Any]:
    """Versions, device and threads, recorded with every result."""
    import torchvision

    import camkit

    info = {"camkit": camkit.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu": _cpu_name()}
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
    """Peak memory of a block above its starting level, in MiB.

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


# ------------------------------------------------------------------------------------------- cost
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def floor_pass(model: nn.Module, batch: torch.Tensor, layer: str) -> torch.Tensor:
    """The floor every gradient CAM pays: one forward, one ``autograd.grad`` to ``layer``.

    The forward runs without autograd up to the layer; the layer's output becomes a leaf that requires
    grad, so the graph (and the backward) cover only the part of the network after it, the least any
    method that needs ``dS/dA`` at that layer can do. Returns the ``(B, C, h, w)`` gradient of the
    summed top-1 logits w.r.t. the layer's output.
    """
    from camkit.layers import call_counts, resolve_layer

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
    method: str              # a method name, "all" (every method in one call) or "floor"
    layer: str
    seconds: float           # best-of-rounds seconds per call on the cost batch
    images_per_second: float
    ratio_to_floor: float
    peak_memory_mib: float
    batch_size: int
    error: Optional[str] = None


def measure_cost(model: nn.Module, batch: torch.Tensor, methods: Sequence[str], layers: Sequence[str],
                 repeats: int = 5, include_all: bool = True, preprocess=None) -> List[CostRow]:
    """Time every (method, layer) and the floor on ``batch``, interleaved round by round.

    Each round runs, for each layer, the floor then each method (and every method that works at that
    layer together, as ``"all"``, when ``include_all``). One warm-up round is discarded. Seconds are
    the best (minimum) of ``repeats`` rounds: on a shared machine other load only ever adds time, so
    the minimum is the most stable estimate of a call's own cost. ``ratio_to_floor`` divides by the
    same layer's floor.
    """
    import camkit

    device = batch.device
    jobs: List[Tuple[str, str]] = []
    for layer in layers:
        jobs.append(("floor", layer))
        jobs += [(m, layer) for m in methods]
        if include_all and len(methods) > 1:
            jobs.append(("all", layer))
    explainers = {}
    for method, layer in jobs:
        if method != "floor":
            names = list(methods) if method == "all" else [method]
            explainers[(method, layer)] = camkit.Explainer(model, methods=names, layers=[layer],
                                                           preprocess=preprocess)
    times: Dict[Tuple[str, str], List[float]] = {job: [] for job in jobs}
    peaks: Dict[Tuple[str, str], float] = {}
    errors: Dict[Tuple[str, str], str] = {}

    def call(job):
        method, layer = job
        if method == "floor":
            return floor_pass(model, batch, layer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return explainers[job](batch)

    for round_index in range(repeats + 1):
        if round_index == 1:  # "all": every method that worked alone at that layer
            for layer in layers:
                working = [m for m in methods if (m, layer) not in errors]
                if ("all", layer) in explainers and working:
                    explainers[("all", layer)] = camkit.Explainer(model, methods=working, layers=[layer],
                                                                  preprocess=preprocess)
                    errors.pop(("all", layer), None)
                    with PeakMemory(device) as memory:
                        call(("all", layer))
                    peaks[("all", layer)] = memory.peak_mib
        for job in jobs:
            if job in errors or (round_index == 0 and job[0] == "all"):
                continue
            try:
                if round_index == 0:  # warm-up, and the memory peak of one call
                    with PeakMemory(device) as memory:
                        call(job)
                    peaks[job] = memory.peak_mib
                    continue
                _sync(device)
                start = time.perf_counter()
                call(job)
                _sync(device)
                times[job].append(time.perf_counter() - start)
            except Exception as error:  # noqa: BLE001 - e.g. CAM at a layer the head does not fit
                errors[job] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    rows = []
    for method, layer in jobs:
        job = (method, layer)
        floor = min(times[("floor", layer)]) if times[("floor", layer)] else math.nan
        if job in errors:
            rows.append(CostRow(method, layer, math.nan, math.nan, math.nan, math.nan, batch.shape[0],
                                errors[job]))
            continue
        seconds = min(times[job])
        rows.append(CostRow(method, layer, seconds, batch.shape[0] / seconds, seconds / floor,
                            peaks.get(job, math.nan), batch.shape[0]))
    return rows


# ----------------------------------------------------------------------------------------- dataset
def load_dataset(spec: str, preprocess=None, limit: Optional[int] = None):
    """A dataset from ``--data`` (see :data:`EPILOG`), through :mod:`camkit.data` loaders.

    Images are resized to the model's input size (no crop) and normalised with its mean and std
    (:class:`camkit.data.wsol.WSOLEvalTransform`). Returns a sequence of samples, each a dict with
    ``image`` ``(3, S, S)`` float, ``label`` int, ``boxes`` ``(n, 4)`` xyxy inclusive at the input
    resolution and, for mask datasets, ``mask`` ``(S, S)`` (1 foreground, 0 background, 255 ignored).
    """
    if spec.startswith("synthetic"):
        parts = spec.split(":")
        count = int(parts[1]) if len(parts) > 1 and parts[1] else 64
        size = int(parts[2]) if len(parts) > 2 and parts[2] else 64
        from camkit.data.synthetic import make_synthetic

        dataset = make_synthetic(num_images=count, image_size=size, context="uniform", seed=1)
        return _SyntheticSamples(dataset, preprocess)
    from camkit.data.wsol import AnnotatedFolderDataset, WSOLDataset, WSOLEvalTransform

    size = getattr(preprocess, "size", None) or (224, 224)
    transform = WSOLEvalTransform(size=size[0], mean=getattr(preprocess, "mean", (0.485, 0.456, 0.406)),
                                  std=getattr(preprocess, "std", (0.229, 0.224, 0.225)))
    if spec.startswith("wsol:"):
        root, _, metadata = spec[len("wsol:"):].partition(":")
        return WSOLDataset(root, metadata or Path(root) / "metadata" / "test", transform=transform)
    if (Path(spec) / "annotations.json").is_file():
        return AnnotatedFolderDataset(spec, transform=transform)
    raise ValueError(f"--data {spec!r}: not a folder with annotations.json, 'wsol:ROOT[:METADATA_DIR]' or "
                     f"'synthetic[:N[:SIZE]]'")


class _SyntheticSamples:
    """camkit's synthetic split as benchmark samples (normalised with the model's mean and std)."""

    def __init__(self, dataset, preprocess):
        self.dataset = dataset
        self.mean = torch.tensor(getattr(preprocess, "mean", (0.5, 0.5, 0.5))).view(3, 1, 1)
        self.std = torch.tensor(getattr(preprocess, "std", (0.25, 0.25, 0.25))).view(3, 1, 1)
        self.class_names = dataset.class_names

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        image = (item["image"].float() / 255 - self.mean) / self.std
        return {"image": image, "label": item["label"], "boxes": item["box"].view(1, 4),
                "mask": item["mask"].to(torch.uint8)}


# ---------------------------------------------------------------------------------------- results
@dataclass
class BenchmarkResult:
    """Everything a benchmark run measured.

    Attributes:
        quality: ``{method: {layer: {metric: value}}}`` (missing metrics are absent).
        classification: ``{"top1": float, "images": int}``.
        cost: :class:`CostRow` list.
        peers: one dict per (peer, method, layer): ``max_abs_difference``, ``speed_ratio`` ...
        skipped_peers: ``{peer: reason}``.
        environment, settings: how and where it ran.
    """

    quality: Dict[str, Dict[str, Dict[str, float]]]
    classification: Dict[str, float]
    cost: List[CostRow]
    peers: List[Dict[str, Any]] = field(default_factory=list)
    skipped_peers: Dict[str, str] = field(default_factory=dict)
    environment: Dict[str, Any] = field(default_factory=dict)
    settings: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        return _json_safe(out)


def _json_safe(value):
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------- peers
def _same_postprocess(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, H, W)``: bilinear (``align_corners=False``) then per-image min-max."""
    from camkit import postprocess

    maps = maps.detach().float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = postprocess.upsample(maps[:, None], tuple(size))[:, 0]
    return postprocess.normalize(maps[:, None])[:, 0]


def _peer_grad_cam(method: str):
    """pytorch-grad-cam: a runner ``(model, module, batch, classes) -> (B, H, W)`` or ``None``."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "pcs": pgc.HiResCAM}.get(method)
    if cls is None:
        return None

    def runner(model, module, batch, classes):
        with cls(model=model, target_layers=[module]) as cam:
            maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(int(c)) for c in classes])
        return torch.as_tensor(maps)
    return runner


def _peer_torchcam(method: str):
    import torchcam.methods as tcm

    cls = {"gradcam": tcm.GradCAM, "gradcam++": tcm.GradCAMpp, "cam": tcm.CAM}.get(method)
    if cls is None:
        return None

    def runner(model, module, batch, classes):
        name = next(n for n, m in model.named_modules() if m is module)
        extractor = cls(model, target_layer=name)
        try:
            with torch.enable_grad():
                scores = model(batch)
                maps = extractor([int(c) for c in classes], scores)[0]
        finally:
            extractor.remove_hooks()
        return maps
    return runner


def _peer_captum(method: str):
    if method != "gradcam":
        return None
    from captum.attr import LayerGradCam

    def runner(model, module, batch, classes):
        with torch.enable_grad():
            maps = LayerGradCam(model, module).attribute(batch, target=classes.tolist(),
                                                          relu_attributions=True)
        return maps[:, 0]
    return runner


PEERS = {"pytorch-grad-cam": ("pytorch_grad_cam", _peer_grad_cam),
         "torchcam": ("torchcam", _peer_torchcam),
         "captum": ("captum", _peer_captum)}


def compare_peers(model: nn.Module, batch: torch.Tensor, methods: Sequence[str], layers: Sequence[str],
                  repeats: int = 3) -> Tuple[List[Dict[str, Any]], Dict[str, str]]:
    """Run the installed peers' versions of ``methods`` at ``layers`` on ``batch``.

    Both camkit's and the peer's maps go through :func:`_same_postprocess`; targets are camkit's
    top-1 classes. Returns ``(rows, skipped)``: each row has ``peer, method, layer,
    max_abs_difference, mean_abs_difference, camkit_seconds, peer_seconds, speed_ratio``
    (``peer_seconds / camkit_seconds``; above 1 means camkit is faster); ``skipped`` maps a peer to
    the reason it did not run.
    """
    import importlib

    import camkit
    from camkit.layers import resolve_layer

    rows, skipped = [], {}
    size = tuple(batch.shape[-2:])
    for peer, (module_name, factory) in PEERS.items():
        try:
            importlib.import_module(module_name)
        except Exception as error:  # noqa: BLE001 - ImportError, or a broken optional install
            skipped[peer] = f"not importable ({type(error).__name__}: {error})"
            continue
        for method in methods:
            runner = factory(method)
            if runner is None:
                continue
            for layer in layers:
                spec = resolve_layer(model, layer)
                if spec.call != -1:
                    continue  # peers hook modules, not the k-th call of a reused one
                explainer = camkit.Explainer(model, methods=[method], layers=[layer])
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ours = explainer(batch, upsample=False, normalize=False)
                except Exception:  # noqa: BLE001 - camkit cannot (e.g. CAM off the head): nothing to compare
                    continue
                try:
                    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                        warnings.simplefilter("ignore")
                        classes = ours.targets
                        theirs = runner(model, spec.module, batch, classes)
                        ours_t, theirs_t = [], []
                        for _ in range(repeats):
                            start = time.perf_counter()
                            explainer(batch)
                            _sync(batch.device)
                            ours_t.append(time.perf_counter() - start)
                            start = time.perf_counter()
                            runner(model, spec.module, batch, classes)
                            _sync(batch.device)
                            theirs_t.append(time.perf_counter() - start)
                except Exception as error:  # noqa: BLE001 - a peer failing is a result, not a crash
                    rows.append({"peer": peer, "method": method, "layer": layer,
                                 "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
                    continue
                a = _same_postprocess(ours[(method, layer)].to(torch.float32), size)
                b = _same_postprocess(torch.as_tensor(theirs).to(a.device, torch.float32), size)
                difference = (a - b).abs()
                camkit_seconds, peer_seconds = min(ours_t), min(theirs_t)
                rows.append({"peer": peer, "method": method, "layer": layer,
                             "max_abs_difference": float(difference.max()),
                             "mean_abs_difference": float(difference.mean()),
                             "camkit_seconds": camkit_seconds, "peer_seconds": peer_seconds,
                             "speed_ratio": peer_seconds / camkit_seconds})
    return rows, skipped


# ----------------------------------------------------------------------------------------- outputs
def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _sci(value) -> str:
    return "-" if value is None else f"{value:.2g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def quality_markdown(result: BenchmarkResult, metric: str = "MaxBoxAccV2") -> str:
    """Methods x layers table of one metric (the BagCAMs-style table)."""
    layers = result.settings.get("layers") or sorted({l for v in result.quality.values() for l in v})
    rows = [[method] + [result.quality[method].get(layer, {}).get(metric, math.nan) for layer in layers]
            for method in result.quality]
    return markdown_table(["method \\ layer"] + list(layers), rows)


def cost_markdown(result: BenchmarkResult) -> str:
    rows = [[r.method, r.layer, r.images_per_second, r.ratio_to_floor, r.peak_memory_mib]
            for r in result.cost]
    memory = "peak GPU MiB" if result.environment.get("device", "cpu").startswith("cuda") else "peak RSS MiB"
    return markdown_table(["method", "layer", "images/s", "x floor", memory], rows)


def metrics_present(result: BenchmarkResult) -> List[str]:
    seen = {m for per_layer in result.quality.values() for values in per_layer.values() for m in values}
    ordered = [m for m in QUALITY_METRICS if m in seen]
    return ordered + sorted(seen - set(ordered))


def report_markdown(result: BenchmarkResult) -> str:
    s, env = result.settings, result.environment
    parts = [f"# camkit benchmark: {s.get('model')} on {s.get('data')}", "",
             f"{s.get('images')} images, methods {', '.join(s.get('methods', []))}, "
             f"layers {', '.join(s.get('layers', []))}. Classification top-1: "
             f"{_fmt(result.classification.get('top1'))}%.", ""]
    for metric in metrics_present(result):
        parts += [f"## {metric} (methods x layers)", "", quality_markdown(result, metric), ""]
    parts += ["## Cost", "",
              f"Best of {s.get('repeats')} interleaved rounds on one batch of {s.get('cost_batch')} "
              f"images. *floor* = a bare forward + one `torch.autograd.grad` to the layer; *all* = every "
              f"method in one camkit call. Peak memory is above the level before the call.", "",
              cost_markdown(result), ""]
    if result.peers or result.skipped_peers:
        parts += ["## Peers", ""]
        if result.peers:
            rows = [[p["peer"], p["method"], p["layer"], _sci(p.get("max_abs_difference")),
                     p.get("speed_ratio", math.nan), p.get("error", "")] for p in result.peers]
            parts += ["max |difference| after identical upsampling and min-max; speed ratio = peer "
                      "seconds / camkit seconds.", "",
                      markdown_table(["peer", "method", "layer", "max abs diff", "speed ratio", "error"],
                                     rows), ""]
        for peer, reason in result.skipped_peers.items():
            parts.append(f"- {peer}: skipped, {reason}")
        parts.append("")
    parts += ["## Environment", "", "```", json.dumps(env, indent=1), "```", ""]
    return "\n".join(parts)


def write_outputs(result: BenchmarkResult, out_dir, figures: bool = True) -> Dict[str, Path]:
    """Write ``report.md``, ``results.json``, ``quality.csv``, ``cost.csv``, ``peers.csv`` and plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.md", "json": out / "results.json", "quality_csv": out / "quality.csv",
             "cost_csv": out / "cost.csv"}
    paths["report"].write_text(report_markdown(result))
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1))
    metrics = metrics_present(result)
    with open(paths["quality_csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "layer"] + metrics)
        for method, per_layer in result.quality.items():
            for layer, values in per_layer.items():
                writer.writerow([method, layer] + [_csv(values.get(m)) for m in metrics])
    with open(paths["cost_csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        names = list(CostRow.__dataclass_fields__)
        writer.writerow(names)
        for row in result.cost:
            writer.writerow([_csv(getattr(row, n)) for n in names])
    if result.peers:
        paths["peers_csv"] = out / "peers.csv"
        keys = ["peer", "method", "layer", "max_abs_difference", "mean_abs_difference", "camkit_seconds",
                "peer_seconds", "speed_ratio", "error"]
        with open(paths["peers_csv"], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(keys)
            for row in result.peers:
                writer.writerow([_csv(row.get(k)) for k in keys])
    if figures:
        from camkit import viz

        layers = result.settings.get("layers")
        for metric in metrics:
            values = {m: {l: v.get(metric, math.nan) for l, v in per.items()}
                      for m, per in result.quality.items()}
            path = out / f"quality_{metric.replace('@', '_at_')}.png"
            viz.save_figure(viz.metric_by_layer_figure(values, metric, layers), path)
            paths[f"figure_{metric}"] = path
        rows = [[r.method, r.layer, r.images_per_second, r.ratio_to_floor, r.peak_memory_mib]
                for r in result.cost]
        paths["cost_figure"] = out / "cost.png"
        viz.save_figure(viz.table_figure(["method", "layer", "images/s", "x floor", "peak MiB"], rows,
                                         title="cost per call"), paths["cost_figure"])
        ratios: Dict[str, Dict[str, float]] = {}
        for r in result.cost:
            if r.method != "floor":
                ratios.setdefault(r.method, {})[r.layer] = r.ratio_to_floor
        paths["cost_ratio_figure"] = out / "cost_ratio.png"
        viz.save_figure(viz.metric_by_layer_figure(ratios, "time / floor", layers),
                        paths["cost_ratio_figure"])
    return paths


def _csv(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


# --------------------------------------------------------------------------------------- the run
def evaluate_quality(model: nn.Module, dataset, methods: Sequence[str], layers: Sequence[str],
                     batch_size: int = 16, limit: Optional[int] = None, device=None,
                     progress: bool = False) -> Tuple[Dict[str, Dict[str, Dict[str, float]]], Dict[str, float]]:
    """Localisation metrics of every (method, layer): :func:`camkit.evaluate` regrouped.

    Maps are of the ground-truth class (wsolevaluation). Returns
    ``({method: {layer: {metric: value}}}, {"top1": %, "top5": %, "images": n})`` with the metrics of
    :data:`QUALITY_METRICS` that apply (pixel metrics only with masks). ``device`` is unused: maps
    are computed on the model's device.
    """
    from camkit.evaluation import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. CAM skipped at layers its head does not fit
        rows = evaluate(model, dataset, methods=list(methods), layers=list(layers), batch_size=batch_size,
                        progress=progress, limit=limit)
    quality: Dict[str, Dict[str, Dict[str, float]]] = {m: {} for m in methods}
    classification: Dict[str, float] = {}
    for (method, layer), row in rows.items():
        quality.setdefault(method, {})[layer] = {k: float(row[k]) for k in QUALITY_METRICS
                                                 if row.get(k) is not None}
        classification = {"top1": float(row["Top-1 Cls"]), "top5": float(row["Top-5 Cls"]),
                          "images": int(row["num_images"])}
    return quality, classification


def run_benchmark(loaded, dataset, methods: Sequence[str] = DEFAULT_METHODS,
                  layers: Optional[Sequence[str]] = None, batch_size: int = 16,
                  limit: Optional[int] = None, cost_batch: int = 8, repeats: int = 3,
                  peers: bool = True, progress: bool = False, settings: Optional[dict] = None
                  ) -> BenchmarkResult:
    """Quality and cost of ``methods`` x ``layers`` for one model on one dataset.

    Args:
        loaded: a :class:`camkit.model_spec.LoadedModel` (or an ``nn.Module``).
        dataset: samples as returned by :func:`load_dataset` (``image`` already preprocessed).
        layers: layer names; default the model's suggested layers, else the last spatial layer.
        limit: evaluate at most this many images.
        cost_batch: images in the fixed batch used for timing (the first ones of the dataset).
        repeats: timed rounds (after one warm-up) for cost and peers.
        peers: run installed peer libraries on the cost batch.
    """
    from camkit.model_spec import LoadedModel

    if isinstance(loaded, nn.Module):
        from camkit.inputs import Preprocess

        loaded = LoadedModel(loaded, Preprocess())
    model = loaded.model.eval()
    device = _model_device(model)
    methods = list(methods)
    if layers is None:
        layers = loaded.layers
    if layers is None:
        from camkit.layers import last_spatial_layer

        layers = [last_spatial_layer(model, dataset[0]["image"][None].to(device))[0]]
    layers = list(layers)

    quality, classification = evaluate_quality(model, dataset, methods, layers, batch_size, limit,
                                               device, progress)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    cost_images = torch.stack([dataset[i]["image"] for i in range(min(cost_batch, count))]).to(device)
    cost = measure_cost(model, cost_images, methods, layers, repeats=repeats)
    peer_rows, skipped = compare_peers(model, cost_images, methods, layers, repeats) if peers else ([], {})
    settings = dict(settings or {})
    settings.update(methods=methods, layers=layers, images=count, batch_size=batch_size,
                    cost_batch=int(cost_images.shape[0]), repeats=repeats)
    return BenchmarkResult(quality=quality, classification=classification, cost=cost, peers=peer_rows,
                           skipped_peers=skipped, environment=environment(device), settings=settings)


def add_arguments(parser) -> None:
    """The ``camkit benchmark`` flags (the shared model flags included)."""
    from camkit.model_spec import add_model_arguments

    parser.add_argument("--data", required=True, metavar="DATA",
                        help="DIR with annotations.json | wsol:ROOT[:METADATA] | synthetic[:N[:SIZE]]")
    add_model_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="NAME",
                        help="methods (space or comma separated; default: %(default)s)")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layers shallow to deep (default: the model's suggested layers, else the "
                             "last spatial layer)")
    parser.add_argument("--out", default="camkit-benchmark", metavar="DIR",
                        help="output folder (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per forward (16)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N images")
    parser.add_argument("--cost-batch", type=int, default=8, metavar="B",
                        help="images in the timing batch (default 8)")
    parser.add_argument("--repeats", type=int, default=3, metavar="R",
                        help="timed rounds after one warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=None, metavar="T",
                        help="torch CPU threads (default: torch's choice; recorded in the report)")
    parser.add_argument("--no-peers", action="store_true",
                        help="do not run pytorch-grad-cam / torchcam / captum even if installed")
    parser.add_argument("--no-figures", action="store_true", help="write tables only")


def run(args) -> int:
    """Run ``camkit benchmark`` from parsed flags; prints the tables and writes ``--out``."""
    from camkit.model_spec import load_model_from_args

    if args.threads:
        torch.set_num_threads(args.threads)
    split = lambda values: None if values is None else [p for v in values for p in v.split(",") if p]  # noqa: E731
    loaded = load_model_from_args(args)
    dataset = load_dataset(args.data, preprocess=loaded.preprocess, limit=args.limit)
    result = run_benchmark(loaded, dataset, methods=split(args.methods), layers=split(args.layers),
                           batch_size=args.batch_size, limit=args.limit, cost_batch=args.cost_batch,
                           repeats=args.repeats, peers=not args.no_peers, progress=True,
                           settings={"model": loaded.spec, "data": args.data})
    paths = write_outputs(result, args.out, figures=not args.no_figures)
    print(f"top-1: {_fmt(result.classification.get('top1'))}%")
    for metric in ("MaxBoxAccV2", "PxAP"):
        if metric in metrics_present(result):
            print(f"\n{metric}\n" + quality_markdown(result, metric))
    print("\ncost\n" + cost_markdown(result))
    print(f"\nwrote {paths['report']} and {len(paths) - 1} more files in {args.out}")
    return 0
