"""Fuse the maps of several layers into one map per method: ``camkit.fuse(exp, layers, rule)``.

Rules (maps of the same size, e.g. upsampled to the input, which ``explain`` does by default):

* ``"max"``: the element-wise maximum over the layers;
* ``"mean"``: the element-wise mean;
* ``"layercam"``: LayerCAM's fusion (Jiang et al., "LayerCAM", IEEE TIP 2021, eq. 4): every layer but
  the deepest (the last of ``layers``) is scaled as ``tanh(gamma * M / max(M))`` (``gamma = 2``,
  per map, a map with max 0 stays 0), then the element-wise maximum is taken.

Fused maps are min-max normalised again when ``normalize=True`` (the default), like every map of
an :class:`~camkit.Explanation`, and keyed ``(method, "fused:<rule>")``.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import torch

from camkit import postprocess
from camkit.explanation import Explanation

__all__ = ["fuse", "FUSION_RULES", "fused_key", "checked_rule"]

FUSION_RULES = ("max", "mean", "layercam")


def checked_rule(rule, name: str = "rule") -> str:
    """``rule`` if it is one of :data:`FUSION_RULES`; anything else raises ``ValueError``."""
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r} ({name}=); choose one of {', '.join(map(repr, FUSION_RULES))}")
    return rule


def fused_key(rule: str) -> str:
    """The layer part of a fused map's key: ``"fused:max"`` for ``rule="max"``."""
    return f"fused:{rule}"


def fuse(exp: Explanation, layers: Union[None, str, Sequence[str]] = None, rule: str = "max",
         methods: Union[None, str, Sequence[str]] = None, gamma: float = 2.0,
         normalize: bool = True) -> Explanation:
    """A new :class:`~camkit.Explanation` with ``(method, "fused:<rule>")`` maps added.

    Args:
        exp: an explanation of several layers (``exp`` itself is not changed).
        layers: the layer keys to fuse, shallow to deep (``"layercam"`` leaves the last unscaled);
            ``None``: all of ``exp.layers`` in their order (``layers="all-stages"`` in ``explain``
            gives them shallow to deep).
        rule: ``"max"``, ``"mean"`` or ``"layercam"``.
        methods: the methods to fuse; ``None``: every method of ``exp`` that has a map at each layer.
        gamma: LayerCAM's scale ``gamma`` (``"layercam"`` only).
        normalize: min-max normalise each fused map to ``[0, 1]``.

    Returns:
        a copy of ``exp`` (the same tensors, new dicts and lists) whose ``maps`` also hold the
        fused maps, ``(B, H, W)`` or ``(B, T, H, W)``, and whose ``layers`` end with
        ``"fused:<rule>"``.
    """
    checked_rule(rule)
    layers = _checked_layers(exp, layers)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ValueError(f"gamma must be a number > 0 (LayerCAM uses 2), got {gamma!r}")
    names = _checked_methods(exp, methods, layers)
    fused = {}
    for method in names:
        maps = [exp.maps[(method, layer)] for layer in layers]
        shapes = {tuple(m.shape) for m in maps}
        if len(shapes) != 1:
            raise ValueError(f"{method}: the layers' maps differ in size ({sorted(shapes)}); fuse maps upsampled "
                             f"to the input (explain with upsample=True)")
        fused[(method, fused_key(rule))] = _fused(torch.stack(maps), rule, gamma, normalize)
    out = dataclasses.replace(exp, maps={**exp.maps, **fused}, notes=list(exp.notes),
                              layers=[layer for layer in exp.layers if layer != fused_key(rule)] + [fused_key(rule)],
                              methods=list(exp.methods))
    return out


def _fused(maps: torch.Tensor, rule: str, gamma: float, normalize: bool) -> torch.Tensor:
    """``(L, ..., H, W)`` maps of ``L`` layers (shallow to deep) -> ``(..., H, W)``."""
    if rule == "mean":
        result = maps.mean(dim=0)
    else:
        if rule == "layercam" and len(maps) > 1:
            maps = torch.cat([_tanh_scaled(maps[:-1], gamma), maps[-1:]])
        result = maps.amax(dim=0)
    return postprocess.normalize(result) if normalize else result


def _tanh_scaled(maps: torch.Tensor, gamma: float) -> torch.Tensor:
    """``tanh(gamma * M / max(M))`` per ``(H, W)`` map; a map whose max is <= 0 becomes 0."""
    peak = maps.flatten(-2).amax(dim=-1)[..., None, None]
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.where(peak > 0, torch.tanh(gamma * maps / safe), torch.zeros_like(maps))


def _checked_layers(exp: Explanation, layers):
    if layers is None:
        layers = [layer for layer in exp.layers if not layer.startswith("fused:")]
    elif isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(l, str) for l in layers):
        raise ValueError(f"layers must be None or a non-empty list of layer keys from exp.layers "
                         f"({exp.layers}), got {layers!r}")
    unknown = [layer for layer in layers if layer not in exp.layers]
    if unknown:
        raise ValueError(f"fuse: layer(s) {unknown} were not explained; choose from exp.layers = {exp.layers} "
                         f"or explain them first")
    if len(set(layers)) != len(layers):
        raise ValueError(f"fuse: layers lists a layer twice: {list(layers)}")
    return list(layers)


def _checked_methods(exp: Explanation, methods, layers):
    if methods is None:
        names = [m for m in exp.methods if all((m, layer) in exp.maps for layer in layers)]
        if not names:
            raise ValueError(f"fuse: no method has a map at every layer of {layers}")
        return names
    names = [methods] if isinstance(methods, str) else list(methods)
    missing = [(m, layer) for m in names for layer in layers if (m, layer) not in exp.maps]
    if missing:
        raise ValueError(f"fuse: no map for {missing}; available: {sorted(exp.maps)}")
    return names
