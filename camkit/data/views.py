"""Dataset views that put WSOL items into the evaluation form, with the box convention of wsolevaluation."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from camkit.boxes import resize_boxes
from camkit.inputs import resize_and_normalize

__all__ = ["EvaluationView", "item_image_and_boxes", "copy_dataset_info"]


def item_image_and_boxes(item: Dict[str, Any]):
    """A WSOL item's image as ``(3, H, W)`` float in ``[0, 1]`` (uint8 divided by 255) and its boxes as a
    ``(g, 4)`` tensor (from ``"boxes"``, else the single ``"box"``)."""
    image = torch.as_tensor(item["image"])
    image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
    return image, torch.as_tensor(item["boxes"] if "boxes" in item else item["box"]).reshape(-1, 4)


def copy_dataset_info(view, dataset) -> None:
    """Give ``view`` the ``class_names`` and ``num_classes`` that ``dataset`` has."""
    for name in ("class_names", "num_classes"):
        if getattr(dataset, name, None) is not None:
            setattr(view, name, getattr(dataset, name))


class EvaluationView(torch.utils.data.Dataset):
    """A WSOL dataset resized to ``size`` x ``size`` (no crop) and normalised, for evaluation.

    Items of ``dataset`` are dicts with ``"image"`` (``(3, H, W)`` uint8, or float in ``[0, 1]``),
    ``"label"``, ``"box"`` ``(4,)`` or ``"boxes"`` ``(g, 4)`` (inclusive ``x0, y0, x1, y1`` in the image's
    pixels) and optionally ``"mask"`` ``(H, W)``. The view's items hold ``"image"`` ``(3, S, S)`` float
    (:func:`camkit.inputs.resize_and_normalize`), ``"label"``, ``"boxes"`` ``(g, 4)`` int64 rescaled
    with wsolevaluation's truncating ``int(x * S / W)`` (:func:`camkit.boxes.resize_boxes`) and
    ``"mask"`` ``(S, S)`` uint8 resized by nearest neighbour. ``size=None`` keeps each image's size.
    """

    def __init__(self, dataset, size: Optional[int], mean: Sequence[float], std: Sequence[float]):
        self.dataset = dataset
        self.size = None if size is None else int(size)
        self.mean, self.std = tuple(mean), tuple(std)
        copy_dataset_info(self, dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.dataset[index]
        image, boxes = item_image_and_boxes(item)
        height, width = image.shape[-2:]
        size = (height, width) if self.size is None else (self.size, self.size)
        out = {"image": resize_and_normalize(image, size, self.mean, self.std), "label": int(item["label"]),
               "boxes": torch.from_numpy(resize_boxes(boxes, (width, height), (size[1], size[0])))}
        if item.get("mask") is not None:
            mask = torch.as_tensor(item["mask"]).to(torch.uint8)
            if tuple(mask.shape) != size:
                mask = F.interpolate(mask.float()[None, None], size=size, mode="nearest")[0, 0].to(torch.uint8)
            out["mask"] = mask
        return out
