"""Bad input to the metrics and the box functions: a clear error (type and words), and no state touched.

Every metric row runs on a metric already fed one valid batch, and checks after the error that its
state tensors equal a copy taken before. Empty batches are a no-op for every metric. The last tests
pin the two behaviour changes of issue 11 items 6 and 7 (refusals at build time, V1's result key).
"""
import math

import numpy as np
import pytest
import torch

from camkit.boxes import (best_iou_per_threshold, box_iou, boxes_cicam, boxes_cicam_kept_mean, boxes_fixed_threshold,
                          boxes_from_map, boxes_percentile_threshold, get_box_rule, iou_curves, resize_boxes,
                          validate_boxes)
from camkit.metrics import (LocalizationAccuracy, MaxBoxAcc, PeakIoU, PxAP, max_box_accuracy,
                            pixel_average_precision)

H = W = 8
_rng = np.random.default_rng(0)
MAPS = _rng.random((2, H, W))
BOXES = [np.array([[1, 1, 5, 5]]), np.array([[0, 2, 7, 6]])]
LOGITS = torch.tensor(_rng.random((2, 6)))
LABELS = torch.tensor([0, 3])
MASKS = (_rng.random((2, H, W)) < 0.4).astype(np.uint8)
MASKS[0, 0, :3] = 255
CURVES = np.full((2, 1000), 0.6)

STATE = {MaxBoxAcc: ("counts", "num_images"), LocalizationAccuracy: ("counts", "cls_counts", "num_images"),
         PxAP: ("hist_pos", "hist_neg"),
         PeakIoU: ("sum_peak", "sum_curve", "inter", "union", "peak_hist", "num_images")}


def _fed(cls, **options):
    """A metric of class ``cls`` after one valid batch (non-zero state)."""
    metric = cls(**options)
    if cls is MaxBoxAcc:
        return metric.update(MAPS, BOXES)
    if cls is LocalizationAccuracy:
        return metric.update(MAPS, BOXES, LOGITS, LABELS)
    return metric.update(MAPS, MASKS)


def _snapshot(metric):
    return {name: getattr(metric, name).clone() for name in STATE[type(metric)]}


def _assert_same_state(before, after):
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def _maps_with(index, value, maps=MAPS):
    out = maps.copy()
    out[index] = value
    return out


def _masks_with(index, value):
    out = MASKS.astype(np.float64)
    out[index] = value
    return out


no_box = [BOXES[0], np.zeros((0, 4))]

# (metric class, update call, error type, message fragment)
METRIC_CASES = {
    # ---------------------------------------------------------------- MaxBoxAcc.update / update_from_curves
    "maxboxacc-maps-4d": (MaxBoxAcc, lambda m: m.update(MAPS[:, None], BOXES), ValueError, "(B, H, W) or (H, W)"),
    "maxboxacc-fewer-box-sets": (MaxBoxAcc, lambda m: m.update(MAPS, BOXES[:1]), ValueError,
                                 "got 1 ground-truth box sets for 2 score maps"),
    "maxboxacc-image-without-box": (MaxBoxAcc, lambda m: m.update(MAPS, no_box), ValueError,
                                    "image 1 has no ground-truth box"),
    "maxboxacc-array-without-box": (MaxBoxAcc, lambda m: m.update(MAPS, np.zeros((2, 0, 4))), ValueError,
                                    "image 0 has no ground-truth box"),
    "maxboxacc-boxes-b3": (MaxBoxAcc, lambda m: m.update(MAPS, np.zeros((2, 3))), ValueError,
                           "gt_boxes must be a list of (g_i, 4) box sets"),
    "maxboxacc-box-set-5-columns": (MaxBoxAcc, lambda m: m.update(MAPS, [BOXES[0], np.zeros((1, 5))]),
                                    ValueError, "image 1: boxes must have shape (n, 4)"),
    "maxboxacc-reversed-box": (MaxBoxAcc, lambda m: m.update(MAPS, [BOXES[0], [[5, 1, 2, 6]]]), ValueError,
                               "image 1: invalid boxes (need x0 <= x1"),
    "maxboxacc-nan-box": (MaxBoxAcc, lambda m: m.update(MAPS, [[[0, 0, math.nan, 3]], BOXES[1]]), ValueError,
                          "image 0: boxes contain NaN or infinite"),
    "maxboxacc-fractional-box": (MaxBoxAcc, lambda m: m.update(MAPS, [[[0.5, 0, 3, 3]], BOXES[1]]), ValueError,
                                 "whole pixel indices"),
    "maxboxacc-nan-map": (MaxBoxAcc, lambda m: m.update(_maps_with((1, 2, 3), np.nan), BOXES), ValueError,
                          "image 1: score map contains NaN"),
    "maxboxacc-map-above-1": (MaxBoxAcc, lambda m: m.update(MAPS * 2, BOXES), ValueError,
                              "image 0: score map values must lie in [0, 1]"),
    "maxboxacc-uint8-map": (MaxBoxAcc, lambda m: m.update((MAPS * 255).astype(np.uint8), BOXES), ValueError,
                            "already uint8"),
    "maxboxacc-empty-maps": (MaxBoxAcc, lambda m: m.update(np.zeros((2, 0, 5)), BOXES), ValueError,
                             "image 0: score map is empty"),
    "maxboxacc-curves-other-grid": (MaxBoxAcc, lambda m: m.update_from_curves(np.zeros((2, 500))), ValueError,
                                    "iou_curves must have shape (N, 1000)"),
    "maxboxacc-curves-above-1": (MaxBoxAcc, lambda m: m.update_from_curves(CURVES * 2), ValueError,
                                 "IoUs in [0, 1]"),
    "maxboxacc-curves-nan": (MaxBoxAcc, lambda m: m.update_from_curves(_maps_with((0, 3), np.nan, CURVES)),
                             ValueError, "IoUs in [0, 1] (no NaN)"),
    # --------------------------------------------------------------------------------- LocalizationAccuracy
    "loc-logits-other-batch": (LocalizationAccuracy, lambda m: m.update(MAPS, BOXES, LOGITS[:1], LABELS[:1]),
                               ValueError, "logits must be (B, K) with B = 2"),
    "loc-logits-larger-batch": (LocalizationAccuracy,
                                lambda m: m.update(MAPS, BOXES, torch.cat([LOGITS, LOGITS]), LABELS),
                                ValueError, "logits must be (B, K) with B = 2"),
    "loc-logits-1d": (LocalizationAccuracy, lambda m: m.update(MAPS, BOXES, LOGITS[0], LABELS), ValueError,
                      "logits must be (B, K)"),
    "loc-logits-nan": (LocalizationAccuracy, lambda m: m.update(MAPS, BOXES, LOGITS * math.nan, LABELS),
                       ValueError, "logits contain NaN"),
    "loc-labels-other-length": (LocalizationAccuracy, lambda m: m.update(MAPS, BOXES, LOGITS, torch.tensor([0, 1, 2])),
                                ValueError, "labels must be (B,) with B = 2"),
    "loc-label-out-of-range": (LocalizationAccuracy, lambda m: m.update(MAPS, BOXES, LOGITS, torch.tensor([0, 6])),
                               ValueError, "class indices in [0, 6)"),
    "loc-label-negative": (LocalizationAccuracy, lambda m: m.update(MAPS, BOXES, LOGITS, torch.tensor([-1, 0])),
                           ValueError, "class indices in [0, 6)"),
    "loc-label-fractional": (LocalizationAccuracy, lambda m: m.update(MAPS, BOXES, LOGITS, torch.tensor([0.5, 1.0])),
                             ValueError, "whole class indices"),
    "loc-image-without-box": (LocalizationAccuracy, lambda m: m.update(MAPS, no_box, LOGITS, LABELS), ValueError,
                              "image 1 has no ground-truth box"),
    "loc-fewer-box-sets": (LocalizationAccuracy, lambda m: m.update(MAPS, BOXES[:1], LOGITS, LABELS), ValueError,
                           "ground-truth box sets"),
    "loc-nan-map": (LocalizationAccuracy, lambda m: m.update(_maps_with((0, 0, 0), np.nan), BOXES, LOGITS, LABELS),
                    ValueError, "image 0: score map contains NaN"),
    "loc-curves-logits-mismatch": (LocalizationAccuracy, lambda m: m.update_from_curves(CURVES, LOGITS[:1], LABELS),
                                   ValueError, "logits must be (B, K) with B = 2"),
    "loc-curves-other-grid": (LocalizationAccuracy,
                              lambda m: m.update_from_curves(np.zeros((2, 10)), LOGITS, LABELS), ValueError,
                              "iou_curves must have shape (N, 1000)"),
}
for _cls in (PxAP, PeakIoU):
    _n = _cls.__name__.lower()
    METRIC_CASES.update({
        f"{_n}-mask-value-2": (_cls, lambda m: m.update(MAPS, _masks_with((0, 4, 4), 2)), ValueError,
                               "mask values must be 0 (background), 1 (foreground) or 255 (ignored), got other "
                               "values [2.0]"),
        f"{_n}-mask-value-half": (_cls, lambda m: m.update(MAPS, _masks_with((1, 0, 0), 0.5)), ValueError,
                                  "got other values [0.5]"),
        f"{_n}-mask-value-nan": (_cls, lambda m: m.update(MAPS, _masks_with((1, 0, 0), np.nan)), ValueError,
                                 "mask values must be 0 (background)"),
        f"{_n}-mask-shape": (_cls, lambda m: m.update(MAPS, MASKS[:, :4]), ValueError, "must have the same shape"),
        f"{_n}-mask-batch": (_cls, lambda m: m.update(MAPS, MASKS[:1]), ValueError, "must have the same shape"),
        f"{_n}-nan-map": (_cls, lambda m: m.update(_maps_with((0, 1, 1), np.nan), MASKS), ValueError, "NaN"),
        f"{_n}-map-above-1": (_cls, lambda m: m.update(MAPS * 2, MASKS), ValueError, "must lie in [0, 1]"),
        f"{_n}-maps-4d": (_cls, lambda m: m.update(MAPS[:, None], MASKS[:, None]), ValueError,
                          "(B, H, W) or (H, W)"),
        f"{_n}-empty-maps": (_cls, lambda m: m.update(np.zeros((2, 0, 8)), np.zeros((2, 0, 8))), ValueError,
                             "are empty"),
    })


@pytest.mark.parametrize("cls, call, error, fragment", list(METRIC_CASES.values()), ids=list(METRIC_CASES))
def test_metric_refuses_bad_input_and_keeps_its_state(cls, call, error, fragment):
    metric = _fed(cls)
    before = _snapshot(metric)
    with pytest.raises(error) as info:
        call(metric)
    assert fragment in str(info.value)
    _assert_same_state(before, _snapshot(metric))


# (build call, error type, message fragment): options refused when the metric is built
BUILD_CASES = {
    "maxboxacc-interval-0": (lambda: MaxBoxAcc(cam_curve_interval=0), ValueError,
                             "cam_curve_interval must be a number in (0, 1)"),
    "maxboxacc-interval-1": (lambda: MaxBoxAcc(cam_curve_interval=1), ValueError, "cam_curve_interval must be"),
    "maxboxacc-interval-negative": (lambda: MaxBoxAcc(cam_curve_interval=-0.1), ValueError, "cam_curve_interval"),
    "maxboxacc-interval-above-1": (lambda: MaxBoxAcc(cam_curve_interval=1.5), ValueError, "cam_curve_interval"),
    "maxboxacc-interval-nan": (lambda: MaxBoxAcc(cam_curve_interval=math.nan), ValueError, "cam_curve_interval"),
    "maxboxacc-interval-str": (lambda: MaxBoxAcc(cam_curve_interval="0.01"), ValueError, "cam_curve_interval"),
    "maxboxacc-no-iou-thresholds": (lambda: MaxBoxAcc(iou_thresholds=()), ValueError,
                                    "iou_thresholds must be a non-empty sequence"),
    "maxboxacc-iou-threshold-scalar": (lambda: MaxBoxAcc(iou_thresholds=50), ValueError, "non-empty sequence"),
    "maxboxacc-iou-threshold-0": (lambda: MaxBoxAcc(iou_thresholds=(0,)), ValueError, "IoU percentages in (0, 100]"),
    "maxboxacc-iou-threshold-150": (lambda: MaxBoxAcc(iou_thresholds=(50, 150)), ValueError, "(0, 100]"),
    "maxboxacc-iou-threshold-fraction": (lambda: MaxBoxAcc(iou_thresholds=(0.5,)), ValueError, "(0, 100]"),
    "maxboxacc-iou-threshold-repeated": (lambda: MaxBoxAcc(iou_thresholds=(50, 50)), ValueError, "distinct"),
    "maxboxacc-multi-contour-both": (lambda: MaxBoxAcc(multi_contour="both"), ValueError, "multi_contour must be True"),
    "loc-interval-0": (lambda: LocalizationAccuracy(cam_curve_interval=0), ValueError, "cam_curve_interval"),
    "loc-interval-1": (lambda: LocalizationAccuracy(cam_curve_interval=1.0), ValueError, "cam_curve_interval"),
    "loc-iou-threshold-0": (lambda: LocalizationAccuracy(iou_threshold=0), ValueError, "iou_threshold must be"),
    "loc-iou-threshold-200": (lambda: LocalizationAccuracy(iou_threshold=200), ValueError, "(0, 100]"),
    "loc-fixed-threshold-1.5": (lambda: LocalizationAccuracy(fixed_threshold=1.5), ValueError,
                                "fixed_threshold must be None or a CAM threshold in [0, 1]"),
    "loc-multi-contour-str": (lambda: LocalizationAccuracy(multi_contour="v2"), ValueError, "multi_contour"),
    "pxap-interval-0": (lambda: PxAP(cam_curve_interval=0), ValueError,
                        "cam_curve_interval must be a number in (0, 1)"),
    "pxap-interval-1": (lambda: PxAP(cam_curve_interval=1), ValueError, "cam_curve_interval"),
    "pxap-ignore-index-1": (lambda: PxAP(ignore_index=1), ValueError,
                            "ignore_index must be a whole number other than 0 and 1"),
    "peakiou-ignore-index-0": (lambda: PeakIoU(ignore_index=0), ValueError, "ignore_index"),
    "peakiou-reduction": (lambda: PeakIoU(reduction="mean"), ValueError, "reduction must be 'per_image' or 'pooled'"),
    # one-shot functions
    "max_box_accuracy-interval": (lambda: max_box_accuracy(MAPS, BOXES, cam_curve_interval=0), ValueError,
                                  "cam_curve_interval"),
    "max_box_accuracy-no-box": (lambda: max_box_accuracy(MAPS, no_box), ValueError, "image 1 has no ground-truth box"),
    "max_box_accuracy-no-iou-thresholds": (lambda: max_box_accuracy(MAPS, BOXES, iou_thresholds=[]), ValueError,
                                           "non-empty sequence"),
    "pixel_average_precision-mask-values": (lambda: pixel_average_precision(MAPS, _masks_with((0, 0, 0), 3)),
                                            ValueError, "got other values [3.0]"),
    "pixel_average_precision-interval": (lambda: pixel_average_precision(MAPS, MASKS, cam_curve_interval=1),
                                         ValueError, "cam_curve_interval"),
    "pixel_average_precision-shape": (lambda: pixel_average_precision(MAPS, MASKS[0]), ValueError, "same shape"),
}


@pytest.mark.parametrize("call, error, fragment", list(BUILD_CASES.values()), ids=list(BUILD_CASES))
def test_metric_options_and_one_shot_functions_refuse_bad_input(call, error, fragment):
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value)


MAP = MAPS[0]
BOX_CASES = {
    "box_iou-3-columns": (lambda: box_iou([[1, 2, 3]], [[0, 0, 1, 1]]), ValueError, "boxes_a must have shape (n, 4)"),
    "box_iou-flat-8": (lambda: box_iou([0, 0, 1, 1], [0, 0, 1, 1, 2, 2, 3, 3]), ValueError,
                       "boxes_b must have shape (n, 4)"),
    "box_iou-nan": (lambda: box_iou([[0, 0, math.nan, 1]], [[0, 0, 1, 1]]), ValueError, "NaN or infinite"),
    "box_iou-strings": (lambda: box_iou([["a", "b", "c", "d"]], [[0, 0, 1, 1]]), ValueError, "real numbers"),
    "resize_boxes-zero-width": (lambda: resize_boxes([[1, 2, 4, 3]], (0, 20), (35, 10)), ValueError,
                                "original_size must be (width, height), two positive numbers"),
    "resize_boxes-one-number": (lambda: resize_boxes([[1, 2, 4, 3]], (10, 20), (35,)), ValueError, "new_size must be"),
    "resize_boxes-shape": (lambda: resize_boxes([[1, 2, 4]], (10, 20), (35, 10)), ValueError, "shape (n, 4)"),
    "validate_boxes-reversed": (lambda: validate_boxes([[1, 1, 0, 0]]), ValueError, "invalid boxes"),
    "validate_boxes-fractional": (lambda: validate_boxes([[0.5, 0, 1, 1]]), ValueError, "whole pixel indices"),
    "validate_boxes-inf": (lambda: validate_boxes([[0, 0, math.inf, 1]]), ValueError, "NaN or infinite"),
    "validate_boxes-3": (lambda: validate_boxes([0, 0, 1]), ValueError, "shape (n, 4)"),
    "boxes_from_map-threshold-1.5": (lambda: boxes_from_map(MAP, 1.5), ValueError,
                                     "threshold must be a number in [0, 1]"),
    "boxes_from_map-threshold-negative": (lambda: boxes_from_map(MAP, -0.2), ValueError, "threshold must be"),
    "boxes_from_map-threshold-nan": (lambda: boxes_from_map(MAP, math.nan), ValueError, "threshold must be"),
    "boxes_from_map-multi-contour-both": (lambda: boxes_from_map(MAP, 0.5, "both"), ValueError,
                                          "multi_contour must be True"),
    "boxes_from_map-3d": (lambda: boxes_from_map(MAPS, 0.5), ValueError, "must be 2-D (H, W)"),
    "boxes_from_map-empty": (lambda: boxes_from_map(np.zeros((0, 4)), 0.5), ValueError, "score map is empty"),
    "boxes_from_map-complex": (lambda: boxes_from_map(MAP.astype(complex), 0.5), ValueError, "complex"),
    "get_box_rule-unknown": (lambda: get_box_rule("otsu"), ValueError,
                             "unknown box rule 'otsu'; known rules: cicam, cicam-kept-mean, fixed, pas, percentile"),
    "get_box_rule-none": (lambda: get_box_rule(None), ValueError, "known rules: cicam, cicam-kept-mean, fixed"),
    "fixed-fraction-2": (lambda: boxes_fixed_threshold(MAP, fraction=2), ValueError,
                         "fraction must be a number in [0, 1]"),
    "percentile-q-150": (lambda: boxes_percentile_threshold(MAP, q=150), ValueError, "q must be a number in [0, 100]"),
    "percentile-tau-negative": (lambda: boxes_percentile_threshold(MAP, tau=-1), ValueError, "tau must be"),
    "cicam-seg-thr-negative": (lambda: boxes_cicam(MAP, seg_thr=-0.5), ValueError, "seg_thr must be"),
    "cicam-seg-thr-above-1": (lambda: boxes_cicam(MAP, seg_thr=1.5), ValueError, "seg_thr must be"),
    "cicam-map-above-1": (lambda: boxes_cicam(MAP * 2 + 0.1, seg_thr=0.1), ValueError, "must lie in [0, 1]"),
    "cicam-kept-mean-seg-thr-negative": (lambda: boxes_cicam_kept_mean(MAP, seg_thr=-0.5), ValueError,
                                         "seg_thr must be"),
    "best_iou-multi-contour-both": (lambda: best_iou_per_threshold(MAP, BOXES[0], None, "both"), ValueError,
                                    "for both curves at once use camkit.boxes.iou_curves"),
    "iou_curves-thresholds-above-1": (lambda: iou_curves(MAP, BOXES[0], [0.5, 2.0]), ValueError,
                                      "thresholds must lie in [0, 1]"),
    "iou_curves-reversed-gt": (lambda: iou_curves(MAP, [[5, 1, 2, 6]]), ValueError, "invalid boxes"),
}


@pytest.mark.parametrize("call, error, fragment", list(BOX_CASES.values()), ids=list(BOX_CASES))
def test_box_functions_refuse_bad_input(call, error, fragment):
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value)


# ------------------------------------------------------------------------------- empty batches: no-op
EMPTY_MAPS = np.zeros((0, H, W))
EMPTY_UPDATES = {
    "maxboxacc": (MaxBoxAcc, lambda m: m.update(EMPTY_MAPS, [])),
    "maxboxacc-array-boxes": (MaxBoxAcc, lambda m: m.update(torch.zeros(0, H, W), torch.zeros(0, 1, 4))),
    "maxboxacc-curves": (MaxBoxAcc, lambda m: m.update_from_curves(np.zeros((0, 1000)))),
    "loc": (LocalizationAccuracy, lambda m: m.update(EMPTY_MAPS, [], torch.zeros(0, 6), torch.zeros(0).long())),
    "loc-curves": (LocalizationAccuracy, lambda m: m.update_from_curves(np.zeros((0, 1000)), [], [])),
    "pxap": (PxAP, lambda m: m.update(EMPTY_MAPS, np.zeros((0, H, W), np.uint8))),
    "peakiou": (PeakIoU, lambda m: m.update(torch.zeros(0, H, W), torch.zeros(0, H, W, dtype=torch.uint8))),
}


@pytest.mark.parametrize("cls, call", list(EMPTY_UPDATES.values()), ids=list(EMPTY_UPDATES))
def test_empty_batch_is_a_no_op(cls, call):
    metric = _fed(cls)
    before = _snapshot(metric)
    assert call(metric) is metric
    _assert_same_state(before, _snapshot(metric))
    fresh = cls()
    assert call(fresh) is fresh
    _assert_same_state(_snapshot(cls()), _snapshot(fresh))


# ------------------------------------------------- issue 11 item 6: one policy, refused where it is wrong
def test_item6_logits_of_another_batch_are_not_broadcast():
    """One logits row for two maps used to broadcast (both images scored with the same row)."""
    with pytest.raises(ValueError, match=r"logits must be \(B, K\) with B = 2"):
        LocalizationAccuracy().update(MAPS, BOXES, LOGITS[:1], LABELS)


def test_item6_an_image_without_ground_truth_box_is_refused_not_a_miss():
    """wsolevaluation has a box for every image (its IoU max over no box would fail); camkit used to
    count such an image as a miss."""
    metric = MaxBoxAcc()
    with pytest.raises(ValueError, match="image 1 has no ground-truth box.*mask metric"):
        metric.update(MAPS, no_box)
    assert int(metric.num_images) == 0


@pytest.mark.parametrize("cls", [PxAP, PeakIoU])
def test_item6_pxap_and_peak_iou_share_one_mask_policy(cls):
    """A mask value 2 was a negative pixel for PeakIoU and an ignored one for PxAP: both refuse it now."""
    with pytest.raises(ValueError, match=r"got other values \[2\]"):
        cls().update(torch.tensor(MAPS), torch.tensor(MASKS).masked_fill(torch.tensor(MASKS) == 1, 2))


@pytest.mark.parametrize("build", [lambda: MaxBoxAcc(cam_curve_interval=0), lambda: MaxBoxAcc(iou_thresholds=()),
                                   lambda: LocalizationAccuracy(cam_curve_interval=1),
                                   lambda: PxAP(cam_curve_interval=0)])
def test_item6_impossible_options_are_refused_when_the_metric_is_built(build):
    """These used to build (or raise ZeroDivisionError) and fail later with a reshape error or NaN."""
    with pytest.raises(ValueError, match="cam_curve_interval|iou_thresholds"):
        build()


def test_item6_peak_iou_empty_batch_is_a_no_op():
    metric = PeakIoU()
    metric.update(torch.zeros(0, H, W), torch.zeros(0, H, W, dtype=torch.uint8))
    assert int(metric.num_images) == 0


# --------------------------------------------------------- issue 11 item 7: V1's result under its own name
def test_item7_v1_reports_maxboxacc_and_v2_reports_maxboxaccv2():
    v1 = MaxBoxAcc(multi_contour=False).update(MAPS, BOXES).compute()
    v2 = MaxBoxAcc(multi_contour=True).update(MAPS, BOXES).compute()
    assert "MaxBoxAccV2" not in v1 and "MaxBoxAcc" not in v2
    assert v1["MaxBoxAcc"] == pytest.approx(np.mean([v1[f"MaxBoxAcc@{d}"] for d in (30, 50, 70)]))
    assert v2["MaxBoxAccV2"] == pytest.approx(np.mean([v2[f"MaxBoxAcc@{d}"] for d in (30, 50, 70)]))
    assert {k for k in v1 if k.startswith("MaxBoxAcc@")} == {"MaxBoxAcc@30", "MaxBoxAcc@50", "MaxBoxAcc@70"}
