"""Training/evaluation image transforms with explicit randomness (a ``torch.Generator`` per sample).

The randomness of each sample depends only on ``(seed, epoch, index)``, never on the process, the
worker or the order of loading: a resumed run and a run split over N processes see the same crops.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from camkit.inputs import IMAGENET_MEAN, IMAGENET_STD, resize_and_normalize, resize_image

__all__ = ["to_float_image", "TrainTransform", "EvalTransform", "TransformedDataset", "sample_fields"]


def to_float_image(image: Any) -> torch.Tensor:
    """PIL image, ``(H, W, 3)`` array or ``(3, H, W)`` uint8/float tensor -> ``(3, H, W)`` float in [0, 1]."""
    if isinstance(image, torch.Tensor):
        tensor = image
    elif isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        if tensor.ndim == 3 and tensor.shape[-1] in (1, 3):
            tensor = tensor.permute(2, 0, 1)
    else:  # PIL
        tensor = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    return tensor.float()


class TrainTransform:
    """Resize to ``resize x resize``, random ``crop x crop`` crop, random horizontal flip, normalise.

    This is wsolevaluation's training transform (``Resize((256, 256))``, ``RandomCrop(224)``,
    ``RandomHorizontalFlip()``). Call as ``transform(image, generator)`` -> ``(3, crop, crop)`` float.
    """

    def __init__(self, resize: int = 256, crop: int = 224, flip: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if crop > resize:
            raise ValueError(f"crop size {crop} is larger than the resize size {resize}")
        self.resize, self.crop, self.flip, self.mean, self.std = resize, crop, flip, tuple(mean), tuple(std)

    def __call__(self, image: Any, generator: torch.Generator) -> torch.Tensor:
        x = resize_image(to_float_image(image), (self.resize, self.resize))
        span = self.resize - self.crop
        offsets = torch.randint(span + 1, (2,), generator=generator)
        top, left = int(offsets[0]), int(offsets[1])
        x = x[:, top: top + self.crop, left: left + self.crop]
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            x = x.flip(-1)
        return resize_and_normalize(x, None, self.mean, self.std)


class EvalTransform:
    """Resize to ``size x size`` and normalise (wsolevaluation's test transform). ``transform(image)``."""

    def __init__(self, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)

    def __call__(self, image: Any, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return resize_and_normalize(to_float_image(image), (self.size, self.size), self.mean, self.std)


def sample_fields(item: Any) -> Tuple[Any, int]:
    """``(image, label)`` from a dataset item: a dict with ``image`` and ``label``/``target``, or a tuple
    ``(image, label, ...)``."""
    if isinstance(item, dict):
        if "image" not in item:
            raise KeyError(f"dataset items need an 'image' key, got keys {sorted(item)}")
        label = item.get("label", item.get("target"))
        if label is None:
            raise KeyError(f"dataset items need a 'label' (or 'target') key, got keys {sorted(item)}")
        return item["image"], int(label)
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], int(item[1])
    raise TypeError(f"cannot read (image, label) from a dataset item of type {type(item).__name__}; "
                    "return a dict with 'image' and 'label' or a tuple (image, label, ...)")


class TransformedDataset(torch.utils.data.Dataset):
    """Wrap a dataset: item ``i`` -> ``{"image": (3, s, s) float, "label": long, "index": i}``.

    Random transforms get a generator seeded from ``(seed, epoch, i)``; call :meth:`set_epoch`.
    """

    def __init__(self, dataset, transform, seed: int = 0):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        image, label = sample_fields(self.dataset[index])
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index)) % (2 ** 63))
        return {"image": self.transform(image, g), "label": torch.tensor(label, dtype=torch.long),
                "index": torch.tensor(int(index), dtype=torch.long)}
