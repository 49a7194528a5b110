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

What the loaders accept (anything else raises :class:`MetadataError` naming the file, the line or record,
what was found and what was expected; nothing is skipped or guessed):

* Text is UTF-8; a leading byte-order mark, LF, CRLF or CR line endings, blank lines and spaces
  around fields are accepted. Other encodings (Latin-1, UTF-16), a byte-order mark or a control character inside
  the text are refused.
* ``image_ids.txt`` defines the split: each id once. Lines of the other files whose id is not in it are
  checked for syntax and then dropped (so a shortened ``image_ids.txt`` evaluates a subset).
* Each id of the split has exactly one label (a non-negative integer), exactly one size (positive
  integers), and box lines or mask lines, not both.
* Box coordinates are finite decimal numbers with ``0 <= x0 <= x1 <= width`` and
  ``0 <= y0 <= y1 <= height`` (``x1 == width`` is tolerated for exclusive-style boxes).
* Mask lines have exactly three fields; a mask path that is a number is a box line with missing fields.
  An image's ignore mask is given once (later lines of the image leave it empty or repeat it).
* ``annotations.json`` records: ``file`` (a unique non-empty string), ``label`` (a non-negative JSON
  integer), ``width``/``height`` (positive JSON integers), ``boxes_xyxy`` (one or more boxes, as above).
* Images are read with :func:`camkit.inputs.read_image` in the stored pixel frame, without EXIF
  rotation, as wsolevaluation's ``Image.open(path).convert("RGB")``: boxes and sizes refer to that frame.
  An image whose stored size differs from its recorded size is refused when its boxes are used
  (their scaling would be wrong); 16-bit and float images are scaled to 8 bits (wsolevaluation's
  ``convert`` saturates 16-bit greys).
"""
from __future__ import annotations

import codecs
import json
import math
import numbers
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from camkit.boxes import resize_boxes
from camkit.inputs import IMAGENET_MEAN, IMAGENET_STD, _three, load_rgb, read_image, resize_and_normalize

__all__ = ["WSOLDataset", "CUBDataset", "ILSVRCDataset", "OpenImagesDataset", "AnnotatedFolderDataset",
           "WSOLEvalTransform", "read_wsol_metadata", "read_annotations", "collate_wsol", "MetadataError"]


class MetadataError(ValueError):
    """A malformed metadata file; the message names the file and the line number (or JSON record)."""


_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_DECIMAL = re.compile(_NUMBER)
_FOUR_DECIMALS = re.compile(",".join([_NUMBER] * 4))
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_ODD_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufeff]")

BOX_LINE = "'image_id,x0,y0,x1,y1' (5 fields)"
MASK_LINE = "'image_id,mask_path,ignore_path' (3 fields, ignore_path may be empty)"


def _read_text(path: Path, what: str) -> str:
    """The text of a UTF-8 file, a leading byte-order mark dropped; refuses other encodings by line."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise MetadataError(f"{path}:{line}: byte 0x{data[error.start]:02x} is not UTF-8; expected UTF-8 "
                            f"text (the file looks Latin-1, Windows-1252 or UTF-16 encoded: re-save it "
                            f"as UTF-8)") from None


def _bad(path, number, line, expected):
    return MetadataError(f"{path}:{number}: malformed line {line!r}; expected {expected}")


def _fields(path: Path) -> Iterator[Tuple[int, str, List[str]]]:
    """``(line number, line, comma-separated fields)`` of the non-blank lines of a metadata file."""
    lines = _LINE_BREAK.split(_read_text(path, "wsolevaluation metadata file"))
    odd = _ODD_CHARACTER.search("\n".join(lines))
    if odd:
        number = next(n for n, line in enumerate(lines, start=1) if _ODD_CHARACTER.search(line))
        raise _bad(path, number, lines[number - 1].strip(),
                   f"plain text, found the character U+{ord(odd.group()):04X} (a byte-order mark or control "
                   f"character: were files concatenated?)")
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line:
            fields = line.split(",")
            yield number, line, [f.strip() for f in fields] if " " in line or "\t" in line else fields


def _image_ids(path: Path) -> Dict[str, int]:
    """``image_ids.txt`` -> {image id: line number}, in file order."""
    ids: Dict[str, int] = {}
    for number, line, parts in _fields(path):
        if len(parts) != 1:
            raise _bad(path, number, line, "one image id per line")
        if parts[0] in ids:
            raise _bad(path, number, line, f"each image id once; {parts[0]!r} is already on line {ids[parts[0]]}")
        ids[parts[0]] = number
    if not ids:
        raise MetadataError(f"{path}: no image ids; expected one image id per line")
    return ids


def _per_image(path: Path, names: Sequence[str], parse, expected: str) -> Dict[str, object]:
    """A file of ``image_id,value...`` lines with one line per image id -> {image id: parse(values)}."""
    table: Dict[str, object] = {}
    lines: Dict[str, int] = {}
    for number, line, parts in _fields(path):
        value = parse(parts[1:]) if len(parts) == len(names) and parts[0] else None
        if value is None:
            raise _bad(path, number, line, expected)
        if parts[0] in lines:
            raise _bad(path, number, line, f"one line per image id; {parts[0]!r} is already on line "
                                           f"{lines[parts[0]]}")
        table[parts[0]], lines[parts[0]] = value, number
    return table


def _is_unsigned(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _label(values):
    return int(values[0]) if _is_unsigned(values[0]) else None


def _size(values):
    if not (_is_unsigned(values[0]) and _is_unsigned(values[1])):
        return None
    width, height = int(values[0]), int(values[1])
    return (width, height) if width > 0 and height > 0 else None


def _is_number(text: str) -> bool:
    return bool(_DECIMAL.fullmatch(text)) or text.lower().lstrip("+-") in ("nan", "inf", "infinity")


def _box_problem(box, size) -> Optional[str]:
    """Why ``box`` (x0, y0, x1, y1) is not a box of an image of ``size`` (w, h) (``None``: it is)."""
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        return "x0 <= x1 and y0 <= y1"
    if size is not None and (x0 < 0 or y0 < 0 or x1 > size[0] or y1 > size[1]):
        return f"a box inside the {size[0]}x{size[1]} image (0 <= x <= {size[0]}, 0 <= y <= {size[1]})"
    return None


def _localization(path: Path, sizes: Dict[str, Tuple[int, int]]):
    """``localization.txt`` -> ({image id: [box]}, {image id: [(mask, ignore or None)]})."""
    boxes: Dict[str, list] = {}
    masks: Dict[str, list] = {}
    ignores: Dict[str, Tuple[str, int]] = {}
    for number, line, parts in _fields(path):
        image_id = parts[0]
        if not image_id:
            raise _bad(path, number, line, f"an image id first: a box line {BOX_LINE} or a mask line {MASK_LINE}")
        if len(parts) == 5:
            box = [float(v) for v in parts[1:]] if _FOUR_DECIMALS.fullmatch(",".join(parts[1:])) else [math.nan]
            if not all(math.isfinite(v) for v in box):
                raise _bad(path, number, line, f"a box line {BOX_LINE} with finite decimal coordinates")
            problem = _box_problem(box, sizes.get(image_id))
            if problem:
                raise _bad(path, number, line, problem)
            if image_id in masks:
                raise _bad(path, number, line, f"box lines or mask lines for {image_id!r}, not both")
            boxes.setdefault(image_id, []).append(box)
        elif len(parts) == 3:
            mask, ignore = parts[1], parts[2]
            if not mask or _is_number(mask) or _is_number(ignore):
                raise _bad(path, number, line, f"a mask line {MASK_LINE} with file paths (a box line has "
                                               f"5 fields: {BOX_LINE})")
            if image_id in boxes:
                raise _bad(path, number, line, f"box lines or mask lines for {image_id!r}, not both")
            if ignore and ignores.setdefault(image_id, (ignore, number))[0] != ignore:
                first, first_line = ignores[image_id]
                raise _bad(path, number, line, f"one ignore mask per image; {image_id!r} has {first!r} on "
                                               f"line {first_line} (leave the field empty on its other lines)")
            masks.setdefault(image_id, []).append((mask, ignore or None))
        else:
            raise _bad(path, number, line, f"a box line {BOX_LINE} or a mask line {MASK_LINE}, "
                                           f"found {len(parts)} fields")
    return boxes, masks


def read_wsol_metadata(metadata_dir) -> Dict[str, object]:
    """Parse the four wsolevaluation metadata files of one split (the rules are in the module docstring).

    Returns a dict with ``image_ids`` (list, file order), ``labels``, ``sizes`` ((w, h)), ``boxes``
    ((g, 4) float arrays, original pixel frame), ``masks`` (list of (mask_path, ignore_path or None)),
    keyed by the image ids of ``image_ids.txt`` (lines of other ids are dropped).
    Raises :class:`MetadataError` naming the file and line of a malformed line, and of an image id
    of the split missing from one of the files; ``FileNotFoundError`` for a missing file.
    """
    root = Path(metadata_dir)
    ids = _image_ids(root / "image_ids.txt")
    labels = _per_image(root / "class_labels.txt", ("image_id", "label"), _label,
                        "'image_id,label' with a non-negative integer label")
    sizes = _per_image(root / "image_sizes.txt", ("image_id", "width", "height"), _size,
                       "'image_id,width,height' with positive integer sizes")
    boxes, masks = _localization(root / "localization.txt", sizes)
    for image_id, number in ids.items():
        if image_id in labels and image_id in sizes and (image_id in boxes or image_id in masks):
            continue
        where = f"(listed on line {number} of {root / 'image_ids.txt'})"
        for name, table, form in (("class_labels.txt", labels, "image_id,label"),
                                  ("image_sizes.txt", sizes, "image_id,width,height")):
            if image_id not in table:
                raise MetadataError(f"{root / name}: no line for image id {image_id!r} {where}; add a line "
                                    f"'{form}'")
        raise MetadataError(f"{root / 'localization.txt'}: no box or mask line for image id {image_id!r} "
                            f"{where}; add a box line {BOX_LINE} or a mask line {MASK_LINE}")
    return {"image_ids": list(ids), "labels": {i: labels[i] for i in ids}, "sizes": {i: sizes[i] for i in ids},
            "boxes": {i: np.asarray(boxes[i], np.float64) for i in ids if i in boxes},
            "masks": {i: masks[i] for i in ids if i in masks}}


def _check_stored_size(path: Path, rgb: np.ndarray, size: Tuple[int, int], recorded_in: str) -> None:
    """Refuse an image whose stored ``(w, h)`` differs from the recorded size its boxes are scaled by."""
    stored = (rgb.shape[1], rgb.shape[0])
    if stored != tuple(size):
        raise MetadataError(f"{path}: the image is stored at {stored[0]}x{stored[1]} but {recorded_in} gives "
                            f"{size[0]}x{size[1]}; boxes refer to the stored pixel frame (no EXIF rotation "
                            f"is applied), so fix the recorded size or the image")


class WSOLEvalTransform:
    """The standard evaluation transform: resize to ``size`` x ``size`` (no crop), normalise, and scale
    boxes the same way (``int(x * size / width)``).

    ``__call__(image, boxes (g, 4) in the image's pixel frame, original_size=(w, h))`` returns
    ``(image (3, size, size) float tensor, boxes (g, 4) int64 tensor)``; ``image`` is a PIL image or an
    ``(H, W, 3)`` uint8 array, taken in its stored pixel frame (no EXIF rotation). Images are resized
    bilinearly with antialiasing (as torchvision's ``Resize`` on PIL images).
    """

    def __init__(self, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"size must be a positive integer (the side of the square input), got {size!r}")
        self.size = int(size)
        self.mean = _three("mean", mean)
        self.std = _three("std", std)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def image(self, image) -> torch.Tensor:
        rgb = torch.from_numpy(load_rgb(image, exif_transpose=False)).permute(2, 0, 1).float().div(255)
        return resize_and_normalize(rgb, (self.size, self.size), self.mean, self.std)

    def boxes(self, boxes, original_size) -> torch.Tensor:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        return torch.from_numpy(resize_boxes(boxes, original_size, (self.size, self.size)))

    def mask(self, mask_files: List[Path], ignore_file: Optional[Path]) -> torch.Tensor:
        """Union of instance masks (> 0 after bilinear resize), 255 where ignored and not foreground."""
        fg = torch.zeros(self.size, self.size, dtype=torch.bool)
        for path in mask_files:
            m = torch.from_numpy(read_image(path, "L").astype(np.float32))
            m = F.interpolate(m[None, None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0, 0]
            fg |= m > 0.5
        out = fg.to(torch.uint8)
        if ignore_file is not None:
            ig = torch.from_numpy(read_image(ignore_file, "L").astype(np.float32))
            ig = F.interpolate(ig[None, None], size=(self.size, self.size), mode="nearest")[0, 0] > 0.5
            out[ig & ~fg] = 255
        return out

    def __call__(self, image, boxes, original_size):
        return self.image(image), self.boxes(boxes, original_size)


class WSOLDataset(torch.utils.data.Dataset):
    """A split in the wsolevaluation metadata format (the accepted files: see the module docstring).

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
        rgb = read_image(path)
        size = self.sizes[image_id]
        if image_id in self._boxes:
            _check_stored_size(path, rgb, size, f"{self.metadata_dir / 'image_sizes.txt'}")
        item = {"image": self.transform.image(rgb), "label": self.labels[image_id], "image_id": image_id,
                "size": size, "boxes": self.transform.boxes(self.gt_boxes(index), size)}
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


ANNOTATION_KEYS = ("file", "label", "width", "height", "boxes_xyxy")


def _is_json_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _record_problem(record, seen: Dict[str, int]) -> Optional[str]:
    """What is wrong with one ``annotations.json`` record (``None``: nothing)."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}; expected an object with keys {list(ANNOTATION_KEYS)}"
    missing = [key for key in ANNOTATION_KEYS if key not in record]
    if missing:
        return f"lacks {missing}; expected the keys {list(ANNOTATION_KEYS)}"
    file, label, width, height = (record[key] for key in ANNOTATION_KEYS[:4])
    if not isinstance(file, str) or not file.strip():
        return f"has file {file!r}; expected a non-empty file name"
    if file in seen:
        return f"repeats file {file!r} of record {seen[file]}; expected each file once"
    if not _is_json_integer(label) or label < 0:
        return f"has label {label!r}; expected a non-negative integer"
    if not (_is_json_integer(width) and _is_json_integer(height) and width > 0 and height > 0):
        return f"has width/height {width!r}/{height!r}; expected positive integers (the file's pixel size)"
    boxes = record["boxes_xyxy"]
    if not (isinstance(boxes, list) and boxes and all(
            isinstance(box, list) and len(box) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
            for box in boxes)):
        return (f"has malformed boxes_xyxy {boxes!r}; expected a list of one or more [x0, y0, x1, y1] "
                f"boxes of finite numbers")
    for box in boxes:
        problem = _box_problem(box, (width, height))
        if problem:
            return f"has malformed boxes_xyxy box {box}; expected {problem}"
    return None


def read_annotations(path: Path) -> List[dict]:
    """The records of an ``annotations.json`` (the rules are in the module docstring).

    Raises :class:`MetadataError` naming the file and the line (invalid JSON, encoding) or the record.
    """
    text = _read_text(path, "annotations file")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise MetadataError(f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg}); expected a "
                            f"JSON list of records") from None
    if not isinstance(records, list) or not records:
        raise MetadataError(f"{path}: expected a JSON list of one or more records, got "
                            f"{'an empty list' if records == [] else 'a JSON ' + type(records).__name__}")
    seen: Dict[str, int] = {}
    for k, record in enumerate(records):
        problem = _record_problem(record, seen)
        if problem:
            name = f" ({record['file']})" if isinstance(record, dict) and isinstance(record.get("file"), str) else ""
            raise MetadataError(f"{path}: record {k}{name} {problem}")
        seen[record["file"]] = k
    return records


class AnnotatedFolderDataset(torch.utils.data.Dataset):
    """A folder of images plus ``annotations.json`` (the format of ``imagenet-val-dev50``).

    ``annotations.json`` is a list of records ``{"file", "label", "width", "height", "boxes_xyxy", ...}``;
    boxes are in the file's stored pixel frame and are resized from (width, height) to the transform's
    size. Images are read from ``root / "images" / file`` (or ``root / file``).
    """

    def __init__(self, root, annotations: Optional[str] = None, transform: Optional[WSOLEvalTransform] = None):
        self.root = Path(root)
        self.annotations = Path(annotations) if annotations else self.root / "annotations.json"
        self.records = read_annotations(self.annotations)
        self.image_dir = self.root / "images" if (self.root / "images").is_dir() else self.root
        self.transform = transform or WSOLEvalTransform()
        self.has_masks = False

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        r = self.records[index]
        path = self.image_dir / r["file"]
        rgb = read_image(path)
        size = (r["width"], r["height"])
        _check_stored_size(path, rgb, size, f"record {index} of {self.annotations}")
        return {"image": self.transform.image(rgb), "label": r["label"], "image_id": r["file"], "size": size,
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
