"""Dense targets: SegmentationTarget on segmenters (dict output), BoxScoreTarget on torchvision detectors.

Oracles: the segmentation score and its gradient computed by hand (our own hook, float64) on a tiny
conv segmenter; the detection score as the sum of the matching detections' scores, read from a
plain no-grad forward of the same detector.
"""
import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import box_iou

import camkit
from untouched import assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES, SIZE = 3, 12


class TinySegmenter(nn.Module):
    """conv-ReLU-conv(stride 2)-ReLU -> 1x1 classifier -> bilinear upsampling, as ``{"out": logits}``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, 2, 1), nn.ReLU())
        self.classifier = nn.Conv2d(8, CLASSES, 1)

    def forward(self, x):
        logits = nn.functional.interpolate(self.classifier(self.body(x)), size=x.shape[-2:], mode="bilinear",
                                           align_corners=False)
        return {"out": logits, "aux": None}


def _images():
    torch.manual_seed(1)
    return torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)


def _masks():
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, 2:7, 3:9] = True
    masks[1, 5:, :4] = True
    return masks


def _hand_score_and_pcs(model, images, categories, masks):
    captured = {}
    handle = model.body.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        out = model(images)["out"]
    finally:
        handle.remove()
    scores = torch.stack([(out[b, categories[b]] * masks[b]).sum() for b in range(len(images))])
    grad, = torch.autograd.grad(scores.sum(), captured["a"])
    return scores.detach(), (grad * captured["a"].detach()).sum(1).relu()


@pytest.mark.parametrize("categories, masks", [([1, 1], _masks()[0]), ([2, 0], _masks())])
def test_segmentation_score_and_gradient_equal_the_hand_computation(categories, masks):
    model = TinySegmenter().double().eval()
    images = _images()
    before = snapshot(model)
    category = categories[0] if categories[0] == categories[1] else categories
    exp = camkit.explain(model, images, methods="pcs", layers="body", output="out", upsample=False,
                         normalize=False, target=camkit.SegmentationTarget(category, masks))
    assert_unchanged(model, before)
    per_image = masks if masks.dim() == 3 else masks.expand(2, -1, -1)
    scores, pcs = _hand_score_and_pcs(model, images, categories, per_image)
    torch.testing.assert_close(exp.logits[:, 0], scores, rtol=0, atol=1e-10)
    torch.testing.assert_close(exp.maps[("pcs", "body")], pcs, rtol=0, atol=1e-10)
    assert float(pcs.std()) > 0


@pytest.mark.parametrize("target, output, error, words", [
    (camkit.SegmentationTarget(1, torch.ones(5, 5)), "out", ValueError, "output's resolution"),
    (camkit.SegmentationTarget(7, torch.ones(SIZE, SIZE)), "out", IndexError, "out of range"),
    (camkit.SegmentationTarget(1, torch.ones(SIZE, SIZE)), None, ValueError, "output='out'"),
    (camkit.BoxScoreTarget([1], [[0, 0, 4, 4]]), "out", ValueError, "detection dicts"),
])
def test_bad_dense_targets_are_refused_and_leave_the_model_untouched(target, output, error, words):
    model = TinySegmenter().eval()
    before = snapshot(model)
    with pytest.raises(error) as info:
        camkit.explain(model, _images().float(), methods="gradcam", layers="body", output=output, target=target)
    assert words in str(info.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("arguments, words", [
    (dict(labels=[1, 2], boxes=[[0, 0, 4, 4]]), "one label per box"),
    (dict(labels=[1], boxes=[[0, 0, 4, 4]], iou_threshold=1.5), "iou_threshold"),
    (dict(category=[[1]], mask=torch.ones(2, 2)), "one int or B ints"),
    (dict(category=1, mask=torch.ones(2)), "(H, W) or (B, H, W)"),
])
def test_bad_dense_target_arguments_raise_at_construction(arguments, words):
    kind = camkit.SegmentationTarget if "mask" in arguments else camkit.BoxScoreTarget
    with pytest.raises(ValueError) as info:
        kind(**arguments)
    assert words in str(info.value)


def test_fcn_resnet50_with_a_segmentation_target_gives_finite_maps():
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
                                                         num_classes=CLASSES).eval()
    images = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 8:24] = True
    exp = camkit.explain(model, images, methods=("gradcam", "pcs"), layers="backbone.layer3", output="out",
                         target=camkit.SegmentationTarget([1, 2], mask))
    assert exp.logits.shape == (2, 1)
    for maps in exp.maps.values():
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


def _detector():
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=5, min_size=64, max_size=64,
        box_score_thresh=0.0).eval()


def _matched_score(detection, boxes, labels, threshold):
    iou = box_iou(torch.tensor(boxes, dtype=torch.float32), detection["boxes"])
    match = (iou >= threshold) & (torch.tensor(labels)[:, None] == detection["labels"][None])
    return float((match.float() * detection["scores"][None]).sum())


def test_box_score_target_on_faster_rcnn_sums_the_matched_scores_and_gives_informative_maps():
    model = _detector()
    torch.manual_seed(3)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        detections = model(images)
    boxes = [detections[b]["boxes"][:2].tolist() for b in range(2)]
    labels = [detections[b]["labels"][:2].tolist() for b in range(2)]
    expected = [_matched_score(detections[b], boxes[b], labels[b], 0.5) for b in range(2)]
    before = snapshot(model)
    exp = camkit.explain(model, images, methods=("gradcam", "pcs"), layers="backbone.body.layer4",
                         target=camkit.BoxScoreTarget(labels, boxes, iou_threshold=0.5))
    assert_unchanged(model, before)
    torch.testing.assert_close(exp.logits[:, 0], torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert min(expected) > 0
    for maps in exp.maps.values():
        assert torch.isfinite(maps).all() and (maps.flatten(1).std(dim=1) > 0).all()
    assert not exp.notes


def test_box_score_target_without_a_match_scores_zero_with_a_note():
    model = _detector()
    exp = camkit.explain(model, torch.rand(1, 3, 64, 64), methods="gradcam", layers="backbone.body.layer4",
                         target=camkit.BoxScoreTarget([4], [[0, 0, 1, 1]], iou_threshold=0.99))
    assert float(exp.logits[0, 0]) == 0
    assert any("exactly zero" in note for note in exp.notes)
