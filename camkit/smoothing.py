"""Modifiers orthogonal to the method: test-time augmentation smoothing and eigen smoothing.

* ``aug_smooth`` (:class:`AugSmooth`): the batch is explained at several scales, each also flipped
  horizontally; every map is brought back onto the original image frame (un-flipped, resized to the
  input size) and the maps of all views are averaged (then min-max normalised again when
  ``normalize=True``). The flipped copy of a scale shares the engine pass of the unflipped one.
* ``eigen_smooth``: a method whose map is a channel sum ``sum_k T_k(m)`` of "weighted activations"
  ``T`` (:attr:`camkit.methods.Method.weighted_activations`) gets instead the projection of ``T``,
  reshaped to ``(hw x C)``, on its first principal component, then a ReLU. ``T`` is, per method:
  CAM ``W[c, k] A_k``, Grad-CAM ``mean_m(g_k) A_k``, Grad-CAM++ ``w_k A_k`` (its weights), PCS
  ``g_k(m) A_k(m)`` and BagCAMs ``ReLU(t_k g^_k(m) A_k(m))``, exactly the terms each method sums over
  ``k``; pytorch-grad-cam applies the same projection to ``weights * activations``. The rows (pixels)
  are centred first, as principal components are defined (and as pytorch-grad-cam's
  ``get_2d_projection`` does); the SVD sign is fixed so that the projection correlates positively
  with the plain channel sum. Methods without weighted activations (``causal``) are refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from camkit import postprocess

__all__ = ["AugSmooth", "checked_aug_smooth", "check_eigen_smooth", "method_map", "first_component_map",
           "aug_smoothed_maps"]


@dataclass(frozen=True)
class AugSmooth:
    """Test-time augmentation: the scales (factors of the input size) and whether to add flips.

    ``aug_smooth=True`` is ``AugSmooth()``: scales ``(1.0, 1.1, 1.5)`` and horizontal flips
    (pytorch-grad-cam's set), 6 views in 3 engine passes.
    """

    scales: Tuple[float, ...] = (1.0, 1.1, 1.5)
    flip: bool = True

    def __post_init__(self):
        scales = tuple(self.scales) if isinstance(self.scales, (list, tuple)) else ()
        if not scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)
                             or s <= 0 for s in scales):
            raise ValueError(f"AugSmooth scales must be a non-empty list of numbers > 0 (factors of the input "
                             f"size), e.g. (1.0, 1.1, 1.5); got {self.scales!r}")
        if self.flip not in (True, False):
            raise ValueError(f"AugSmooth flip must be True or False, got {self.flip!r}")
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))


def checked_aug_smooth(aug_smooth):
    """``aug_smooth`` as given to the Explainer: ``False``/``None`` -> ``None``, ``True`` -> :class:`AugSmooth`."""
    if aug_smooth is None or aug_smooth is False:
        return None
    if aug_smooth is True:
        return AugSmooth()
    if isinstance(aug_smooth, AugSmooth):
        return aug_smooth
    raise TypeError(f"aug_smooth must be True, False or camkit.smoothing.AugSmooth(scales=..., flip=...), "
                    f"got {aug_smooth!r}")


def check_eigen_smooth(methods, enabled: bool) -> None:
    """Refuse ``eigen_smooth=True`` for methods whose map is not a sum of weighted activations."""
    if enabled is not True and enabled is not False:
        raise TypeError(f"eigen_smooth must be True or False, got {enabled!r}")
    refused = [m.name for m in methods if m.weighted_activations is None] if enabled else []
    if refused:
        raise ValueError(f"eigen_smooth=True needs methods whose map is a channel sum of weighted activations; "
                         f"{', '.join(refused)} is not one: drop it from methods or use eigen_smooth=False")


def first_component_map(weighted: torch.Tensor) -> torch.Tensor:
    """``(B, T, C, h, w)`` weighted activations -> ``(B, T, h, w)``: ReLU of their projection on the
    first principal component of the ``(hw x C)`` matrix (rows centred, sign as the channel sum)."""
    b, t, c, h, w = weighted.shape
    rows = weighted.flatten(-2).transpose(-1, -2)                      # (B, T, hw, C)
    centred = rows - rows.mean(dim=-2, keepdim=True)
    component = torch.linalg.svd(centred, full_matrices=False).Vh[..., 0, :]   # (B, T, C)
    projection = (centred @ component.unsqueeze(-1)).squeeze(-1)       # (B, T, hw), mean 0
    agreement = (projection * rows.sum(dim=-1)).sum(dim=-1, keepdim=True)
    projection = torch.where(agreement < 0, -projection, projection)
    return projection.relu().view(b, t, h, w)


def method_map(method, inputs, eigen_smooth: bool) -> torch.Tensor:
    """The raw ``(B, T, h, w)`` maps of ``method``: its function, or the eigen-smoothed projection."""
    if eigen_smooth:
        return first_component_map(method.weighted_activations(inputs))
    return method.fn(inputs)


def _views(batch: torch.Tensor, aug: AugSmooth):
    """``(scale, view batch)`` per scale: the resized batch, followed by its flip when ``aug.flip``."""
    h, w = batch.shape[-2:]
    for scale in aug.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        view = batch if size == (h, w) else F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
        yield scale, torch.cat([view, view.flip(-1)]) if aug.flip else view


def aug_smoothed_maps(explain_view: Callable, batch: torch.Tensor, target, aug: AugSmooth, normalize: bool):
    """Average the maps of every view of ``batch`` on its frame.

    Args:
        explain_view: ``(view batch, target) -> Explanation`` (maps upsampled to the view's size).
        batch: ``(B, C, H, W)`` the model input.
        target: ``(B,)`` / ``(B, T)`` classes, or a callable score, applied to every view.

    Returns:
        ``{key: (B, [T,] H, W) averaged maps}`` and the first view's explanation.
    """
    copies = 2 if aug.flip else 1
    view_target = torch.cat([target] * copies) if isinstance(target, torch.Tensor) else target
    sums: Dict = {}
    first = None
    for _, view in _views(batch, aug):
        explanation = explain_view(view, view_target)
        first = first or explanation
        for key, maps in explanation.maps.items():
            parts = maps.chunk(copies)
            framed = [postprocess.upsample(part.flip(-1) if i else part, tuple(batch.shape[-2:]))
                      for i, part in enumerate(parts)]
            sums[key] = sums.get(key, 0) + sum(framed)
    views = len(aug.scales) * copies
    maps = {key: total / views for key, total in sums.items()}
    if normalize:
        maps = {key: postprocess.normalize(value) for key, value in maps.items()}
    return maps, first
