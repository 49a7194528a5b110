"""Shared post-processing of raw maps: upsampling and per-map min-max normalisation.

Maps have 1, 2 or 3 trailing spatial axes (signals, images, volumes); ``size`` / ``rank`` say how many.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

#: interpolation per spatial rank, all with ``align_corners=False``
MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def upsample(maps: torch.Tensor, size: Tuple[int, ...]) -> torch.Tensor:
    """Linear / bilinear / trilinear (``align_corners=False``) resize of ``(..., *grid)`` maps to
    ``(..., *size)``, where ``len(size)`` (1, 2 or 3) is the number of spatial axes."""
    size = tuple(size)
    rank = len(size)
    if tuple(maps.shape[-rank:]) == size:
        return maps
    lead = maps.shape[:-rank]
    flat = maps.reshape(-1, 1, *maps.shape[-rank:])
    return F.interpolate(flat, size=size, mode=MODES[rank], align_corners=False).reshape(*lead, *size)


def normalize(maps: torch.Tensor, rank: int = 2) -> torch.Tensor:
    """Min-max normalise each map over its ``rank`` trailing axes of ``(..., *grid)`` to ``[0, 1]``.

    ``(m - min) / (max - min)``; a constant map becomes all zeros. The only guard is against
    dividing by zero, so the result is invariant to any positive rescaling of the raw map.
    """
    flat = maps.flatten(-rank)
    shifted = flat - flat.amin(dim=-1, keepdim=True)
    peak = shifted.amax(dim=-1, keepdim=True)
    scaled = torch.where(peak > 0, shifted / torch.where(peak > 0, peak, torch.ones_like(peak)),
                         torch.zeros_like(shifted))
    return scaled.reshape(maps.shape)
