"""KD-CI-CAM's teacher foreground/background masks (Shao et al., arXiv 2301.01060), as pure functions.

A KD-CI-CAM teacher splits each training image by its own down-branch combinational CAM::

    ccam = combinational_cam(W . F_e, down logits)        (B, h, w), min 0, ranking by the down logits
    map  = bilinear upsample of ccam to the crop size     (B, H, W)
    fg   = 1[map > seg_thr * max(map)]   (per image)       bg = 1 - fg

Then ``x * fg`` and ``x * bg`` go through the backbone, GAP and classifier (no context enhancement);
see :mod:`camkit.train.kd_recipe`. The masks carry no gradient.

As in the released code (``get_mask`` in KD-CI-CAM-teacher): the ranking is the down branch's
*predicted* one (label-free), the upsampling is bilinear with ``align_corners=False``
(``nn.Upsample(mode="bilinear")``), the maximum is taken after upsampling, and the comparison is
strict (``seg_thr = 0`` keeps every position above the map's minimum, 0). A constant combinational
CAM (all zeros once its minimum is subtracted) gives an empty foreground (``fg = 0``, ``bg = 1``).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple, Union

import torch
import torch.nn.functional as F

from camkit.methods.combinational import class_maps, combinational_cam

__all__ = ["threshold_masks", "down_branch_ccam", "teacher_masks", "check_seg_thr"]


def check_seg_thr(seg_thr: float) -> float:
    """``seg_thr`` as a float in ``[0, 1)``; a ``ValueError`` naming it otherwise."""
    if isinstance(seg_thr, bool) or not isinstance(seg_thr, (int, float)) or not math.isfinite(seg_thr) \
            or not 0 <= seg_thr < 1:
        raise ValueError(f"seg_thr must be a number in [0, 1) (a fraction of each map's maximum), got {seg_thr!r}")
    return float(seg_thr)


@torch.no_grad()
def threshold_masks(maps: torch.Tensor, seg_thr: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``fg = 1[map > seg_thr * max(map)]`` per image and ``bg = 1 - fg``.

    Args:
        maps: ``(B, H, W)`` localization maps (non-negative, e.g. a combinational CAM).
        seg_thr: in ``[0, 1)``.

    Returns:
        ``(fg, bg)``, each ``(B, H, W)`` in ``maps``' floating dtype (float32 for other dtypes), no
        gradient.
    """
    seg_thr = check_seg_thr(seg_thr)
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        raise ValueError(f"threshold_masks takes maps (B, H, W), got "
                         f"{tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__}")
    maps = maps.detach()
    maps = maps if maps.dtype == torch.float64 else maps.float()
    peak = maps.amax(dim=(1, 2), keepdim=True)
    fg = (maps > seg_thr * peak).to(maps.dtype)
    return fg, 1 - fg


def down_branch_ccam(output: Dict[str, torch.Tensor], head_weight: torch.Tensor,
                     weights="cicam-quadratic") -> torch.Tensor:
    """The down branch's combinational CAM ``(B, h, w)`` from a :class:`~camkit.models.cicam.CICAM`
    output (``"enhanced"`` ``(B, C, h, w)``, ``"down"`` ``(B, N)``) and the classifier weight ``(N, C)``.

    Ranked by the down logits (the released code's label-free ranking); min-subtracted. Differentiable
    in ``output["enhanced"]`` and ``head_weight`` (the area loss uses it with gradient).
    """
    for key in ("enhanced", "down"):
        if key not in output:
            raise ValueError(f"a CI-CAM output dict with {key!r} is needed (camkit.models.CICAM's forward); "
                             f"got keys {sorted(output)}")
    maps = class_maps(output["enhanced"], head_weight)
    return combinational_cam(maps, output["down"], weights)


@torch.no_grad()
def teacher_masks(output: Dict[str, torch.Tensor], head_weight: torch.Tensor,
                  size: Union[int, Tuple[int, int]], seg_thr: float,
                  weights="cicam-quadratic") -> Tuple[torch.Tensor, torch.Tensor]:
    """``(fg, bg)`` ``(B, 1, H, W)`` (ready to multiply ``(B, 3, H, W)`` images) for a teacher's output.

    :func:`down_branch_ccam`, upsampled bilinearly to ``size`` (the crop, ``(H, W)`` or ``S``), then
    :func:`threshold_masks`. No gradient.
    """
    seg_thr = check_seg_thr(seg_thr)
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    ccam = down_branch_ccam({k: v.detach() for k, v in output.items() if isinstance(v, torch.Tensor)},
                            head_weight.detach(), weights)
    ccam = ccam if ccam.dtype == torch.float64 else ccam.float()
    upsampled = F.interpolate(ccam.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    fg, bg = threshold_masks(upsampled, seg_thr)
    return fg.unsqueeze(1), bg.unsqueeze(1)
