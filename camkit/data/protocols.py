"""Evaluation protocols: how an image, its boxes and its mask reach the model's input frame.

* ``"wsol"`` (wsolevaluation, camkit's default): resize to ``S x S`` (224) with no crop; boxes scale with
  ``int(x * S / width)`` (:class:`camkit.data.wsol.WSOLEvalTransform`, :class:`camkit.data.views.EvaluationView`).
* ``"center-crop"`` (the CAM / CI-CAM / KD-CI-CAM papers' tables): resize the shorter side to
  ``resize_size`` (256), keeping the aspect ratio, then crop the centre ``crop_size x crop_size`` (224), as
  torchvision's ``Resize(256)`` + ``CenterCrop(224)``. A ``w x h`` picture with ``w >= h`` becomes
  ``int(resize_size * w / h) x resize_size`` (the other way round for ``w < h``); the crop's top-left corner
  is ``(round((W' - crop) / 2), round((H' - crop) / 2))`` (Python's ``round``, as torchvision). Boxes are
  scaled with wsolevaluation's truncation (``int(x * W' / w)``), shifted by the crop's corner and clipped
  to ``[0, crop_size - 1]``; a box with no pixel inside the crop is dropped. An image left without a box
  counts as a localisation miss in :func:`camkit.evaluate` (IoU 0 at every threshold), and the rows report
  how many there were (``"num_images_without_box"``). Masks are resized (bilinearly and kept where
  > 0.5 for mask files, as :class:`camkit.data.wsol.WSOLEvalTransform`; by nearest neighbour for mask
  tensors) and cropped the same way.

:func:`with_protocol` puts a camkit evaluation dataset under a protocol.
"""
from __future__ import annotations

import copy
import numbers
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from camkit.boxes import resize_boxes
from camkit.data.views import EvaluationView, copy_dataset_info, item_image_and_boxes
from camkit.inputs import IMAGENET_MEAN, IMAGENET_STD, _three, load_rgb, read_image, resize_and_normalize, resize_image

__all__ = ["PROTOCOLS", "center_crop_geometry", "center_crop_boxes", "CenterCropEvalTransform", "CenterCropView",
           "with_protocol"]

PROTOCOLS = ("wsol", "center-crop")


def _checked_sizes(resize_size, crop_size) -> Tuple[int, int]:
    for name, value in (("resize_size", resize_size), ("crop_size", crop_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if crop_size > resize_size:
        raise ValueError(f"crop_size {crop_size} must not exceed resize_size {resize_size} (the crop lies inside the "
                         "resized picture), e.g. resize_size=256, crop_size=224")
    return int(resize_size), int(crop_size)


def center_crop_geometry(width: int, height: int, resize_size: int = 256,
                         crop_size: int = 224) -> Tuple[int, int, int, int]:
    """``(resized_width, resized_height, left, top)`` of resize-shorter-side + centre crop (torchvision's
    ``Resize(resize_size)`` then ``CenterCrop(crop_size)``) for a ``width x height`` picture."""
    resize_size, crop_size = _checked_sizes(resize_size, crop_size)
    if width <= height:
        resized_w, resized_h = resize_size, int(resize_size * height / width)
    else:
        resized_w, resized_h = int(resize_size * width / height), resize_size
    return resized_w, resized_h, int(round((resized_w - crop_size) / 2.0)), int(round((resized_h - crop_size) / 2.0))


def center_crop_boxes(boxes, original_size, resize_size: int = 256, crop_size: int = 224) -> np.ndarray:
    """Boxes of a ``(width, height)`` picture in the centre-crop frame: int64 ``(n', 4)``, ``n' <= n``.

    ``boxes`` ``(n, 4)`` inclusive ``x0, y0, x1, y1`` in the picture's pixels. Each is scaled to the resized
    picture with ``int(x * W' / width)`` (:func:`camkit.boxes.resize_boxes`), shifted by the crop's corner and
    clipped to ``[0, crop_size - 1]``; boxes with no pixel in the crop are dropped.
    """
    width, height = original_size
    resized_w, resized_h, left, top = center_crop_geometry(width, height, resize_size, crop_size)
    b = resize_boxes(boxes, (width, height), (resized_w, resized_h)) - np.array([left, top, left, top])
    inside = (b[:, 2] >= 0) & (b[:, 3] >= 0) & (b[:, 0] <= crop_size - 1) & (b[:, 1] <= crop_size - 1)
    return np.clip(b[inside], 0, crop_size - 1).astype(np.int64)


def _crop(tensor: torch.Tensor, left: int, top: int, crop_size: int) -> torch.Tensor:
    return tensor[..., top:top + crop_size, left:left + crop_size]


class CenterCropEvalTransform:
    """The ``"center-crop"`` protocol for file datasets, a drop-in for
    :class:`camkit.data.wsol.WSOLEvalTransform` (``image``, ``boxes``, ``mask``, ``__call__``).

    ``image(picture)`` -> ``(3, crop_size, crop_size)`` normalised float tensor; ``boxes(boxes (g, 4),
    (w, h))`` -> ``(g', 4)`` int64 tensor (:func:`center_crop_boxes`); ``mask(files, ignore_file)`` ->
    ``(crop_size, crop_size)`` uint8 (1 / 0 / 255).
    """

    def __init__(self, resize_size: int = 256, crop_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        self.resize_size, self.crop_size = _checked_sizes(resize_size, crop_size)
        self.size = self.crop_size
        self.mean, self.std = _three("mean", mean), _three("std", std)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def _geometry(self, width: int, height: int):
        return center_crop_geometry(width, height, self.resize_size, self.crop_size)

    def image(self, image) -> torch.Tensor:
        rgb = torch.from_numpy(load_rgb(image, exif_transpose=False)).permute(2, 0, 1).float().div(255)
        resized_w, resized_h, left, top = self._geometry(rgb.shape[2], rgb.shape[1])
        cropped = _crop(resize_image(rgb, (resized_h, resized_w)), left, top, self.crop_size)
        return resize_and_normalize(cropped, None, self.mean, self.std)

    def boxes(self, boxes, original_size) -> torch.Tensor:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        return torch.from_numpy(center_crop_boxes(boxes, original_size, self.resize_size, self.crop_size))

    def mask(self, mask_files: List[Path], ignore_file: Optional[Path]) -> torch.Tensor:
        """Union of instance masks (> 0.5 after a bilinear resize), 255 where ignored and not foreground."""
        if not mask_files:
            raise ValueError("mask() needs at least one instance mask file")
        fg, ignored = None, None
        for path in mask_files:
            m = torch.from_numpy(read_image(path, "L").astype(np.float32))
            resized_w, resized_h, left, top = self._geometry(m.shape[1], m.shape[0])
            m = F.interpolate(m[None, None], size=(resized_h, resized_w), mode="bilinear", align_corners=False)[0, 0]
            fg = (m > 0.5) if fg is None else fg | (m > 0.5)
        if ignore_file is not None:
            ig = torch.from_numpy(read_image(ignore_file, "L").astype(np.float32))
            resized_w, resized_h, left, top = self._geometry(ig.shape[1], ig.shape[0])
            ignored = F.interpolate(ig[None, None], size=(resized_h, resized_w), mode="nearest")[0, 0] > 0.5
        out = _crop(fg, left, top, self.crop_size).to(torch.uint8)
        if ignored is not None:
            out[_crop(ignored, left, top, self.crop_size) & (out == 0)] = 255
        return out

    def __call__(self, image, boxes, original_size):
        return self.image(image), self.boxes(boxes, original_size)


class CenterCropView(torch.utils.data.Dataset):
    """The ``"center-crop"`` protocol for a dataset of tensor items (the synthetic benchmark), as
    :class:`camkit.data.views.EvaluationView` is the ``"wsol"`` one.

    Items of ``dataset`` are dicts with ``"image"`` ``(3, H, W)`` (uint8, or float in ``[0, 1]``) at the
    picture's own resolution, ``"label"``, ``"box"`` ``(4,)`` or ``"boxes"`` ``(g, 4)`` and optionally ``"mask"``
    ``(H, W)``. The view's items: ``"image"`` ``(3, crop, crop)`` normalised, ``"label"``, ``"boxes"``
    ``(g', 4)`` int64 (:func:`center_crop_boxes`) and ``"mask"`` ``(crop, crop)`` uint8 (nearest neighbour).
    ``has_boxes``: whether the items have boxes before the crop (read from the first item).
    """

    def __init__(self, dataset, resize_size: int = 256, crop_size: int = 224,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.dataset = dataset
        self.resize_size, self.crop_size = _checked_sizes(resize_size, crop_size)
        self.mean, self.std = tuple(mean), tuple(std)
        copy_dataset_info(self, dataset)
        self.has_boxes = len(dataset) > 0 and len(item_image_and_boxes(dataset[0])[1]) > 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.dataset[index]
        image, boxes = item_image_and_boxes(item)
        height, width = image.shape[-2:]
        resized_w, resized_h, left, top = center_crop_geometry(width, height, self.resize_size, self.crop_size)
        cropped = _crop(resize_image(image, (resized_h, resized_w)), left, top, self.crop_size)
        out = {"image": resize_and_normalize(cropped, None, self.mean, self.std), "label": int(item["label"]),
               "boxes": torch.from_numpy(center_crop_boxes(boxes, (width, height), self.resize_size,
                                                           self.crop_size))}
        if item.get("mask") is not None:
            mask = torch.as_tensor(item["mask"]).to(torch.uint8)
            mask = F.interpolate(mask.float()[None, None], size=(resized_h, resized_w), mode="nearest")[0, 0]
            out["mask"] = _crop(mask, left, top, self.crop_size).to(torch.uint8)
        return out


def with_protocol(dataset, protocol: str = "wsol", resize_size: int = 256, crop_size: int = 224):
    """``dataset`` under ``protocol`` (:data:`PROTOCOLS`).

    ``"wsol"`` returns ``dataset`` as it is (camkit's evaluation datasets are in that form). ``"center-crop"``
    needs the pictures at their own resolution, so it takes a camkit evaluation dataset: one with a
    :class:`camkit.data.wsol.WSOLEvalTransform` (``WSOLDataset``, ``AnnotatedFolderDataset``, from
    :func:`camkit.data.open.open_dataset`), returned as a copy with a :class:`CenterCropEvalTransform` of the
    same mean and std, or an :class:`camkit.data.views.EvaluationView` (the synthetic benchmark), replaced
    by a :class:`CenterCropView` of the dataset under it. The result's ``has_boxes`` says whether the
    pictures have boxes before the crop (so an evaluation knows a box dataset even where the crop leaves a
    batch without any).

    Raises:
        ValueError: an unknown protocol, bad sizes, or ``"center-crop"`` for another kind of dataset.
    """
    from camkit.data.wsol import WSOLEvalTransform

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(map(repr, PROTOCOLS))} ('wsol': resize to 224 x 224 "
                         f"without crop; 'center-crop': resize 256, centre crop 224), got {protocol!r}")
    _checked_sizes(resize_size, crop_size)
    if protocol == "wsol":
        return dataset
    if isinstance(getattr(dataset, "transform", None), WSOLEvalTransform):
        old = dataset.transform
        view = copy.copy(dataset)
        view.transform = CenterCropEvalTransform(resize_size, crop_size, old.mean, old.std)
        view.has_boxes = bool(getattr(dataset, "_boxes", True))   # a WSOLDataset's box table; folders: always
        return view
    if isinstance(dataset, EvaluationView):
        return CenterCropView(dataset.dataset, resize_size, crop_size, dataset.mean, dataset.std)
    raise ValueError(f"protocol='center-crop' needs the pictures at their own resolution, so it takes a camkit "
                     f"evaluation dataset (camkit.data.open.open_dataset, WSOLDataset, AnnotatedFolderDataset or an "
                     f"EvaluationView), got {type(dataset).__name__}; crop the items yourself (e.g. with "
                     f"camkit.data.protocols.CenterCropView over the raw items) and use protocol='wsol'")
