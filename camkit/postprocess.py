"""Shared post-processing of raw maps: upsampling and per-map min-max normalisation."""
from typing import Tuple

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear (``align_corners=False``) resize of ``(..., h, w)`` maps to ``(..., H, W)``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each ``(h, w)`` map of ``(..., h, w)`` to ``[0, 1]``.

    ``(m - min) / (max - min)``; a constant map becomes all zeros. The only guard is against
    dividing by zero, so the result is invariant to any positive rescaling of the raw map.
    """
    flat = maps.flatten(-2)
    shifted = flat - flat.amin(dim=-1, keepdim=True)
    peak = shifted.amax(dim=-1, keepdim=True)
    scaled = torch.where(peak > 0, shifted / torch.where(peak > 0, peak, torch.ones_like(peak)),
                         torch.zeros_like(shifted))
    return scaled.reshape(maps.shape)
