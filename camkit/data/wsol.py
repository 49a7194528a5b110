"""WSOL evaluation datasets: the wsolevaluation metadata format and a folder + ``annotations.json``.

wsolevaluation metadata (clovaai/wsolevaluation ``metadata/<CUB|ILSVRC|OpenImages>/<split>/``):

* ``image_ids.txt``: one ``image_id`` per line (a path relative to the dataset root);
* ``class_labels.txt``: ``image_id,label``;
* ``image_sizes.txt``: ``image_id,width,height`` (the original image size);
* ``localization.txt``: box lines ``image_id,x0,y0,x1,y1`` (one line per box; CUB, ILSVRC) or mask lines
  ``image_id,mask_path,ignore_path`` (one line per instance mask, ``ignore_path`` may be empty; OpenImages).

Every item is a dict: ``"image"`` (3, S, S) float tensor (resized to S x S, no crop, normalised),
``"label"`` int, ``"boxes"`` (g, 4) int64 x0,y0,x1,y1 resized with ``int(x * S / width)`` (empty (0, 4)
for mask datasets), ``"mask"`` (S, S) uint8 with 1 foreground, 0 background, 255 ignored (mask datasets
only), ``"image_id"`` str, ``"size"`` (width, height) of the original. Use :func:`collate_wsol` in a
``DataLoader``.

Masks are resized bilinearly (align_corners=False) and kept where > 0, and ignore regions with nearest
neighbour, following wsolevaluation's ``get_mask``; wsolevaluation resizes with OpenCV, whose fixed-point
bilinear rounding can differ on the outermost ring of a mask.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from camkit.boxes import resize_boxes
from camkit.inputs import resize_and_normalize

__all__ = ["WSOLDataset", "CUBDataset", "ILSVRCDataset", "OpenImagesDataset", "AnnotatedFolderDataset",
           "WSOLEvalTransform", "read_wsol_metadata", "collate_wsol", "MetadataError"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MetadataError(ValueError):
    """A malformed metadata file; the message names the file and the line number."""


def _lines(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"wsolevaluation metadata file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if line:
                yield number, line


def _bad(path, number, line, expected):
    return MetadataError(f"{path}:{number}: malformed line {line!r}; expected {expected}")


def read_wsol_metadata(metadata_dir) -> Dict[str, object]:
    """Parse the four wsolevaluation metadata files of one split.

    Returns a dict with ``image_ids`` (list), ``labels``, ``sizes`` ((w, h)), ``boxes`` ((g, 4) float arrays,
    original pixel frame), ``masks`` (list of (mask_path, ignore_path or None)) keyed by image id.
    Raises :class:`MetadataError` naming the file and line for a malformed line, and for an image id
    missing from one of the files.
    """
    root = Path(metadata_dir)
    ids = []
    path = root / "image_ids.txt"
    for number, line in _lines(path):
        if "," in line:
            raise _bad(path, number, line, "one image id per line")
        ids.append(line)
    labels, sizes = {}, {}
    path = root / "class_labels.txt"
    for number, line in _lines(path):
        parts = line.split(",")
        try:
            image_id, label = parts
            labels[image_id] = int(label)
        except ValueError:
            raise _bad(path, number, line, "'image_id,label' with an integer label") from None
    path = root / "image_sizes.txt"
    for number, line in _lines(path):
        parts = line.split(",")
        try:
            image_id, width, height = parts
            sizes[image_id] = (int(width), int(height))
        except ValueError:
            raise _bad(path, number, line, "'image_id,width,height' with integer sizes") from None
        if sizes[image_id][0] <= 0 or sizes[image_id][1] <= 0:
            raise _bad(path, number, line, "positive width and height")
    boxes: Dict[str, list] = {}
    masks: Dict[str, list] = {}
    path = root / "localization.txt"
    for number, line in _lines(path):
        parts = line.split(",")
        if len(parts) == 5:
            try:
                box = [float(v) for v in parts[1:]]
            except ValueError:
                raise _bad(path, number, line, "'image_id,x0,y0,x1,y1' with numeric coordinates") from None
            if box[2] < box[0] or box[3] < box[1]:
                raise _bad(path, number, line, "x0 <= x1 and y0 <= y1")
            boxes.setdefault(parts[0], []).append(box)
        elif len(parts) in (2, 3) and parts[1]:
            masks.setdefault(parts[0], []).append((parts[1], parts[2] if len(parts) == 3 and parts[2] else None))
        else:
            raise _bad(path, number, line, "a box line 'image_id,x0,y0,x1,y1' or a mask line "
                                           "'image_id,mask_path,ignore_path'")
    for image_id in ids:
        for name, table in (("class_labels.txt", labels), ("image_sizes.txt", sizes)):
            if image_id not in table:
                raise MetadataError(f"{root / name}: no line for image id {image_id!r} "
                                    f"(listed in {root / 'image_ids.txt'})")
    return {"image_ids": ids, "labels": labels, "sizes": sizes,
            "boxes": {k: np.asarray(v, np.float64) for k, v in boxes.items()}, "masks": masks}


class WSOLEvalTransform:
    """The standard evaluation transform: resize to ``size`` x ``size`` (no crop), normalise, and scale
    boxes the same way (``int(x * size / width)``).

    ``__call__(image: PIL.Image, boxes (g, 4) in the image's pixel frame, original_size=(w, h))`` returns
    ``(image (3, size, size) float tensor, boxes (g, 4) int64 tensor)``. Images are resized bilinearly with
    antialiasing (as torchvision's ``Resize`` on PIL images).
    """

    def __init__(self, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def image(self, image: Image.Image) -> torch.Tensor:
        rgb = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float().div(255)
        return resize_and_normalize(rgb, (self.size, self.size), self.mean, self.std)

    def boxes(self, boxes, original_size) -> torch.Tensor:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        return torch.from_numpy(resize_boxes(boxes, original_size, (self.size, self.size)))

    def mask(self, mask_files: List[Path], ignore_file: Optional[Path]) -> torch.Tensor:
        """Union of instance masks (> 0 after bilinear resize), 255 where ignored and not foreground."""
        fg = torch.zeros(self.size, self.size, dtype=torch.bool)
        for path in mask_files:
            m = torch.from_numpy(np.asarray(Image.open(path).convert("L"), np.float32))
            m = F.interpolate(m[None, None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0, 0]
            fg |= m > 0.5
        out = fg.to(torch.uint8)
        if ignore_file is not None:
            ig = torch.from_numpy(np.asarray(Image.open(ignore_file).convert("L"), np.float32))
            ig = F.interpolate(ig[None, None], size=(self.size, self.size), mode="nearest")[0, 0] > 0.5
            out[ig & ~fg] = 255
        return out

    def __call__(self, image, boxes, original_size):
        return self.image(image), self.boxes(boxes, original_size)


class WSOLDataset(torch.utils.data.Dataset):
    """A split in the wsolevaluation metadata format.

    Args:
        root: the dataset root; image ``image_id`` is ``root / image_id`` (and mask paths are relative to
            ``root``, or to ``mask_root`` when given).
        metadata_dir: the folder with the four metadata files (e.g. ``metadata/CUB/test``).
        transform: a :class:`WSOLEvalTransform` (default: 224, ImageNet mean/std).
    """

    def __init__(self, root, metadata_dir, transform: Optional[WSOLEvalTransform] = None, mask_root=None):
        self.root = Path(root)
        self.mask_root = Path(mask_root) if mask_root is not None else self.root
        self.metadata_dir = Path(metadata_dir)
        self.transform = transform or WSOLEvalTransform()
        meta = read_wsol_metadata(metadata_dir)
        self.image_ids: List[str] = meta["image_ids"]
        self.labels, self.sizes = meta["labels"], meta["sizes"]
        self._boxes, self._masks = meta["boxes"], meta["masks"]
        self.has_masks = bool(self._masks)
        missing = [i for i in self.image_ids if i not in self._boxes and i not in self._masks]
        if missing:
            raise MetadataError(f"{self.metadata_dir / 'localization.txt'}: no box or mask for "
                                f"{len(missing)} image(s), e.g. {missing[0]!r}")

    def __len__(self):
        return len(self.image_ids)

    def gt_boxes(self, index) -> np.ndarray:
        """Ground-truth boxes of item ``index`` in the original pixel frame: (g, 4) float."""
        return self._boxes.get(self.image_ids[index], np.zeros((0, 4)))

    def __getitem__(self, index):
        image_id = self.image_ids[index]
        path = self.root / image_id
        if not path.is_file():
            raise FileNotFoundError(f"image {image_id!r} not found at {path}; is root={self.root} the dataset root?")
        with Image.open(path) as img:
            image = self.transform.image(img)
        size = self.sizes[image_id]
        item = {"image": image, "label": self.labels[image_id], "image_id": image_id, "size": size,
                "boxes": self.transform.boxes(self.gt_boxes(index), size)}
        if image_id in self._masks:
            entries = self._masks[image_id]
            ignore = next((e[1] for e in entries if e[1]), None)
            item["mask"] = self.transform.mask([self.mask_root / e[0] for e in entries],
                                               self.mask_root / ignore if ignore else None)
        return item


class CUBDataset(WSOLDataset):
    """CUB-200-2011 in wsolevaluation layout: ``root`` holds ``<class folder>/<file>.jpg`` (box lines)."""


class ILSVRCDataset(WSOLDataset):
    """ILSVRC in wsolevaluation layout: ``root`` holds ``train/``, ``val/`` (box lines)."""


class OpenImagesDataset(WSOLDataset):
    """OpenImages30k in wsolevaluation layout: images and masks under ``root`` (mask lines)."""


class AnnotatedFolderDataset(torch.utils.data.Dataset):
    """A folder of images plus ``annotations.json`` (the format of ``imagenet-val-dev50``).

    ``annotations.json`` is a list of records ``{"file", "label", "width", "height", "boxes_xyxy", ...}``;
    boxes are in the file's pixel frame and are resized from (width, height) to the transform's size.
    Images are read from ``root / "images" / file`` (or ``root / file``).
    """

    def __init__(self, root, annotations: Optional[str] = None, transform: Optional[WSOLEvalTransform] = None):
        self.root = Path(root)
        path = Path(annotations) if annotations else self.root / "annotations.json"
        if not path.is_file():
            raise FileNotFoundError(f"annotations file not found: {path}")
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
        if not isinstance(records, list):
            raise MetadataError(f"{path}: expected a JSON list of records")
        for k, r in enumerate(records):
            missing = [key for key in ("file", "label", "width", "height", "boxes_xyxy") if key not in r]
            if missing:
                raise MetadataError(f"{path}: record {k} ({r.get('file', '?')}) lacks {missing}")
            b = np.asarray(r["boxes_xyxy"], np.float64)
            if b.ndim != 2 or b.shape[1] != 4 or (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
                raise MetadataError(f"{path}: record {k} ({r['file']}) has malformed boxes_xyxy {r['boxes_xyxy']}")
        self.records = records
        self.image_dir = self.root / "images" if (self.root / "images").is_dir() else self.root
        self.transform = transform or WSOLEvalTransform()
        self.has_masks = False

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        r = self.records[index]
        with Image.open(self.image_dir / r["file"]) as img:
            image = self.transform.image(img)
        size = (int(r["width"]), int(r["height"]))
        return {"image": image, "label": int(r["label"]), "image_id": r["file"], "size": size,
                "boxes": self.transform.boxes(r["boxes_xyxy"], size)}


def collate_wsol(items):
    """Batch WSOL items (dicts): the one collate of camkit's evaluation.

    Returns a dict: ``"image"`` ``(B, 3, S, S)``, ``"label"`` ``(B,)`` long, ``"boxes"`` a list of ``B``
    ``(g_i, 4)`` int64 tensors (from ``"boxes"`` or a single ``"box"``), ``"mask"`` ``(B, S, S)`` uint8 when
    every item has one (else ``None``), and ``"image_id"`` / ``"size"`` lists when every item has them.
    """
    batch = {"image": torch.stack([torch.as_tensor(i["image"]) for i in items]),
             "label": torch.tensor([int(i["label"]) for i in items], dtype=torch.long),
             "boxes": [torch.as_tensor(i["boxes"] if "boxes" in i else i["box"]).reshape(-1, 4).long()
                       for i in items]}
    masks = [i.get("mask") for i in items]
    batch["mask"] = None if any(m is None for m in masks) else torch.stack(
        [torch.as_tensor(m).to(torch.uint8) for m in masks])
    for key in ("image_id", "size"):
        if all(key in i for i in items):
            batch[key] = [i[key] for i in items]
    return batch
