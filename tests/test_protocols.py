"""The evaluation protocols: the centre-crop geometry and box transform against hand computations, the
file and tensor datasets under it, box-less images counted as misses, and the refusals."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from camkit import cli
from camkit.data.protocols import (CenterCropEvalTransform, CenterCropView, center_crop_boxes, center_crop_geometry,
                                   with_protocol)
from camkit.data.views import EvaluationView
from camkit.data.wsol import AnnotatedFolderDataset, WSOLEvalTransform
from camkit.evaluation import evaluate

TINY = str(Path(__file__).with_name("cli_tiny_model.py")) + ":tiny"


def test_geometry_of_a_landscape_and_a_portrait_picture():
    # 300 x 200: the short side 200 -> 256, the long int(256 * 300 / 200) = 384; corner (round(160/2), round(32/2))
    assert center_crop_geometry(300, 200) == (384, 256, 80, 16)
    assert center_crop_geometry(200, 300) == (256, 384, 16, 80)
    assert center_crop_geometry(224, 224, 256, 224) == (256, 256, 16, 16)
    # an odd margin: 257 - 224 = 33 -> round(16.5) = 16 (Python rounds half to even, as torchvision)
    assert center_crop_geometry(257, 256, 256, 224)[2:] == (16, 16)


def test_boxes_of_a_300_by_200_picture_by_hand():
    boxes = [[30, 20, 150, 180],    # x: int(30 * 1.28) = 38 - 80 -> 0; y: int(25.6) = 25 - 16 = 9;
                                    # x1 int(192.0) - 80 = 112; y1 int(230.4) = 230 - 16 = 214
             [0, 0, 50, 100],       # x1 int(64.0) - 80 = -16 < 0: no pixel in the crop, dropped
             [250, 10, 299, 199],   # x0 int(320.0) - 80 = 240 > 223: dropped
             [100, 0, 299, 199]]    # x0 128 - 80 = 48; y0 0 - 16 -> 0; x1 int(382.72) - 80 = 302 -> 223;
                                    # y1 int(254.72) - 16 = 238 -> 223
    got = center_crop_boxes(boxes, (300, 200))
    assert got.dtype == np.int64
    assert got.tolist() == [[0, 9, 112, 214], [48, 0, 223, 223]]
    assert center_crop_boxes([[0, 0, 50, 100]], (300, 200)).shape == (0, 4)


def _picture(width=300, height=200):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_file_transform_crops_the_resized_picture():
    rgb = _picture()
    transform = CenterCropEvalTransform(mean=(0.0,) * 3, std=(1.0,) * 3)
    image = transform.image(rgb)
    assert image.shape == (3, 224, 224)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255
    expected = F.interpolate(x, size=(256, 384), mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
    torch.testing.assert_close(image, expected[:, 16:240, 80:304])
    assert transform.boxes([[30, 20, 150, 180]], (300, 200)).tolist() == [[0, 9, 112, 214]]


def test_annotated_folder_under_the_centre_crop(tmp_path):
    Image.fromarray(_picture()).save(tmp_path / "a.png")
    (tmp_path / "annotations.json").write_text(json.dumps([
        {"file": "a.png", "label": 1, "width": 300, "height": 200,
         "boxes_xyxy": [[30, 20, 150, 180], [0, 0, 50, 100]]}]))
    dataset = AnnotatedFolderDataset(tmp_path, transform=WSOLEvalTransform(224, (0.5,) * 3, (0.25,) * 3))
    cropped = with_protocol(dataset, "center-crop")
    assert isinstance(dataset.transform, WSOLEvalTransform)         # the original is untouched
    assert cropped.transform.mean == (0.5,) * 3 and cropped.transform.std == (0.25,) * 3
    item = cropped[0]
    assert item["image"].shape == (3, 224, 224) and item["boxes"].tolist() == [[0, 9, 112, 214]]
    assert cropped.has_boxes
    assert with_protocol(dataset, "wsol") is dataset


class _Raw(torch.utils.data.Dataset):
    """Tensor items (3, 40, 60) uint8 at their own resolution: channel 0 holds a block at x 24..35, y 12..27;
    item 0's box frames it, item 1's box lies in the left margin (outside a 48/32 centre crop)."""

    boxes = [[[24, 12, 35, 27]], [[0, 0, 10, 39]]]

    def __len__(self):
        return 2

    def __getitem__(self, index):
        image = torch.zeros(3, 40, 60, dtype=torch.uint8)
        image[0, 12:28, 24:36] = 255
        mask = torch.zeros(40, 60, dtype=torch.uint8)
        mask[12:28, 24:36] = 1
        return {"image": image, "label": 0, "boxes": torch.tensor(self.boxes[index]), "mask": mask}


def test_tensor_view_under_the_centre_crop_by_hand():
    view = with_protocol(EvaluationView(_Raw(), None, (0.0,) * 3, (1.0,) * 3), "center-crop", resize_size=48,
                         crop_size=32)
    assert isinstance(view, CenterCropView)
    assert view.has_boxes
    item = view[0]
    # 60 x 40 -> 72 x 48, corner (round(40/2), round(16/2)) = (20, 8); box x0 int(24*1.2) = 28 - 20 = 8,
    # y0 int(14.4) = 14 - 8 = 6, x1 int(42.0) - 20 = 22, y1 int(32.4) = 32 - 8 = 24
    assert item["boxes"].tolist() == [[8, 6, 22, 24]]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    # the mask: nearest neighbour of the 72 x 48 resize (source column floor(u * 60 / 72)), then the crop
    cols = [u - 20 for u in range(72) if 24 <= (u * 60) // 72 <= 35 and 20 <= u < 52]
    rows = [v - 8 for v in range(48) if 12 <= (v * 40) // 48 <= 27 and 8 <= v < 40]
    expected = torch.zeros(32, 32, dtype=torch.uint8)
    expected[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = 1
    assert torch.equal(item["mask"], expected)
    assert view[1]["boxes"].shape == (0, 4)


class _Channel0(nn.Module):
    """Logits from the mean of channel 0 through a 1 x 1 conv: CAM's map is channel 0 itself."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 1, 1, bias=False)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("rule", ["wsol", "fixed:0.5"])
def test_an_image_without_a_box_in_the_crop_counts_as_a_miss(rule):
    raw = EvaluationView(_Raw(), None, (0.0,) * 3, (1.0,) * 3)
    options = dict(methods="cam", layers="features", progress=False, metric_workers=0, box_rule=rule,
                   protocol="center-crop", resize_size=48, crop_size=32)
    (both,) = evaluate(_Channel0(), raw, **options).values()
    (first,) = evaluate(_Channel0(), _First(raw),
                        **options).values()
    assert both["num_images"] == 2 and both["num_images_without_box"] == 1 and first["num_images_without_box"] == 0
    key = "MaxBoxAcc@50" if rule == "wsol" else "BoxAcc@50"
    assert first[key] == 100.0            # the block's box is the GT box in the crop
    assert both[key] == first[key] / 2    # image 1 can only miss
    assert both["GT-known"] == first["GT-known"] / 2


class _First(EvaluationView):
    """The first item of an EvaluationView, still an EvaluationView (so the protocol applies)."""

    def __init__(self, view):
        super().__init__(_OneItem(view.dataset), view.size, view.mean, view.std)


class _OneItem(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.dataset[0]


class _Plain(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise AssertionError("read before the protocol was checked")


BAD = {
    "unknown-protocol": (dict(protocol="crop"), "protocol must be one of 'wsol', 'center-crop'"),
    "crop-above-resize": (dict(protocol="center-crop", resize_size=200, crop_size=224),
                          "crop_size 224 must not exceed resize_size 200"),
    "resize-zero": (dict(protocol="center-crop", resize_size=0), "resize_size must be a positive integer"),
    "plain-dataset": (dict(protocol="center-crop"), "needs the pictures at their own resolution"),
}


@pytest.mark.parametrize("options, fragment", list(BAD.values()), ids=list(BAD))
def test_bad_protocols_are_refused_before_anything_runs(options, fragment):
    class Unrunnable(nn.Module):
        def forward(self, x):
            raise AssertionError("the model ran before the protocol was checked")

    with pytest.raises(ValueError) as info:
        evaluate(Unrunnable(), _Plain(), methods="gradcam", progress=False, metric_workers=0, **options)
    assert fragment in str(info.value)


def test_cli_protocol_flag(tmp_path, capsys):
    argv = ["evaluate", "--model", TINY, "--data", "synthetic:num_images=4,image_size=32,num_classes=4", "--no-progress",
            "--methods", "gradcam", "--layers", "layer2"]
    assert cli.main(argv + ["--protocol", "center-crop", "--resize-size", "40", "--crop-size", "32",
                            "--json", str(tmp_path / "cc.json")]) == 0
    (row,) = json.loads((tmp_path / "cc.json").read_text())
    assert row["num_images"] == 4 and "num_images_without_box" in row and "MaxBoxAccV2" in row
    assert cli.main(argv + ["--protocol", "center-crop", "--crop-size", "300"]) == 2
    assert "--crop-size must be between 1 and --resize-size (256)" in capsys.readouterr().err


def _centre_crop_rows(rule):
    return evaluate(_Channel0(), EvaluationView(_Raw(), None, (0.0,) * 3, (1.0,) * 3), methods="cam", layers="features",
                    progress=False, metric_workers=0, box_rule=rule, protocol="center-crop", resize_size=48,
                    crop_size=32)


@pytest.mark.parametrize("rule", ["wsol", "pas"])
def test_two_ranks_count_the_box_less_images_exactly(rule):
    from two_ranks import on_two_ranks

    # rank 0 evaluates item 0, rank 1 item 1 (the one without a box in the crop)
    assert on_two_ranks(_centre_crop_rows, rule) == _centre_crop_rows(rule)


def test_the_evaluator_refuses_an_unknown_boxless_policy():
    from camkit.evaluation import LocalizationEvaluator

    with pytest.raises(ValueError, match="boxless must be 'error'"):
        LocalizationEvaluator(boxless="skip")
