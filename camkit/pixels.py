"""Pixels for pictures: any image layout to RGB floats, maps to colours, overlays, uint8.

The conventions are those of :mod:`camkit.viz` (which re-exports these names): images are RGB, maps are
``(H, W)`` floats in ``[0, 1]``, blending is done in float and rounded only by :func:`to_uint8`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

_RANGE_TOLERANCE = 1e-3


def _to_numpy(x) -> np.ndarray:
    """Tensor or array-like -> numpy array (detached, on the CPU)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def as_rgb_image(image) -> np.ndarray:
    """Any common image layout -> ``(H, W, 3)`` float64 RGB in ``[0, 1]``.

    Accepts ``(H, W, 3)``/``(H, W, 4)`` (alpha dropped), ``(3, H, W)``, ``(1, 3, H, W)``, or ``(H, W)``
    grayscale; numpy arrays or torch tensors. Integer images are read as ``0..255``; float images must
    already be in ``[0, 1]``. A float image outside that range is almost always a *normalised* network
    input, so it is refused with an explanation instead of being displayed wrongly.
    """
    array = _to_numpy(image)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of shape {tuple(array.shape)}; "
                             "index it first, e.g. images[0]")
        array = array[0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    elif array.ndim == 3:
        if array.shape[-1] in (3, 4):
            array = array[..., :3]
        elif array.shape[0] in (3, 4):
            array = np.moveaxis(array[:3], 0, -1)
        elif array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        elif array.shape[0] == 1:
            array = np.repeat(np.moveaxis(array, 0, -1), 3, axis=-1)
        else:
            raise ValueError(f"cannot read an image of shape {tuple(array.shape)}; expected (H, W, 3), "
                             "(3, H, W) or (H, W)")
    else:
        raise ValueError(f"cannot read an image of shape {tuple(array.shape)}; expected (H, W, 3), "
                         "(3, H, W) or (H, W)")

    if array.dtype == np.bool_:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError("integer images must be in 0..255 (8-bit); got values in "
                             f"[{array.min()}, {array.max()}]")
        return array.astype(np.float64) / 255.0
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("the image contains NaN or infinite values")
    if array.size and (array.min() < -_RANGE_TOLERANCE or array.max() > 1 + _RANGE_TOLERANCE):
        raise ValueError(
            f"a float image must be RGB in [0, 1]; got values in [{array.min():.3g}, {array.max():.3g}]. "
            "This looks like a normalised network input: pass the display image instead "
            "(e.g. Explanation.images_rgb), or undo the normalisation (x * std + mean).")
    return np.clip(array, 0.0, 1.0)


def as_map(saliency, size: Optional[Tuple[int, int]] = None, normalize: bool = False) -> np.ndarray:
    """A saliency map -> ``(H, W)`` float64 in ``[0, 1]``.

    Args:
        saliency: ``(H, W)`` (or ``(1, H, W)``) array or tensor.
        size: ``(H, W)`` to resize to, bilinearly with ``align_corners=False`` (camkit's upsampling),
            when the map has another size. ``None`` keeps the map's size.
        normalize: min-max normalise first (a constant map becomes zeros). Otherwise values must
            already be in ``[0, 1]``.
    """
    array = _to_numpy(saliency).astype(np.float64)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"a map must be (H, W); got shape {tuple(array.shape)}. "
                         "Pick one image (and one rank for top-k maps) first, e.g. exp.maps[key][0]")
    if not np.all(np.isfinite(array)):
        raise ValueError("the map contains NaN or infinite values")
    if normalize:
        low, high = array.min(), array.max()
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    elif array.size and (array.min() < -_RANGE_TOLERANCE or array.max() > 1 + _RANGE_TOLERANCE):
        raise ValueError(f"map values must be in [0, 1]; got [{array.min():.3g}, {array.max():.3g}]. "
                         "Pass normalize=True, or use camkit's normalised maps.")
    array = np.clip(array, 0.0, 1.0)
    if size is not None and tuple(array.shape) != tuple(size):
        array = _resize_bilinear(array, tuple(size))
    return array


def _resize_bilinear(array: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``(h, w)`` -> ``(H, W)`` with torch's bilinear interpolation, ``align_corners=False``."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return np.clip(resized[0, 0].numpy(), 0.0, 1.0)


def _colormap(cmap):
    import matplotlib

    if isinstance(cmap, str):
        return matplotlib.colormaps[cmap]
    return cmap


def colorize(saliency, cmap="jet") -> np.ndarray:
    """``(H, W)`` map in ``[0, 1]`` -> ``(H, W, 3)`` float64 RGB colours of ``cmap``.

    0 maps to the colormap's bottom colour ``cmap(0.0)`` and 1 to its top colour ``cmap(1.0)``.
    """
    values = as_map(saliency)
    return np.asarray(_colormap(cmap)(values), dtype=np.float64)[..., :3]


def overlay(image, map, cmap="jet", alpha: float = 0.5, normalize: bool = False) -> np.ndarray:
    """Blend a colourised map over an RGB image.

    ``result = (1 - alpha) * image + alpha * cmap(map)``, computed in float.

    Args:
        image: RGB image, ``(H, W, 3)`` float in ``[0, 1]`` or uint8, or ``(3, H, W)``.
        map: ``(h, w)`` map in ``[0, 1]``; resized bilinearly to ``(H, W)`` if needed.
        cmap: matplotlib colormap name or object.
        alpha: weight of the map's colour, in ``[0, 1]``.
        normalize: min-max normalise the map first.

    Returns:
        ``(H, W, 3)`` float64 RGB in ``[0, 1]``. Use :func:`to_uint8` to save it.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    rgb = as_rgb_image(image)
    values = as_map(map, size=rgb.shape[:2], normalize=normalize)
    colours = colorize(values, cmap)
    return (1.0 - alpha) * rgb + alpha * colours


def to_uint8(rgb) -> np.ndarray:
    """``(H, W, 3)`` float RGB in ``[0, 1]`` -> uint8, rounded and clipped (never wrapped)."""
    array = _to_numpy(rgb).astype(np.float64)
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
