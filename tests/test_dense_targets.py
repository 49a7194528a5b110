"""Dense targets: SegmentationTarget on segmenters (dict output), BoxScoreTarget on torchvision detectors.

Oracles: the segmentation score and its gradient computed by hand (our own hook, float64) on a tiny
conv segmenter; the detection score as the sum of the matching detections' scores, read from a
plain no-grad forward of the same detector.
"""
import pytest
import torch
import torchvision
from torch import nn

import camkit
from untouched import assert_tensor_unchanged, assert_unchanged, snapshot, tensor_snapshot

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


@pytest.mark.parametrize("name, layer", [("fcn_resnet50", "backbone.layer3"), ("deeplabv3_resnet50", "backbone.layer3"),
                                         ("deeplabv3_mobilenet_v3_large", "backbone.16")])
def test_torchvision_segmenters_with_a_segmentation_target_give_informative_maps(name, layer):
    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                           num_classes=CLASSES).eval()
    images = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[16:48, 16:48] = True
    before = snapshot(model)
    exp = camkit.explain(model, images, methods=("gradcam", "pcs"), layers=layer, output="out",
                         target=camkit.SegmentationTarget([1, 2], mask))
    assert_unchanged(model, before)
    with torch.no_grad():
        out = model(images)["out"]
    torch.testing.assert_close(exp.logits[:, 0], torch.stack([out[0, 1][mask].sum(), out[1, 2][mask].sum()]),
                               rtol=1e-5, atol=1e-4)
    for maps in exp.maps.values():
        assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
        assert (maps.flatten(1).std(dim=1) > 0).all()


DETECTORS = {
    "fasterrcnn_resnet50_fpn": dict(box_score_thresh=0.0),
    "retinanet_resnet50_fpn": dict(score_thresh=0.0),
    "fcos_resnet50_fpn": dict(score_thresh=0.0),
}
DETECTION_LAYER = "backbone.body.layer4"


def _detector(name="fasterrcnn_resnet50_fpn"):
    """A torchvision detector with fixed random weights, eval mode, at a 64-pixel input (seconds on a CPU)."""
    torch.manual_seed(0)
    return getattr(torchvision.models.detection, name)(
        weights=None, weights_backbone=None, num_classes=5, min_size=64, max_size=64, **DETECTORS[name]).eval()


def _iou(a, b):
    """IoU of two (x1, y1, x2, y2) boxes, in plain Python floats; 0 when the union is empty."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _matches(detection, boxes, labels, threshold):
    """Per given box, the indices ``d`` of the detections it matches, by the definition."""
    found, found_labels = detection["boxes"].tolist(), detection["labels"].tolist()
    matched = []
    for box, label in zip(boxes, labels):
        matched.append([])
        for d, (other, other_label) in enumerate(zip(found, found_labels)):
            iou = _iou(box, other)
            assert abs(iou - threshold) > 1e-4, "an IoU at the threshold: pick another seed"
            if other_label == label and iou >= threshold:
                matched[-1].append(d)
    return matched


def _given_boxes(detection):
    """Boxes to explain, read off a detection list: its two best boxes of positive area, the best one
    shifted by 3 pixels (it matches more than one detection) and the best one with another label."""
    keep = [d for d, box in enumerate(detection["boxes"].tolist()) if (box[2] - box[0]) * (box[3] - box[1]) > 4]
    boxes = [detection["boxes"][d].tolist() for d in keep[:2]]
    labels = [int(detection["labels"][d]) for d in keep[:2]]
    boxes.append([v + 3 for v in boxes[0]])
    labels.append(labels[0])
    boxes.append(boxes[0])
    labels.append((labels[0] + 1) % 5)
    return boxes, labels


@pytest.mark.parametrize("name", list(DETECTORS))
def test_box_score_target_on_a_detector_is_the_sum_of_the_matched_scores(name):
    """Faster R-CNN, RetinaNet and FCOS: the score, its PCS map at layer4 (our own hook and autograd)
    and the hygiene of the call (no hook, no ``.grad``, weights and an existing ``.grad`` untouched)."""
    model = _detector(name)
    torch.manual_seed(3)
    images = torch.rand(2, 3, 64, 64)
    threshold = 0.3
    with torch.no_grad():
        detections = model(images)
    given = [_given_boxes(detections[b]) for b in range(2)]
    boxes, labels = [g[0] for g in given], [g[1] for g in given]
    per_box = [_matches(detections[b], boxes[b], labels[b], threshold) for b in range(2)]
    assert all(max(len(m) for m in image) >= 2 for image in per_box)    # a box matching several detections
    matched = [[d for m in image for d in m] for image in per_box]      # repeats: a detection per box it matches
    expected = [sum(float(detections[b]["scores"][d]) for d in matched[b]) for b in range(2)]

    captured = {}
    handle = model.backbone.body.layer4.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        graph = model(images)
    finally:
        handle.remove()
    hand_score = sum(graph[b]["scores"][matched[b]].sum() for b in range(2))
    grad, = torch.autograd.grad(hand_score, captured["a"])
    hand_pcs = (grad * captured["a"].detach()).sum(1).relu()

    layer4 = model.backbone.body.layer4[0].conv1.weight
    layer4.grad = torch.full_like(layer4, 0.25)
    before, images_before = snapshot(model), tensor_snapshot(images)
    target = camkit.BoxScoreTarget(labels, boxes, iou_threshold=threshold)
    exp = camkit.explain(model, images, methods=("gradcam", "gradcam++", "pcs"), layers=DETECTION_LAYER,
                         target=target)
    raw = camkit.explain(model, images, methods="pcs", layers=DETECTION_LAYER, target=target, upsample=False,
                         normalize=False)
    assert_unchanged(model, before)
    assert_tensor_unchanged(images, images_before)

    torch.testing.assert_close(exp.logits[:, 0], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert min(expected) > 0 and not exp.notes
    torch.testing.assert_close(raw.maps[("pcs", DETECTION_LAYER)], hand_pcs, rtol=1e-4, atol=1e-7)
    assert (hand_pcs.flatten(1).std(dim=1) > 0).all()
    for key, maps in exp.maps.items():
        assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all(), key
    assert (exp.maps[("pcs", DETECTION_LAYER)].flatten(1).std(dim=1) > 0).all()


def test_box_score_target_without_a_match_scores_zero_with_a_note():
    model = _detector()
    exp = camkit.explain(model, torch.rand(1, 3, 64, 64), methods="gradcam", layers="backbone.body.layer4",
                         target=camkit.BoxScoreTarget([4], [[0, 0, 1, 1]], iou_threshold=0.99))
    assert float(exp.logits[0, 0]) == 0
    assert any("exactly zero" in note for note in exp.notes)
