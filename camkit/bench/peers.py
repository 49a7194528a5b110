"""The same methods in other libraries (pytorch-grad-cam, torchcam, captum), when they are installed.

Each peer adapter turns a camkit method name into a runner ``(model, module, batch, classes) ->
(B, h, w)`` maps, or ``None`` when the peer has no such method. :func:`compare_peers` runs camkit and
each installed peer on the same batch and classes, puts both maps through the same post-processing
and reports their difference and their speed ratio.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from camkit.bench.cost import synchronize
from camkit.explain import Explainer
from camkit.layers import resolve_layer
from camkit.postprocess import normalize, upsample

__all__ = ["PEERS", "compare_peers", "same_postprocess"]

Runner = Callable[[nn.Module, nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def same_postprocess(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` maps -> ``(B, H, W)``: bilinear upsampling (``align_corners=False``), per-image min-max."""
    maps = maps.detach().float()
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = upsample(maps[:, None], tuple(size))[:, 0]
    return normalize(maps[:, None])[:, 0]


def _peer_grad_cam(method: str) -> Optional[Runner]:
    """pytorch-grad-cam's ``method`` (PCS is its HiResCAM), or ``None``."""
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


def _peer_torchcam(method: str) -> Optional[Runner]:
    """torchcam's ``method``, or ``None``."""
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


def _peer_captum(method: str) -> Optional[Runner]:
    """captum's ``LayerGradCam`` for ``"gradcam"``, else ``None``."""
    if method != "gradcam":
        return None
    from captum.attr import LayerGradCam

    def runner(model, module, batch, classes):
        with torch.enable_grad():
            maps = LayerGradCam(model, module).attribute(batch, target=classes.tolist(),
                                                          relu_attributions=True)
        return maps[:, 0]
    return runner


#: ``{peer: (module to import, adapter factory)}``.
PEERS: Dict[str, Tuple[str, Callable[[str], Optional[Runner]]]] = {
    "pytorch-grad-cam": ("pytorch_grad_cam", _peer_grad_cam),
    "torchcam": ("torchcam", _peer_torchcam),
    "captum": ("captum", _peer_captum),
}


def _error_row(peer: str, method: str, layer: str, error: Exception) -> Dict[str, Any]:
    text = str(error).splitlines()[0][:200] if str(error) else ""
    return {"peer": peer, "method": method, "layer": layer, "error": f"{type(error).__name__}: {text}"}


def _seconds(call: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of one ``call()``, its device work included."""
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def _compare_one(peer: str, runner: Runner, model: nn.Module, batch: torch.Tensor, method: str, layer: str,
                 module: nn.Module, repeats: int) -> Optional[Dict[str, Any]]:
    """The row of one (peer, method, layer); ``None`` when camkit itself cannot run it."""
    explainer = Explainer(model, methods=[method], layers=[layer])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = explainer(batch, upsample=False, normalize=False)
    except Exception:  # noqa: BLE001 - camkit cannot (e.g. CAM off the head): nothing to compare
        return None
    classes = ours.targets
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            theirs = runner(model, module, batch, classes)
            ours_t, theirs_t = [], []
            for _ in range(repeats):  # interleaved, one call of each per round
                ours_t.append(_seconds(lambda: explainer(batch), batch.device))
                theirs_t.append(_seconds(lambda: runner(model, module, batch, classes), batch.device))
    except Exception as error:  # noqa: BLE001 - a peer failing is a result, not a crash
        return _error_row(peer, method, layer, error)
    size = tuple(batch.shape[-2:])
    a = same_postprocess(ours.maps[(method, layer)].to(torch.float32), size)
    b = same_postprocess(torch.as_tensor(theirs).to(a.device, torch.float32), size)
    difference = (a - b).abs()
    camkit_seconds, peer_seconds = min(ours_t), min(theirs_t)
    return {"peer": peer, "method": method, "layer": layer, "max_abs_difference": float(difference.max()),
            "mean_abs_difference": float(difference.mean()), "camkit_seconds": camkit_seconds,
            "peer_seconds": peer_seconds, "speed_ratio": peer_seconds / camkit_seconds}


def compare_peers(model: nn.Module, batch: torch.Tensor, methods: Sequence[str], layers: Sequence[str],
                  repeats: int = 3) -> Tuple[List[Dict[str, Any]], Dict[str, str]]:
    """Run the installed peers' versions of ``methods`` at ``layers`` on ``batch``.

    Both camkit's and the peer's maps go through :func:`same_postprocess`; targets are camkit's top-1
    classes. Layers named ``"name@k"`` are skipped (peers hook modules, not the k-th call of one).

    Args:
        model: a classifier returning ``(B, K)`` logits, in eval mode.
        batch: ``(B, 3, H, W)`` preprocessed images on the model's device.
        methods, layers: what to compare, where a peer has the method.
        repeats: timed rounds of each side.

    Returns:
        ``(rows, skipped)``: each row has ``peer, method, layer, max_abs_difference,
        mean_abs_difference, camkit_seconds, peer_seconds, speed_ratio`` (``peer_seconds /
        camkit_seconds``; above 1 means camkit is faster), or ``error`` when the peer failed;
        ``skipped`` maps a peer that is not importable to the reason.
    """
    rows, skipped = [], {}
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
                    continue
                row = _compare_one(peer, runner, model, batch, method, layer, spec.module, repeats)
                if row is not None:
                    rows.append(row)
    return rows, skipped
