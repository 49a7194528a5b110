"""camkit.data.wsol: the real wsolevaluation metadata, the dev50 folder, malformed files, masks."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import asset
from camkit.data.wsol import (AnnotatedFolderDataset, MetadataError, WSOLDataset, WSOLEvalTransform, collate_wsol,
                              read_wsol_metadata)


def test_real_cub_metadata():
    meta = read_wsol_metadata(asset("wsolevaluation-metadata/CUB_test"))
    assert len(meta["image_ids"]) == 5794
    first = "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    assert meta["image_ids"][0] == first and meta["labels"][first] == 0
    assert meta["sizes"][first] == (500, 335)
    np.testing.assert_array_equal(meta["boxes"][first], [[60, 27, 385, 331]])
    assert not meta["masks"]


def test_real_ilsvrc_metadata_multiple_boxes():
    meta = read_wsol_metadata(asset("wsolevaluation-metadata/ILSVRC_val50k"))
    assert len(meta["image_ids"]) == 50000
    second = "val/ILSVRC2012_val_00000002.JPEG"
    assert meta["labels"][second] == 970
    np.testing.assert_array_equal(meta["boxes"][second][:2], [[45, 49, 499, 162], [2, 69, 437, 207]])
    assert sum(len(b) for b in meta["boxes"].values()) > 50000  # many images have several boxes


def test_dev50_folder_dataset():
    root = asset("imagenet-val-dev50")
    ds = AnnotatedFolderDataset(root, transform=WSOLEvalTransform(224, mean=(0.5,) * 3, std=(0.5,) * 3))
    assert len(ds) == 50
    item = ds[0]
    assert item["image"].shape == (3, 224, 224) and item["label"] == 65
    # [111,108,441,193] in 496x368: int(111*224/496)=50, int(108*224/368)=65, int(441*224/496)=199, 117
    assert item["boxes"].tolist() == [[50, 65, 199, 117]]
    assert -1 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    batch = collate_wsol([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 224, 224) and batch["mask"] is None and len(batch["boxes"]) == 2


def _write(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


GOOD = {"image_ids.txt": "a/x.png\nb/y.png\n", "class_labels.txt": "a/x.png,3\nb/y.png,1\n",
        "image_sizes.txt": "a/x.png,20,10\nb/y.png,8,8\n",
        "localization.txt": "a/x.png,1,2,4,3\na/x.png,0,0,19,9\nb/y.png,m/y.png,m/y_ignore.png\n"}


@pytest.mark.parametrize("name, bad_line, line_no", [
    ("class_labels.txt", "b/y.png,one", 2),
    ("image_sizes.txt", "b/y.png,8", 2),
    ("localization.txt", "a/x.png,1,2,zz,3", 1),
    ("localization.txt", "a/x.png,5,2,4,3", 1),
    ("localization.txt", "a/x.png,1,2,3", 1),
    ("image_ids.txt", "a/x.png,3", 1),
])
def test_malformed_lines_name_file_and_line(tmp_path, name, bad_line, line_no):
    files = dict(GOOD)
    lines = files[name].splitlines()
    lines[line_no - 1] = bad_line
    files[name] = "\n".join(lines) + "\n"
    _write(tmp_path, files)
    with pytest.raises(MetadataError) as err:
        read_wsol_metadata(tmp_path)
    assert f"{tmp_path / name}:{line_no}:" in str(err.value)


def test_missing_label_is_named(tmp_path):
    files = dict(GOOD, **{"class_labels.txt": "a/x.png,3\n"})
    _write(tmp_path, files)
    with pytest.raises(MetadataError, match="no line for image id 'b/y.png'"):
        read_wsol_metadata(tmp_path)


def test_dataset_items_boxes_and_masks(tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    _write(meta, GOOD)
    root = tmp_path / "data"
    for sub in ("a", "b", "m"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.full((10, 20, 3), 200, np.uint8)).save(root / "a/x.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "b/y.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    ignore = np.zeros((8, 8), np.uint8)
    ignore[:, :4] = 255
    Image.fromarray(mask).save(root / "m/y.png")
    Image.fromarray(ignore).save(root / "m/y_ignore.png")
    ds = WSOLDataset(root, meta, transform=WSOLEvalTransform(16))
    assert ds.has_masks and len(ds) == 2
    a = ds[0]
    # (1,2,4,3) in 20x10 -> int(1*16/20)=0, int(2*16/10)=3, int(4*16/20)=3, int(3*16/10)=4
    assert a["boxes"].tolist() == [[0, 3, 3, 4], [0, 0, 15, 14]] and a["label"] == 3 and "mask" not in a
    b = ds[1]
    assert b["boxes"].shape == (0, 4)
    m = b["mask"]
    assert m.dtype == torch.uint8 and set(m.unique().tolist()) <= {0, 1, 255}
    assert (m[4:12, 4:12] == 1).all()            # the instance, upsampled x2
    assert (m[:, :8][m[:, :8] != 1] == 255).all()  # ignored left half outside the instance
    assert (m[:, 13:] == 0).all()
    with pytest.raises(FileNotFoundError, match="dataset root"):
        WSOLDataset(tmp_path, meta)[0]


def test_annotations_json_errors(tmp_path):
    (tmp_path / "annotations.json").write_text(json.dumps([{"file": "a.jpg", "label": 1, "width": 4, "height": 4}]))
    with pytest.raises(MetadataError, match="lacks"):
        AnnotatedFolderDataset(tmp_path)
    (tmp_path / "annotations.json").write_text(json.dumps(
        [{"file": "a.jpg", "label": 1, "width": 4, "height": 4, "boxes_xyxy": [[3, 0, 1, 2]]}]))
    with pytest.raises(MetadataError, match="malformed boxes_xyxy"):
        AnnotatedFolderDataset(tmp_path)
