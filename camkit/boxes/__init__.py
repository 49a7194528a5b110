"""Boxes from score maps with the conventions of clovaai/wsolevaluation, and box IoU.

* :mod:`camkit.boxes.iou`: :func:`validate_boxes`, :func:`box_iou` (inclusive "+1" areas, always a numpy
  float64 array), :func:`resize_boxes`.
* :mod:`camkit.boxes.threshold`: a score map in [0, 1] as ``uint8(score * 255)``, the threshold grid,
  the boxes at one threshold (:func:`boxes_from_map`, an exact emulation of OpenCV
  ``findContours(RETR_TREE)`` + ``boundingRect``) and the named box rules (:data:`BOX_RULES`,
  :func:`get_box_rule`: ``"fixed"``, ``"percentile"``, ``"cicam"``).
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
from camkit.boxes.threshold import (BOX_RULES, boxes_cicam, boxes_fixed_threshold, boxes_from_map,
                                    boxes_percentile_threshold, get_box_rule, integer_thresholds,
                                    scoremap_to_uint8, thresholds_for_interval)

__all__ = [
    "boxes_from_map", "box_iou", "resize_boxes", "scoremap_to_uint8", "thresholds_for_interval",
    "best_iou_per_threshold", "boxes_fixed_threshold", "boxes_percentile_threshold", "boxes_cicam",
    "validate_boxes", "integer_thresholds", "iou_curves", "iou_curves_of_uint8", "BOX_RULES", "get_box_rule",
]
