"""Boxes from score maps with the conventions of clovaai/wsolevaluation, and box IoU.

* :mod:`camkit.boxes.iou`: :func:`validate_boxes`, :func:`box_iou` (inclusive "+1" areas, always a numpy
  float64 array), :func:`resize_boxes`.
* :mod:`camkit.boxes.threshold`: a score map in [0, 1] as ``uint8(score * 255)``, the threshold grid,
  the boxes at one threshold (:func:`boxes_from_map`, an exact emulation of OpenCV
  ``findContours(RETR_TREE)`` + ``boundingRect``) and the box rules' functions.
* :mod:`camkit.boxes.rules`: the named box rules, one ``box_rule=`` option everywhere boxes are made
  (:func:`box_rule`, :class:`BoxRule`, :data:`BOX_RULES`, :func:`get_box_rule`: ``"wsol"`` (the
  threshold sweep), ``"fixed"`` / ``"fixed:F"``, ``"pas"`` (``"percentile"``), ``"cicam"``,
  ``"cicam-kept-mean"``, or a callable).
* :mod:`camkit.boxes.curves`: the best IoU with the ground truth at every threshold in one pass
  (:func:`iou_curves` for V1 and V2 together, :func:`best_iou_per_threshold` for one of them), from the
  component tree of :mod:`camkit.boxes._component_tree`.

Conventions (the reference's, reproduced exactly): foreground at ``tau`` is ``u > int(tau * max(u))``;
a contour ``(x, y, w, h)`` becomes the box ``(x, y, min(x+w, W-1), min(y+h, H-1))``; no contour gives
``[0, 0, 0, 0]``; V1 (``multi_contour=False``) keeps the first contour of largest polygon area in
OpenCV's order, V2 (``multi_contour=True``) every contour's box, holes included.

Box extraction is an edge of the data path, done on the CPU with numpy; torch tensors are accepted and
moved to the CPU.
"""
from camkit.boxes.curves import best_iou_per_threshold, iou_curves, iou_curves_of_uint8
from camkit.boxes.iou import box_iou, resize_boxes, validate_boxes
from camkit.boxes.rules import BOX_RULE_NAMES, BOX_RULES, BoxRule, box_rule, get_box_rule
from camkit.boxes.threshold import (boxes_cicam, boxes_cicam_kept_mean, boxes_fixed_threshold, boxes_from_map,
                                    boxes_percentile_threshold, integer_thresholds, scoremap_to_uint8,
                                    thresholds_for_interval)

__all__ = [
    "boxes_from_map", "box_iou", "resize_boxes", "scoremap_to_uint8", "thresholds_for_interval",
    "best_iou_per_threshold", "boxes_fixed_threshold", "boxes_percentile_threshold", "boxes_cicam",
    "boxes_cicam_kept_mean", "validate_boxes", "integer_thresholds", "iou_curves", "iou_curves_of_uint8",
    "BOX_RULES", "BOX_RULE_NAMES", "BoxRule", "box_rule", "get_box_rule",
]
