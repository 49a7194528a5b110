"""Turning user images into model inputs, and model inputs back into displayable pictures."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _three(name: str, values) -> Tuple[float, float, float]:
    """Per-channel RGB values from 1 or 3 numbers."""
    values = (values,) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(values) not in (1, 3):
        raise ValueError(f"{name} needs 1 or 3 values (one per RGB channel), got {len(values)}")
    return tuple(float(v) for v in values) * (3 // len(values))


class Preprocess:
    """Resize to ``size`` (no crop, so the map covers the whole picture) and normalise.

    Args:
        size: ``(H, W)`` of the model input, or an int for a square; ``None`` keeps the size.
        mean, std: per-channel normalisation of RGB values in ``[0, 1]`` (3 values, or 1 for all).

    Calling it on a PIL image, an ``(H, W, 3)`` uint8 array or a file path returns a ``(3, H, W)``
    float tensor. :meth:`to_display` inverts the normalisation for pictures.
    """

    def __init__(self, size=224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
        self.mean = _three("mean", mean)
        self.std = _three("std", std)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def __call__(self, image) -> torch.Tensor:
        rgb = torch.from_numpy(load_rgb(image)).permute(2, 0, 1).float().div(255)
        if self.size is not None and tuple(rgb.shape[1:]) != self.size:
            rgb = F.interpolate(rgb[None], size=self.size, mode="bilinear", align_corners=False,
                                antialias=True)[0].clamp(0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (rgb - mean) / std

    def to_display(self, batch: torch.Tensor) -> Optional[np.ndarray]:
        """``(B, 3, H, W)`` normalised tensor -> ``(B, H, W, 3)`` float array in ``[0, 1]``.

        ``None`` for a tensor that is not ``(B, 3, H, W)`` (nothing to show as RGB).
        """
        if batch.dim() != 4 or batch.shape[1] != 3:
            return None
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        rgb = (batch.detach().float() * std + mean).clamp(0, 1)
        return rgb.permute(0, 2, 3, 1).cpu().numpy()

    def __repr__(self):
        return f"Preprocess(size={self.size}, mean={self.mean}, std={self.std})"


def load_rgb(image) -> np.ndarray:
    """A PIL image, ``(H, W, 3)`` / ``(H, W)`` uint8 array or file path -> ``(H, W, 3)`` uint8 RGB."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                return np.array(opened.convert("RGB"))
        except UnidentifiedImageError as error:
            raise ValueError(f"{path} is not an image file PIL can read") from error
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 (H, W, 3) RGB, got dtype {image.dtype}; "
                            f"for float data pass a preprocessed torch tensor (B, 3, H, W)")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image arrays must have shape (H, W, 3), got {image.shape}")
        return np.ascontiguousarray(image[:, :, :3])
    raise TypeError(f"cannot read an image from {type(image).__name__}; give a tensor (B, 3, H, W), "
                    f"a PIL image, an (H, W, 3) uint8 array or a file path")


def as_batch(images, preprocess: Optional[Preprocess]) -> Tuple[torch.Tensor, Optional[np.ndarray]]:
    """Make a ``(B, C, H, W)`` float batch from a tensor or from raw images.

    Returns:
        the batch and, when raw images were given and ``preprocess`` can invert itself, their
        ``(B, H, W, 3)`` display pictures (else ``None``).
    """
    if isinstance(images, torch.Tensor):
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dim() != 4:
            raise ValueError(f"images must have shape (B, C, H, W) or (C, H, W), got "
                             f"{tuple(images.shape)}")
        if not batch.is_floating_point():
            raise TypeError(f"image tensors must be floating point and already preprocessed, got "
                            f"dtype {batch.dtype}; pass a PIL image, uint8 array or path to have "
                            f"camkit preprocess it")
        display = preprocess.to_display(batch) if hasattr(preprocess, "to_display") else None
        return batch, display
    items: List = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("no images given")
    if all(isinstance(item, torch.Tensor) for item in items):   # a list of preprocessed (C, H, W)
        if len({tuple(item.shape) for item in items}) != 1 or items[0].dim() != 3:
            raise ValueError(f"a list of image tensors must hold (C, H, W) tensors of one shape, got "
                             f"{sorted({tuple(item.shape) for item in items})}")
        return as_batch(torch.stack(items), preprocess)
    if preprocess is None:
        raise ValueError("raw images need a preprocess callable (image -> (3, H, W) tensor)")
    batch = _stack_preprocessed([preprocess(item) for item in items])
    display = preprocess.to_display(batch) if hasattr(preprocess, "to_display") else None
    return batch, display


def _stack_preprocessed(images: List) -> torch.Tensor:
    """Stack what ``preprocess`` returned: one ``(C, H, W)`` float tensor per image, all one shape."""
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or not image.is_floating_point():
            got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise TypeError(f"preprocess returned {got} for image {index}; it must return a (C, H, W) "
                            f"float tensor (e.g. camkit.Preprocess(224))")
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        raise ValueError(f"preprocess returned images of different shapes {shapes}; give a preprocess "
                         f"that resizes to one size (e.g. camkit.Preprocess(224))")
    return torch.stack(images)


def run_model(model: torch.nn.Module, batch: torch.Tensor, shown_shape: Optional[tuple] = None):
    """``model(batch)``, with the input's shape named when the model rejects it.

    ``shown_shape`` is the shape named in the error when ``batch`` is a slice of the user's input
    (a one-image probe), so that the message speaks of the input the user gave.
    """
    try:
        return model(batch)
    except RuntimeError as error:
        shape = tuple(batch.shape) if shown_shape is None else tuple(shown_shape)
        raise RuntimeError(f"the model failed on an input batch of shape {shape} "
                           f"({batch.dtype}, {batch.device}): {error}. Check that the images are "
                           f"(B, C, H, W) with the channels, size and preprocessing the model expects.") from error
