"""Bad input to the data loaders: each malformed file gets an error naming the file and the line (or the
JSON record) and changes nothing on disk; files that used to load wrong now load right.

Loaders: read_wsol_metadata / WSOLDataset, AnnotatedFolderDataset, open_dataset, make_synthetic's
arguments, load_rgb (and the one image reader behind all of them). Every metadata file is written as exact
bytes, so the BOM, CRLF, Latin-1 and UTF-16 cases are what a user's editor would leave.
"""
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.data.open import open_dataset
from camkit.data.synthetic import make_synthetic
from camkit.data.wsol import (AnnotatedFolderDataset, MetadataError, WSOLDataset, WSOLEvalTransform,
                              read_wsol_metadata)
from camkit.inputs import ImageReadError, load_rgb

BOM = b"\xef\xbb\xbf"

# two images: a/x.png is 20x10 with two boxes, b/y.png is 8x8 with one
CLEAN = {
    "image_ids.txt": b"a/x.png\nb/y.png\n",
    "class_labels.txt": b"a/x.png,3\nb/y.png,1\n",
    "image_sizes.txt": b"a/x.png,20,10\nb/y.png,8,8\n",
    "localization.txt": b"a/x.png,1,2,4,3\na/x.png,0,0,19,9\nb/y.png,2,2,5,5\n",
}
CLEAN_BOXES = {"a/x.png": [[1, 2, 4, 3], [0, 0, 19, 9]], "b/y.png": [[2, 2, 5, 5]]}


def snapshot(folder: Path):
    """{relative path: bytes} of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_files(folder: Path, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def png_bytes(array, **save):
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG", **save)
    return out.getvalue()


def tiff_bytes(array):
    out = io.BytesIO()
    Image.fromarray(array).save(out, "TIFF")
    return out.getvalue()


def assert_refused(tmp_path, call, error, fragments):
    """``call()`` raises ``error`` with every fragment in its message, and leaves ``tmp_path`` as it was."""
    before = snapshot(tmp_path)
    with pytest.raises(error) as raised:
        call()
    for fragment in fragments:
        assert fragment in str(raised.value), (fragment, str(raised.value))
    assert snapshot(tmp_path) == before


def as_loaded(meta):
    return {"ids": meta["image_ids"], "labels": meta["labels"], "sizes": meta["sizes"],
            "boxes": {k: v.tolist() for k, v in meta["boxes"].items()}, "masks": meta["masks"]}


# ------------------------------------------------------------------- wsolevaluation metadata: refused
# (case, file, its bytes, message fragments after "<file>:<line>:" or "<file>:")
METADATA_CASES = [
    ("bom-inside-ids", "image_ids.txt", b"a/x.png\n" + BOM + b"b/y.png\n", 2, ["U+FEFF"]),
    ("control-char", "class_labels.txt", b"a/x.png,3\nb/y.png\x00,1\n", 2, ["U+0000"]),
    ("latin1-labels", "class_labels.txt", b"a/x.png,3\nb/y.png,1 # caf\xe9\n", 2, ["byte 0xe9 is not UTF-8"]),
    ("utf16-ids", "image_ids.txt", "a/x.png\nb/y.png\n".encode("utf-16"), 1, ["byte 0xff is not UTF-8"]),
    ("duplicate-id", "image_ids.txt", b"a/x.png\nb/y.png\na/x.png\n", 3, ["'a/x.png' is already on line 1"]),
    ("comma-in-id", "image_ids.txt", b"a/x.png,3\nb/y.png\n", 1, ["one image id per line"]),
    ("conflicting-label", "class_labels.txt", b"a/x.png,3\nb/y.png,1\na/x.png,4\n", 3,
     ["'a/x.png' is already on line 1"]),
    ("repeated-label", "class_labels.txt", b"a/x.png,3\na/x.png,3\nb/y.png,1\n", 2, ["already on line 1"]),
    ("negative-label", "class_labels.txt", b"a/x.png,3\nb/y.png,-1\n", 2, ["non-negative integer label"]),
    ("float-label", "class_labels.txt", b"a/x.png,3.0\nb/y.png,1\n", 1, ["non-negative integer label"]),
    ("empty-id-label", "class_labels.txt", b",3\na/x.png,3\nb/y.png,1\n", 1, ["'image_id,label'"]),
    ("float-size", "image_sizes.txt", b"a/x.png,20,10\nb/y.png,8.0,8\n", 2, ["positive integer sizes"]),
    ("zero-size", "image_sizes.txt", b"a/x.png,0,10\nb/y.png,8,8\n", 1, ["positive integer sizes"]),
    ("two-field-size", "image_sizes.txt", b"a/x.png,20,10\nb/y.png,8\n", 2, ["'image_id,width,height'"]),
    ("repeated-size", "image_sizes.txt", b"a/x.png,20,10\nb/y.png,8,8\nb/y.png,9,9\n", 3, ["already on line 2"]),
    ("nan-box", "localization.txt", b"a/x.png,nan,2,4,3\nb/y.png,2,2,5,5\n", 1, ["finite decimal coordinates"]),
    ("inf-box", "localization.txt", b"a/x.png,1,2,inf,3\nb/y.png,2,2,5,5\n", 1, ["finite decimal"]),
    ("overflow-box", "localization.txt", b"a/x.png,1,2,1e999,3\nb/y.png,2,2,5,5\n", 1, ["finite decimal"]),
    ("underscore-box", "localization.txt", b"a/x.png,1,2,1_0,3\nb/y.png,2,2,5,5\n", 1, ["finite decimal"]),
    ("word-box", "localization.txt", b"a/x.png,1,2,zz,3\nb/y.png,2,2,5,5\n", 1, ["finite decimal"]),
    ("inverted-box", "localization.txt", b"a/x.png,5,2,4,3\nb/y.png,2,2,5,5\n", 1, ["x0 <= x1 and y0 <= y1"]),
    ("negative-box", "localization.txt", b"a/x.png,-1,2,4,3\nb/y.png,2,2,5,5\n", 1,
     ["a box inside the 20x10 image"]),
    ("box-past-width", "localization.txt", b"a/x.png,1,2,21,3\nb/y.png,2,2,5,5\n", 1,
     ["a box inside the 20x10 image"]),
    ("box-past-height", "localization.txt", b"a/x.png,1,2,4,3\nb/y.png,2,2,5,9\n", 2,
     ["a box inside the 8x8 image"]),
    ("three-numeric-fields", "localization.txt", b"a/x.png,1,2\nb/y.png,2,2,5,5\n", 1,
     ["with file paths (a box line has 5 fields"]),
    ("numeric-ignore", "localization.txt", b"a/x.png,m/x.png,7\nb/y.png,2,2,5,5\n", 1, ["with file paths"]),
    ("two-fields", "localization.txt", b"a/x.png,m/x.png\nb/y.png,2,2,5,5\n", 1, ["found 2 fields"]),
    ("four-fields", "localization.txt", b"a/x.png,1,2,3\nb/y.png,2,2,5,5\n", 1, ["found 4 fields"]),
    ("boxes-and-masks", "localization.txt", b"a/x.png,1,2,4,3\na/x.png,m/x.png,\nb/y.png,2,2,5,5\n", 2,
     ["box lines or mask lines for 'a/x.png', not both"]),
    ("two-ignores", "localization.txt", b"a/x.png,1,2,4,3\nb/y.png,m/y.png,m/i1.png\nb/y.png,m/y2.png,m/i2.png\n",
     3, ["one ignore mask per image; 'b/y.png' has 'm/i1.png' on line 2"]),
]


@pytest.mark.parametrize("case, name, data, line, fragments", METADATA_CASES, ids=[c[0] for c in METADATA_CASES])
def test_malformed_metadata_is_refused_by_file_and_line(tmp_path, case, name, data, line, fragments):
    meta = write_files(tmp_path / "meta", dict(CLEAN, **{name: data}))
    expected = [f"{meta / name}:{line}:"] + fragments
    assert_refused(tmp_path, lambda: read_wsol_metadata(meta), MetadataError, expected)
    assert_refused(tmp_path, lambda: WSOLDataset(tmp_path, meta), MetadataError, expected)
    assert_refused(tmp_path, lambda: open_dataset(str(tmp_path), metadata=meta), MetadataError, expected)


# (case, file, its bytes, message fragments; {meta} is the metadata folder)
MISSING_CASES = [
    ("no-ids", "image_ids.txt", b"\n\n", ["{meta}/image_ids.txt: no image ids"]),
    ("missing-label", "class_labels.txt", b"a/x.png,3\n",
     ["{meta}/class_labels.txt: no line for image id 'b/y.png' (listed on line 2 of {meta}/image_ids.txt)"]),
    ("missing-size", "image_sizes.txt", b"b/y.png,8,8\n",
     ["{meta}/image_sizes.txt: no line for image id 'a/x.png' (listed on line 1"]),
    ("missing-box", "localization.txt", b"a/x.png,1,2,4,3\n",
     ["{meta}/localization.txt: no box or mask line for image id 'b/y.png' (listed on line 2"]),
    ("labels-of-another-split", "class_labels.txt", b"c/z.png,3\n", ["no line for image id 'a/x.png'"]),
]


@pytest.mark.parametrize("case, name, data, fragments", MISSING_CASES, ids=[c[0] for c in MISSING_CASES])
def test_an_image_missing_from_a_file_is_named_with_its_line(tmp_path, case, name, data, fragments):
    meta = write_files(tmp_path / "meta", dict(CLEAN, **{name: data}))
    expected = [f.format(meta=meta) for f in fragments]
    assert_refused(tmp_path, lambda: read_wsol_metadata(meta), MetadataError, expected)


def test_a_missing_metadata_file_is_named(tmp_path):
    files = dict(CLEAN)
    del files["image_sizes.txt"]
    meta = write_files(tmp_path / "meta", files)
    assert_refused(tmp_path, lambda: read_wsol_metadata(meta), FileNotFoundError, [str(meta / "image_sizes.txt")])


# ------------------------------------------------------------------- wsolevaluation metadata: accepted
def _with_bom(files, name):
    return dict(files, **{name: BOM + files[name]})


def _crlf(files):
    return {name: data.replace(b"\n", b"\r\n") + b"\r\n" for name, data in files.items()}


ACCEPTED_VARIANTS = {
    "bom-localization": _with_bom(CLEAN, "localization.txt"),
    "bom-ids": _with_bom(CLEAN, "image_ids.txt"),
    "bom-labels": _with_bom(CLEAN, "class_labels.txt"),
    "bom-sizes": _with_bom(CLEAN, "image_sizes.txt"),
    "crlf-and-trailing-blank-line": _crlf(CLEAN),
    "cr-only": {name: data.replace(b"\n", b"\r") for name, data in CLEAN.items()},
    "no-final-newline": {name: data.rstrip(b"\n") for name, data in CLEAN.items()},
    "spaces-around-fields": dict(CLEAN, **{"class_labels.txt": b"a/x.png , 3\n  b/y.png,1  \n"}),
    "bom-and-crlf-everywhere": {name: BOM + data for name, data in _crlf(CLEAN).items()},
}


@pytest.mark.parametrize("variant", list(ACCEPTED_VARIANTS))
def test_bom_crlf_and_spacing_load_like_the_clean_files(tmp_path, variant):
    clean = as_loaded(read_wsol_metadata(write_files(tmp_path / "clean", CLEAN)))
    assert clean == {"ids": ["a/x.png", "b/y.png"], "labels": {"a/x.png": 3, "b/y.png": 1},
                     "sizes": {"a/x.png": (20, 10), "b/y.png": (8, 8)}, "boxes": CLEAN_BOXES, "masks": {}}
    assert as_loaded(read_wsol_metadata(write_files(tmp_path / "variant", ACCEPTED_VARIANTS[variant]))) == clean


def test_lines_of_images_outside_the_split_are_dropped(tmp_path):
    """image_ids.txt defines the split: a shortened id list evaluates a subset, other ids do not leak."""
    meta = write_files(tmp_path, dict(CLEAN, **{"image_ids.txt": b"b/y.png\n"}))
    loaded = read_wsol_metadata(meta)
    assert loaded["labels"] == {"b/y.png": 1} and loaded["sizes"] == {"b/y.png": (8, 8)}
    assert {k: v.tolist() for k, v in loaded["boxes"].items()} == {"b/y.png": [[2, 2, 5, 5]]}


def test_a_box_may_end_on_the_image_border(tmp_path):
    """x1 == width is tolerated (exclusive-style annotations); one pixel further is refused above."""
    meta = write_files(tmp_path, dict(CLEAN, **{"localization.txt": b"a/x.png,0,0,20,10\nb/y.png,0.5,0,8,8\n"}))
    boxes = read_wsol_metadata(meta)["boxes"]
    assert boxes["a/x.png"].tolist() == [[0, 0, 20, 10]] and boxes["b/y.png"].tolist() == [[0.5, 0, 8, 8]]


# ------------------------------------------------------------------- WSOLDataset images and masks
def _dataset_root(tmp_path, localization=None, images=None):
    """Metadata in tmp_path/meta and images in tmp_path/data (a: 10x20 grey 200, b: 8x8 black)."""
    meta = write_files(tmp_path / "meta", dict(CLEAN, **({"localization.txt": localization} if localization else {})))
    default = {"a/x.png": png_bytes(np.full((10, 20, 3), 200, np.uint8)),
               "b/y.png": png_bytes(np.zeros((8, 8, 3), np.uint8))}
    root = write_files(tmp_path / "data", dict(default, **(images or {})))
    return root, meta


def _truncated_png():
    data = png_bytes(np.arange(64 * 64 * 3, dtype=np.uint32).astype(np.uint8).reshape(64, 64, 3))
    return data[: len(data) // 2]


DATASET_IMAGE_CASES = [
    ("size-differs-from-image_sizes", None, {"a/x.png": png_bytes(np.zeros((20, 10, 3), np.uint8))},
     MetadataError, ["{root}/a/x.png: the image is stored at 10x20 but {meta}/image_sizes.txt gives 20x10"]),
    ("truncated-image", None, {"a/x.png": _truncated_png()}, ImageReadError,
     ["{root}/a/x.png: the image is corrupt or truncated"]),
    ("not-an-image", None, {"a/x.png": b"GIF89a-not-really"}, ImageReadError,
     ["{root}/a/x.png is not an image file"]),
    ("truncated-mask", b"a/x.png,m/x.png,\nb/y.png,2,2,5,5\n", {"m/x.png": _truncated_png()}, ImageReadError,
     ["{root}/m/x.png: the image is corrupt or truncated"]),
    ("missing-ignore-mask", b"a/x.png,m/x.png,m/ignore.png\nb/y.png,2,2,5,5\n",
     {"m/x.png": png_bytes(np.zeros((10, 20), np.uint8))}, FileNotFoundError, ["{root}/m/ignore.png"]),
    ("float-image-out-of-range", None, {"a/x.png": tiff_bytes(np.full((10, 20), 2.0, np.float32))},
     ImageReadError, ["{root}/a/x.png: float pixels (mode 'F') must lie in [0, 1], found [2, 2]"]),
]


@pytest.mark.parametrize("case, localization, images, error, fragments", DATASET_IMAGE_CASES,
                         ids=[c[0] for c in DATASET_IMAGE_CASES])
def test_bad_dataset_images_are_refused_by_file(tmp_path, case, localization, images, error, fragments):
    root, meta = _dataset_root(tmp_path, localization, images)
    dataset = WSOLDataset(root, meta, transform=WSOLEvalTransform(16))
    expected = [f.format(root=root, meta=meta) for f in fragments]
    assert_refused(tmp_path, lambda: dataset[0], error, expected)


def test_a_16_bit_png_dataset_item_equals_the_8_bit_picture(tmp_path):
    """Was 99.6% saturated: Pillow's convert("RGB") clips I;16 at 255 instead of scaling."""
    stored = np.array([[0, 257, 65535, 1000], [30000, 65534, 128, 129], [514, 771, 0, 65535], [1, 2, 3, 4]],
                      np.uint16)
    # round(v / 257): 3.89 -> 4, 116.73 -> 117, 254.996 -> 255, 0.498 -> 0, 0.502 -> 1, 2, 3, small ones -> 0
    eight_bit = np.array([[0, 1, 255, 4], [117, 255, 0, 1], [2, 3, 0, 255], [0, 0, 0, 0]], np.uint8)
    meta = write_files(tmp_path / "meta", {"image_ids.txt": b"g.png\n", "class_labels.txt": b"g.png,0\n",
                                           "image_sizes.txt": b"g.png,4,4\n", "localization.txt": b"g.png,0,0,3,3\n"})
    Image.fromarray(stored).save(tmp_path / "g.png")
    item = WSOLDataset(tmp_path, meta, transform=WSOLEvalTransform(4, mean=0.0, std=1.0))[0]
    expected = torch.from_numpy(eight_bit).float().div(255).expand(3, 4, 4)
    torch.testing.assert_close(item["image"], expected, rtol=0, atol=0)


def test_dataset_images_stay_in_the_stored_frame_despite_exif(tmp_path):
    """Boxes and image_sizes.txt refer to the stored pixels (as wsolevaluation): no EXIF rotation."""
    meta = write_files(tmp_path / "meta", {"image_ids.txt": b"p.jpg\n", "class_labels.txt": b"p.jpg,0\n",
                                           "image_sizes.txt": b"p.jpg,32,16\n",
                                           "localization.txt": b"p.jpg,0,0,15,15\n"})
    _exif_jpeg(tmp_path / "p.jpg", orientation=6)
    item = WSOLDataset(tmp_path, meta, transform=WSOLEvalTransform(16, mean=0.0, std=1.0))[0]
    left, right = item["image"][:, :, :6].mean((1, 2)), item["image"][:, :, 10:].mean((1, 2))
    assert left[0] > 0.8 and left[2] < 0.2 and right[2] > 0.8 and right[0] < 0.2   # red left, blue right, as stored


TRANSFORM_CASES = [
    ({"size": 0}, "size must be a positive integer"),
    ({"size": 2.5}, "size must be a positive integer"),
    ({"size": True}, "size must be a positive integer"),
    ({"mean": (0.5, 0.5)}, "mean needs 1 or 3 values"),
    ({"std": (0.5, 0.0, 0.5)}, "std must be positive"),
]


@pytest.mark.parametrize("arguments, fragment", TRANSFORM_CASES, ids=[str(c[0]) for c in TRANSFORM_CASES])
def test_the_eval_transform_refuses_bad_arguments(arguments, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        WSOLEvalTransform(**arguments)


def test_the_eval_transform_takes_a_numpy_integer_size():
    assert WSOLEvalTransform(np.int64(16)).size == 16


# ------------------------------------------------------------------- annotations.json
def _record(file="a.png", **changes):
    record = {"file": file, "label": 1, "width": 4, "height": 4, "boxes_xyxy": [[0, 0, 3, 3]]}
    record.update(changes)
    return record


def _json(records):
    return json.dumps(records, indent=1).encode()


# (case, annotations.json bytes, where: what follows the file name, message fragments)
ANNOTATION_CASES = [
    ("latin1", _json([_record()]).replace(b'"a.png"', b'"\xe9.png"'), ":3:", ["byte 0xe9 is not UTF-8"]),
    ("broken-json", _json([_record()])[:-3], ":15:2:", ["not valid JSON"]),
    ("bom-then-broken", BOM + b"[{,]", ":1:3:", ["not valid JSON"]),
    ("not-a-list", _json({"file": "a.png"}), ":", ["expected a JSON list", "a JSON dict"]),
    ("empty-list", b"[]", ":", ["an empty list"]),
    ("record-not-object", b"[3]", ": record 0 ", ["is a JSON int"]),
    ("missing-key", _json([_record(), {"file": "b.png", "label": 1}]), ": record 1 (b.png) ",
     ["lacks ['width', 'height', 'boxes_xyxy']"]),
    ("duplicate-file", _json([_record(), _record(label=2)]), ": record 1 (a.png) ",
     ["repeats file 'a.png' of record 0"]),
    ("empty-file-name", _json([_record(file="")]), ": record 0 () ", ["has file ''"]),
    ("negative-label", _json([_record(label=-1)]), ": record 0 (a.png) ", ["has label -1"]),
    ("float-label", _json([_record(label=1.5)]), ": record 0 (a.png) ", ["has label 1.5"]),
    ("bool-label", _json([_record(label=True)]), ": record 0 (a.png) ", ["has label True"]),
    ("string-label", _json([_record(label="1")]), ": record 0 (a.png) ", ["has label '1'"]),
    ("float-width", _json([_record(width=4.5)]), ": record 0 (a.png) ", ["has width/height 4.5/4"]),
    ("zero-height", _json([_record(height=0)]), ": record 0 (a.png) ", ["has width/height 4/0"]),
    ("nan-box", b'[{"file": "a.png", "label": 1, "width": 4, "height": 4, "boxes_xyxy": [[0, NaN, 3, 3]]}]',
     ": record 0 (a.png) ", ["has malformed boxes_xyxy"]),
    ("no-boxes", _json([_record(boxes_xyxy=[])]), ": record 0 (a.png) ", ["has malformed boxes_xyxy []"]),
    ("short-box", _json([_record(boxes_xyxy=[[0, 0, 3]])]), ": record 0 (a.png) ",
     ["malformed boxes_xyxy [[0, 0, 3]]"]),
    ("inverted-box", _json([_record(boxes_xyxy=[[3, 0, 1, 2]])]), ": record 0 (a.png) ", ["x0 <= x1 and y0 <= y1"]),
    ("box-outside", _json([_record(boxes_xyxy=[[0, 0, 3, 5]])]), ": record 0 (a.png) ", ["a box inside the 4x4 image"]),
    ("negative-box", _json([_record(boxes_xyxy=[[-1, 0, 3, 3]])]), ": record 0 (a.png) ",
     ["a box inside the 4x4 image"]),
]


@pytest.mark.parametrize("case, data, where, fragments", ANNOTATION_CASES, ids=[c[0] for c in ANNOTATION_CASES])
def test_malformed_annotations_are_refused_by_file_and_record(tmp_path, case, data, where, fragments):
    write_files(tmp_path, {"annotations.json": data, "images/a.png": png_bytes(np.zeros((4, 4, 3), np.uint8))})
    expected = [str(tmp_path / "annotations.json") + where] + fragments
    assert_refused(tmp_path, lambda: AnnotatedFolderDataset(tmp_path), MetadataError, expected)
    assert_refused(tmp_path, lambda: open_dataset(str(tmp_path)), MetadataError, expected)


def test_a_bom_prefixed_annotations_file_loads_like_the_clean_one(tmp_path):
    records = [_record(), _record("b.png", label=0, boxes_xyxy=[[1.5, 0, 4, 2]])]
    clean = write_files(tmp_path / "clean", {"annotations.json": _json(records)})
    bom = write_files(tmp_path / "bom", {"annotations.json": BOM + _json(records).replace(b"\n", b"\r\n")})
    assert AnnotatedFolderDataset(clean).records == AnnotatedFolderDataset(bom).records == records


def test_an_annotated_image_of_another_size_than_recorded_is_refused(tmp_path):
    write_files(tmp_path, {"annotations.json": _json([_record()]),
                           "images/a.png": png_bytes(np.zeros((4, 6, 3), np.uint8))})
    dataset = AnnotatedFolderDataset(tmp_path)
    assert_refused(tmp_path, lambda: dataset[0], MetadataError,
                   [f"{tmp_path / 'images' / 'a.png'}: the image is stored at 6x4 but record 0 of "
                    f"{tmp_path / 'annotations.json'} gives 4x4"])


# ------------------------------------------------------------------- open_dataset
def _open_case(tmp_path, case):
    write_files(tmp_path / "plain", {"readme.txt": b"nothing here"})
    return {
        "not-a-folder": (lambda: open_dataset(str(tmp_path / "nope")), FileNotFoundError,
                         [f"--data '{tmp_path / 'nope'}' is not an existing folder"]),
        "neither-form": (lambda: open_dataset(str(tmp_path / "plain")), FileNotFoundError,
                         ["no annotations.json", str(tmp_path / "plain" / "metadata" / "test")]),
        "metadata-not-a-folder": (lambda: open_dataset(str(tmp_path / "plain"), metadata=tmp_path / "meta"),
                                  FileNotFoundError, [f"--metadata '{tmp_path / 'meta'}' is not an existing folder"]),
        "spec-not-a-string": (lambda: open_dataset(3), TypeError, ["spec must be a string or a path"]),
        "bad-split": (lambda: open_dataset("synthetic", split="val"), ValueError, ["'train' or 'test'"]),
        "bad-image-size": (lambda: open_dataset(str(tmp_path), image_size=0), ValueError, ["image_size"]),
        "normalize-not-a-pair": (lambda: open_dataset("synthetic", normalize=(0.5,)), ValueError, ["(mean, std)"]),
        "normalize-two-values": (lambda: open_dataset("synthetic", normalize=((0.5, 0.5), 0.5)), ValueError,
                                 ["mean needs 1 or 3 values"]),
        "normalize-zero-std": (lambda: open_dataset("synthetic", normalize=(0.5, 0.0)), ValueError,
                               ["std must be positive"]),
        "metadata-with-synthetic": (lambda: open_dataset("synthetic", metadata=tmp_path), ValueError,
                                    ["--metadata applies to a wsolevaluation dataset root"]),
        "unknown-key": (lambda: open_dataset("synthetic:num_image=5"), ValueError,
                        ["--data 'synthetic:num_image=5': unknown key(s) ['num_image']", "num_images"]),
        "repeated-key": (lambda: open_dataset("synthetic:seed=1,seed=2"), ValueError,
                         ["--data 'synthetic:seed=1,seed=2': seed is given twice"]),
        "no-equals": (lambda: open_dataset("synthetic:num_images"), ValueError,
                      ["--data 'synthetic:num_images': expected KEY=VALUE"]),
        "return-layers": (lambda: open_dataset("synthetic:return_layers=True"), ValueError, ["unknown key(s)"]),
        "bad-value": (lambda: open_dataset("synthetic:num_images=lots"), ValueError,
                      ["--data 'synthetic:num_images=lots': num_images must be an integer >= 1, got 'lots'"]),
        "bad-seed-test-split": (lambda: open_dataset("synthetic:seed=x"), ValueError,
                                ["--data 'synthetic:seed=x': seed must be an integer, got 'x'"]),
        "bool-seed": (lambda: open_dataset("synthetic:seed=True"), ValueError, ["seed must be an integer, got True"]),
    }[case]


OPEN_CASES = ["not-a-folder", "neither-form", "metadata-not-a-folder", "spec-not-a-string", "bad-split",
              "bad-image-size", "normalize-not-a-pair", "normalize-two-values", "normalize-zero-std",
              "metadata-with-synthetic", "unknown-key", "repeated-key", "no-equals", "return-layers", "bad-value",
              "bad-seed-test-split", "bool-seed"]


@pytest.mark.parametrize("case", OPEN_CASES)
def test_open_dataset_refuses_bad_specs(tmp_path, case):
    call, error, fragments = _open_case(tmp_path, case)
    assert_refused(tmp_path, call, error, fragments)


def test_open_dataset_takes_a_path_object(tmp_path):
    write_files(tmp_path, {"annotations.json": _json([_record()]),
                           "images/a.png": png_bytes(np.zeros((4, 4, 3), np.uint8))})
    assert len(open_dataset(tmp_path)) == 1


# ------------------------------------------------------------------- make_synthetic arguments
SYNTHETIC_CASES = [
    ({"num_images": 0}, "num_images must be an integer >= 1, got 0"),
    ({"num_images": 2.5}, "num_images must be an integer >= 1, got 2.5"),
    ({"num_images": True}, "num_images must be an integer >= 1, got True"),
    ({"image_size": 8}, "image_size must be an integer >= 16, got 8"),
    ({"image_size": 32.0}, "image_size must be an integer >= 16, got 32.0"),
    ({"num_classes": 1}, "num_classes must be an integer in [2, 64], got 1"),
    ({"num_classes": 65}, "num_classes must be an integer in [2, 64], got 65"),
    ({"num_classes": 9}, "num_classes=9 > 8 needs part_radius > 0"),
    ({"context": "swap"}, "context must be 'habitat', 'uniform' or 'swapped', got 'swap'"),
    ({"habitat_p": 1.5}, "habitat_p is a probability in [0, 1], got 1.5"),
    ({"habitat_p": math.nan}, "habitat_p is a probability in [0, 1], got nan"),
    ({"habitat_p": "0.8"}, "habitat_p is a probability in [0, 1], got '0.8'"),
    ({"num_neutral": -1}, "num_neutral must be an integer >= 0, got -1"),
    ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"world_seed": None}, "world_seed must be an integer, got None"),
    ({"chunk_size": 0}, "chunk_size must be an integer >= 1, got 0"),
    ({"part_radius": -0.1}, "part_radius is in object units"),
    ({"part_radius": 2.0}, "a number in [0, 1], got 2.0"),
    ({"scale_range": (0.0, 0.2)}, "0 < low <= high <= 0.4844"),
    ({"scale_range": (0.3, 0.2)}, "got (0.3, 0.2)"),
    ({"scale_range": (0.1, 0.6)}, "(the object must fit the 96x96 image), got (0.1, 0.6)"),
    ({"scale_range": (0.1,)}, "scale_range is (low, high)"),
    ({"scale_range": 0.2}, "scale_range is (low, high)"),
    ({"scale_range": (math.nan, 0.2)}, "scale_range is (low, high)"),
    ({"scale_range": (0.1, 0.45), "image_size": 16}, "high <= 0.4062"),
    ({"context": "swapped", "num_classes": 2, "num_neutral": 0}, "at least 3 textures"),
    ({"scale_range": (0.001, 0.001), "image_size": 16, "num_images": 4}, "4 of 4 images have no object pixel"),
]


@pytest.mark.parametrize("arguments, fragment", SYNTHETIC_CASES, ids=[str(c[0]) for c in SYNTHETIC_CASES])
def test_make_synthetic_refuses_bad_arguments(tmp_path, arguments, fragment):
    options = dict({"num_images": 2, "image_size": 96}, **arguments)
    assert_refused(tmp_path, lambda: make_synthetic(**options), ValueError, [fragment])


# ------------------------------------------------------------------- load_rgb and the image reader
def _exif_jpeg(path, orientation):
    """A 32x16 JPEG stored red on the left half and blue on the right, with an EXIF orientation."""
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :16, 0] = 255
    stored[:, 16:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, "JPEG", quality=95, subsampling=0, exif=exif)
    return path


def _load_rgb_case(tmp_path, case):
    path = tmp_path / "picture.png"
    if case == "missing":
        return path, FileNotFoundError, [f"image file not found: {path}"]
    if case == "text-file":
        path.write_bytes(b"hello")
        return path, ImageReadError, [f"{path} is not an image file Pillow can read"]
    if case == "truncated-png":
        path.write_bytes(_truncated_png())
        return path, ImageReadError, [f"{path}: the image is corrupt or truncated"]
    if case == "truncated-jpeg":
        out = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out, "JPEG")
        path = tmp_path / "picture.jpg"
        path.write_bytes(out.getvalue()[:-400])
        return path, ImageReadError, [f"{path}: the image is corrupt or truncated"]
    path = tmp_path / "picture.tif"
    if case == "int32-tiff":
        Image.fromarray(np.array([[0, 70000]], np.int32)).save(path)
        return path, ImageReadError, [f"{path}: Pillow mode 'I' has no fixed 8-bit RGB meaning"]
    if case == "float-tiff-0-255":
        Image.fromarray(np.array([[0.0, 255.0]], np.float32)).save(path)
        return path, ImageReadError, [f"{path}: float pixels (mode 'F') must lie in [0, 1], found [0, 255]"]
    if case == "float-tiff-nan":
        Image.fromarray(np.array([[0.0, np.nan]], np.float32)).save(path)
        return path, ImageReadError, [f"{path}: float pixels (mode 'F') must lie in [0, 1]", "NaN/inf"]
    raise KeyError(case)


LOAD_RGB_CASES = ["missing", "text-file", "truncated-png", "truncated-jpeg", "int32-tiff", "float-tiff-0-255",
                  "float-tiff-nan"]


@pytest.mark.parametrize("case", LOAD_RGB_CASES)
def test_load_rgb_refuses_bad_files_by_name(tmp_path, case):
    path, error, fragments = _load_rgb_case(tmp_path, case)
    assert_refused(tmp_path, lambda: load_rgb(path), error, fragments)
    assert_refused(tmp_path, lambda: load_rgb(str(path)), error, fragments)


@pytest.mark.parametrize("mode", ["HSV", "LAB", "I"])
def test_load_rgb_refuses_in_memory_modes_without_an_rgb_meaning(mode):
    with pytest.raises(ImageReadError, match=f"Pillow mode '{mode}' has no fixed 8-bit RGB meaning"):
        load_rgb(Image.new(mode, (2, 2)))


def test_load_rgb_scales_a_16_bit_png(tmp_path):
    stored = np.array([[0, 257, 65535], [1000, 30000, 65534]], np.uint16)
    Image.fromarray(stored).save(tmp_path / "g16.png")
    # round(v / 257): 0, 1, 255; 3.891 -> 4, 116.73 -> 117, 254.996 -> 255
    expected = np.array([[0, 1, 255], [4, 117, 255]], np.uint8)
    np.testing.assert_array_equal(load_rgb(tmp_path / "g16.png"), np.repeat(expected[:, :, None], 3, axis=2))


def test_load_rgb_scales_a_float_tiff(tmp_path):
    stored = np.array([[0.0, 1.0, 0.25], [0.2, 0.8, 0.6]], np.float32)
    Image.fromarray(stored).save(tmp_path / "f.tif")
    # round(v * 255): 0, 255, 63.75 -> 64; 51, 204, 153 (float32 error far below 0.5)
    expected = np.array([[0, 255, 64], [51, 204, 153]], np.uint8)
    np.testing.assert_array_equal(load_rgb(tmp_path / "f.tif"), np.repeat(expected[:, :, None], 3, axis=2))


@pytest.mark.parametrize("as_pil", [False, True])
def test_load_rgb_turns_an_exif_rotated_photo_upright(tmp_path, as_pil):
    """Orientation 6: the stored left column is the displayed top row (the picture is turned 90 deg CW)."""
    path = _exif_jpeg(tmp_path / "rotated.jpg", orientation=6)
    with Image.open(path) as opened:
        rgb = load_rgb(opened) if as_pil else load_rgb(path)
    assert rgb.shape == (32, 16, 3)
    top, bottom = rgb[:12].reshape(-1, 3).mean(0), rgb[20:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50   # red on top, blue below
