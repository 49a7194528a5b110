"""FAM's own localisation metrics (Meng et al., ICCV 2021): one fixed threshold, the largest component.

FAM's test protocol, as the paper states it: upsample the foreground map ``M`` bilinearly to the image,
threshold it at 0.5 (the same for every dataset), and take the box of the largest connected component.

* :func:`largest_component_box`: the foreground is ``map > threshold`` (an absolute threshold, NOT a
  fraction of the map's maximum as wsolevaluation's box rules); its 8-connected components (the
  connectivity of OpenCV's contours) are ranked by pixel count, the first in raster order wins a tie;
  the box is the component's tight inclusive box ``x0, y0, x1, y1``. No foreground pixel gives
  ``[0, 0, 0, 0]`` (as wsolevaluation's "no contour").
* :func:`fixed_threshold_localization`: per image the IoU of that box with the best-matching ground-truth
  box (:func:`camkit.boxes.box_iou`, inclusive "+1" areas); ``"GT-known"`` is the percentage of images
  whose IoU is at least 0.5, ``"mean_IoU"`` the mean IoU in percent (the paper: CAM 61.4, FAM 70.5 on CUB).

Give FAM's raw map (``camkit.explain(..., methods="fam", normalize=False)``) so that 0.5 means
``M > 0.5``; a min-max normalised map (every CAM) is thresholded at half its range.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
from scipy import ndimage as ndi

from camkit.boxes import box_iou

__all__ = ["largest_component_box", "fixed_threshold_localization", "FAM_THRESHOLD"]

#: FAM's fixed threshold on ``M`` (all datasets).
FAM_THRESHOLD = 0.5

_EIGHT = np.ones((3, 3), dtype=bool)


def _as_map(score_map) -> np.ndarray:
    if hasattr(score_map, "detach"):
        score_map = score_map.detach().cpu().numpy()
    array = np.asarray(score_map, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"a score map must be (H, W), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("the score map contains NaN or infinite values")
    return array


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number (FAM: 0.5 on M in (0, 1)), got {threshold!r}")
    return float(threshold)


def largest_component_box(score_map, threshold: float = FAM_THRESHOLD) -> np.ndarray:
    """The box ``(1, 4)`` int64 of the largest 8-connected component of ``score_map > threshold``.

    ``score_map`` ``(H, W)`` (numpy or torch). See the module docstring for ties and the empty case.
    """
    array, threshold = _as_map(score_map), _check_threshold(threshold)
    labels, count = ndi.label(array > threshold, structure=_EIGHT)
    if count == 0:
        return np.zeros((1, 4), np.int64)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    ys, xs = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    return np.asarray([[xs.min(), ys.min(), xs.max(), ys.max()]], np.int64)


def fixed_threshold_localization(maps, gt_boxes: Sequence, threshold: float = FAM_THRESHOLD) -> Dict[str, object]:
    """GT-known at a fixed threshold with the largest component, and the mean box IoU.

    Args:
        maps: ``N`` score maps ``(H, W)`` (a ``(N, H, W)`` array or tensor, or a list).
        gt_boxes: ``N`` ground-truth box sets, each ``(n_i, 4)`` or ``(4,)`` ``x0, y0, x1, y1`` in the
            maps' frame.
        threshold: the absolute threshold (0.5).

    Returns:
        ``{"GT-known": percent, "mean_IoU": percent, "iou": (N,) float64 per-image IoUs}``.
    """
    maps = list(maps)
    gt_boxes = list(gt_boxes)
    if len(maps) != len(gt_boxes):
        raise ValueError(f"got {len(maps)} maps but {len(gt_boxes)} ground-truth box sets; give one per map")
    if not maps:
        raise ValueError("fixed_threshold_localization needs at least one map")
    threshold = _check_threshold(threshold)
    ious = np.asarray([box_iou(largest_component_box(m, threshold), gt).max(initial=0.0)
                       for m, gt in zip(maps, gt_boxes)], np.float64)
    return {"GT-known": float(100.0 * np.mean(ious >= 0.5)), "mean_IoU": float(100.0 * ious.mean()), "iou": ious}
