"""Best box IoU at every threshold of a score map, in one pass (the all-thresholds driver).

A uint8 map ``u`` has at most 256 distinct integer thresholds ``int(tau * max(u))``. The component tree
of ``u`` (8-connected, :mod:`camkit.boxes._component_tree`) gives every threshold's foreground components
with their bounding boxes, unfilled polygon areas and Euler numbers (hence their numbers of holes); the
tree of ``255 - u`` (4-connected) gives every threshold's background components, the holes among them.

* V2 (every contour's box): the best IoU over the components alive at a threshold and over its holes.
  When few thresholds have holes at all, their backgrounds are labelled directly instead of building
  the second tree (``_MAX_DIRECT_HOLE_LEVELS``).
* V1 (the largest contour's box): a component without holes has its exact area from the tree. One with
  holes has a filled area bounded by its bbox and by the threshold's *hole budget* (filling a hole
  changes only the quads touching the hole's bbox). Only when more than one component may still reach
  the largest area is the threshold's mask looked at (to fill the candidates). Equal maxima are
  outermost components, which OpenCV lists in reverse raster order of their first pixel, so the last
  discovered one wins.

Maps with a side < 3 go threshold by threshold through the one-threshold emulation
(:class:`camkit.boxes.threshold._Contours`). Every result equals, threshold by threshold,
``box_iou(boxes_from_map(map, tau, multi_contour), gt).max()``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from camkit.boxes import _compiled
from camkit.boxes._component_tree import ComponentTree
from camkit.boxes.iou import _pairwise_iou, validate_boxes
from camkit.boxes.threshold import (_EIGHT, _FOUR, _check_multi_contour, _checked_thresholds, _contour_to_box,
                                    _Contours, _twice_polygon_area, integer_thresholds, scoremap_to_uint8,
                                    thresholds_for_interval)

__all__ = ["iou_curves", "iou_curves_of_uint8", "best_iou_per_threshold"]

_MAX_DIRECT_HOLE_LEVELS = 12   # up to this many thresholds with holes: label them directly, no min-tree
_N_LEVELS = 257                # integer thresholds 0..255, and 256 for "above the maximum"
_UNSET = -1.0                  # per-level marker: no contour seen at this level


def _best_iou(boxes, gt):
    """Best IoU of each box (n, 4) int over the GT boxes (g, 4) int: (n,) float64 (0 without GT)."""
    return _pairwise_iou(boxes.astype(np.float64), gt.astype(np.float64)).max(axis=1, initial=0.0)


def _hole_boxes(mask):
    """wsolevaluation boxes (n, 4) of the holes of a binary mask (H, W): 4-connected background
    components not touching the border, each box its bbox grown by one pixel."""
    h, w = mask.shape
    bg, _ = ndi.label(~mask, structure=_FOUR)
    out = []
    for sl in ndi.find_objects(bg):
        if sl is None:
            continue
        ys, xs = sl
        if ys.start > 0 and xs.start > 0 and ys.stop < h and xs.stop < w:
            out.append((xs.start - 1, ys.start - 1, xs.stop, ys.stop))
    if not out:
        return np.zeros((0, 4), np.int64)
    b = np.asarray(out, np.int64)
    return _contour_to_box(b[:, 0], b[:, 1], b[:, 2], b[:, 3], h, w)


def _scatter_max(out, index, values):
    """``np.maximum.at(out, index, values)`` (compiled when numba is there)."""
    if _compiled.enabled():
        _compiled.scatter_max(out, index, values)
    else:
        np.maximum.at(out, index, values)


def _scatter_add(out, index, values):
    """``np.add.at(out, index, values)`` (compiled when numba is there)."""
    if _compiled.enabled():
        _compiled.scatter_add(out, index, values)
    else:
        np.add.at(out, index, values)


def _alive_pairs(lo, hi, n_levels=256):
    """Expand node intervals [lo, hi] (clipped to 0..n_levels-1) into (node, t) pairs."""
    lo = np.clip(lo, 0, n_levels - 1)
    hi = np.clip(hi, -1, n_levels - 1)
    length = np.maximum(hi - lo + 1, 0)
    node = np.repeat(np.arange(lo.size), length)
    offsets = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    return node, lo[node] + offsets


def _direct_curves(u, gt, levels, best1, best2):
    """Tiny maps: V1 and V2 best IoU (in place, per level) from the one-threshold emulation."""
    top = int(u.max())
    for level in levels:
        if level >= top:
            continue
        contours = _Contours(u > level)
        best1[level] = _best_iou(contours.largest_box(), gt).max(initial=0.0)
        best2[level] = _best_iou(contours.all_boxes(), gt).max(initial=0.0)


def _add_hole_ious(u, gt, hole_levels, used, v2):
    """Raise ``v2`` (per level) to the holes' best IoU. Returns the per-level hole budget for V1: a bound
    on what filling every hole can add to a component's 2*area (unbounded when the holes were labelled
    directly)."""
    h, w = u.shape
    hole_budget = np.full(_N_LEVELS, np.iinfo(np.int64).max // 4)
    if 0 < hole_levels.size <= _MAX_DIRECT_HOLE_LEVELS:
        # few thresholds have holes: label their backgrounds directly (cheaper than a second tree)
        for level in hole_levels:
            boxes = _hole_boxes(u > level)
            if len(boxes):
                v2[level] = max(v2[level], _best_iou(boxes, gt).max(initial=0.0))
    elif hole_levels.size:  # holes at many thresholds: all background components from one min-tree
        bg = ComponentTree((255 - u).astype(np.uint8), 1)
        bg_level = 255 - bg.level  # value of u
        bg_parent = np.where(bg.parent_level < 0, 256, 255 - bg.parent_level)
        hole = (bg.x0 > 0) & (bg.y0 > 0) & (bg.x1 < w - 1) & (bg.y1 < h - 1)
        hx0, hy0 = bg.x0[hole] - 1, bg.y0[hole] - 1
        hx1, hy1 = bg.x1[hole] + 1, bg.y1[hole] + 1
        hole_iou = _best_iou(_contour_to_box(hx0, hy0, hx1, hy1, h, w), gt)
        # a background node (in u) is the component of u <= t for level <= t < parent level
        hole_node, hole_t = _alive_pairs(bg_level[hole], bg_parent[hole] - 1)
        keep = used[hole_t]
        _scatter_max(v2, hole_t[keep], hole_iou[hole_node[keep]])
        # a hole and what it encloses lie in its bbox, so filling it changes at most the quads
        # touching that bbox, each by at most 2 in 2*area
        touching_quads = (hx1 - hx0) * (hy1 - hy0)  # (bbox width + 1) * (bbox height + 1)
        hole_budget[:] = 0
        _scatter_add(hole_budget, hole_t, 2 * touching_quads[hole_node])
    return hole_budget


def _filled_twice_area(u, level, fg, component):
    """Exact 2*area of tree node ``component``'s outer border at ``u > level``: fill its crop's holes."""
    w = u.shape[1]
    y0, x0 = fg.y0[component], fg.x0[component]
    py, px = divmod(int(fg.own_pixel[component]), w)
    crop = u[y0:fg.y1[component] + 1, x0:fg.x1[component] + 1] > level
    labels, _ = ndi.label(crop, structure=_EIGHT)
    comp = labels == labels[py - y0, px - x0]
    # fill: everything but the 4-connected background components touching the crop's edge
    bg, _ = ndi.label(~comp, structure=_FOUR)
    edge = np.zeros(bg.max() + 1, bool)
    for side in (bg[0], bg[-1], bg[:, 0], bg[:, -1]):
        edge[side] = True
    edge[0] = False
    return _twice_polygon_area(~edge[bg])


def _largest_contour_ious(u, fg, node, t, n_holes, hole_budget, fg_iou):
    """V1 per level (``_UNSET`` where no component is alive): the IoU of the largest component."""
    twice_area = fg.subtree_sums[:, 0]
    width, height = fg.x1 - fg.x0, fg.y1 - fg.y0
    # exact 2*area: twice_area without holes; with holes, at most the bbox's and at most
    # twice_area + the level's hole budget
    with_holes = n_holes[node] > 0
    upper = np.where(with_holes, np.minimum(np.maximum(2 * width * height, twice_area)[node],
                                            twice_area[node] + hole_budget[t]), twice_area[node])
    best_lower = np.full(_N_LEVELS, -1, np.int64)
    _scatter_max(best_lower, t, twice_area[node])
    candidate = upper >= best_lower[t]
    n_candidates = np.bincount(t[candidate], minlength=_N_LEVELS)
    winner = np.full(_N_LEVELS, -1, np.int64)
    winner[t[candidate]] = node[candidate]
    v1 = np.full(_N_LEVELS, _UNSET)
    single = n_candidates == 1
    v1[single] = fg_iou[winner[single]]
    if _compiled.enabled(u.shape):
        several = candidate & (n_candidates[t] > 1)
        winner = _compiled.largest_components(u, node[several], t[several], upper[several], n_holes > 0, fg)
        resolved = winner >= 0
        v1[resolved] = fg_iou[winner[resolved]]
        return v1
    for level in np.flatnonzero(n_candidates > 1):
        nodes = node[candidate & (t == level)]
        exact = twice_area[nodes].copy()
        for k in np.flatnonzero(n_holes[nodes] > 0):
            exact[k] = _filled_twice_area(u, level, fg, nodes[k])
        top = exact == exact.max()
        if top.sum() == 1:
            v1[level] = fg_iou[nodes[np.argmax(exact)]]
            continue
        # equal maxima: OpenCV's contour order decides. They are outermost components (one inside a
        # hole of another has a strictly smaller area), which OpenCV lists in reverse order of
        # discovery, i.e. of their first pixel in raster order: the last one wins.
        tied = nodes[top]
        v1[level] = fg_iou[tied[np.argmax(fg.first_pixel[tied])]]
    return v1


def _tree_curves(u, gt, levels, want_v1, want_v2, best1, best2):
    """V1 and/or V2 best IoU (in place, per level) from the component trees."""
    h, w = u.shape
    fg = ComponentTree(u, 2, quad=True)
    fg_iou = _best_iou(_contour_to_box(fg.x0, fg.y0, fg.x1, fg.y1, h, w), gt)
    # a foreground node is the component of u > t for parent_level <= t < level
    node, t = _alive_pairs(np.maximum(fg.parent_level, 0), fg.level - 1)
    used = np.zeros(_N_LEVELS, bool)
    used[levels] = True
    keep = used[t]
    node, t = node[keep], t[keep]
    n_holes = 1 - fg.subtree_sums[:, 1] // 4  # Euler number of each component = 1 - #holes
    hole_budget = np.full(_N_LEVELS, np.iinfo(np.int64).max // 4)
    if want_v2:
        v2 = np.full(_N_LEVELS, _UNSET)
        _scatter_max(v2, t, fg_iou[node])
        hole_budget = _add_hole_ious(u, gt, np.unique(t[n_holes[node] > 0]), used, v2)
        best2[:] = np.where(v2 >= 0, v2, best2)
    if want_v1:
        v1 = _largest_contour_ious(u, fg, node, t, n_holes, hole_budget, fg_iou)
        best1[:] = np.where(v1 >= 0, v1, best1)


def _curves(score_map, gt_boxes, thresholds, want_v1, want_v2):
    """(V1, V2) best-IoU curves (T,) float64; the one not wanted is left at the no-contour value."""
    return _curves_of_uint8(scoremap_to_uint8(score_map), gt_boxes, thresholds, want_v1, want_v2)


def _curves_of_uint8(u, gt_boxes, thresholds, want_v1, want_v2):
    """:func:`_curves` of a map already converted by ``scoremap_to_uint8``: ``u`` (H, W) uint8."""
    thresholds = thresholds_for_interval() if thresholds is None else _checked_thresholds(thresholds)
    gt = validate_boxes(gt_boxes)
    h, w = u.shape
    thr = integer_thresholds(int(u.max()), thresholds)
    # no contour: the single box [0, 0, 0, 0]
    zero_iou = _best_iou(np.zeros((1, 4), np.int64), gt).max(initial=0.0)
    best1 = np.full(_N_LEVELS, zero_iou)
    best2 = np.full(_N_LEVELS, zero_iou)
    levels = np.unique(np.clip(thr, 0, _N_LEVELS - 1))
    if u.max() > 0 and min(h, w) < 3:
        _direct_curves(u, gt, levels, best1, best2)
    elif u.max() > 0:
        _tree_curves(u, gt, levels, want_v1, want_v2, best1, best2)
    idx = np.clip(thr, 0, _N_LEVELS - 1)
    return best1[idx], best2[idx]


def iou_curves(score_map, gt_boxes, thresholds=None):
    """Best IoU of the map's boxes with the GT boxes at every threshold, V1 and V2, in one pass.

    Args:
        score_map: (H, W) floats in [0, 1] (numpy or torch).
        gt_boxes: (g, 4) x0, y0, x1, y1 ground-truth boxes (whole pixels) in the map's pixel frame.
        thresholds: (T,) taus in [0, 1]; default ``arange(0, 1, 0.001)``.
    Returns:
        ``(v1, v2)``, each (T,) float64: ``v1[i]`` is the IoU of the largest contour's box at
        ``thresholds[i]`` (wsolevaluation V1), ``v2[i]`` the best IoU over every contour's box (V2), each
        the best over the GT boxes; 0 everywhere for no GT box. Equal to
        ``box_iou(boxes_from_map(map, tau, multi_contour), gt).max()`` threshold by threshold.
    """
    return _curves(score_map, gt_boxes, thresholds, want_v1=True, want_v2=True)


def iou_curves_of_uint8(u, gt_boxes, thresholds=None):
    """:func:`iou_curves` of a map already converted to ``u = uint8(255 * map)`` (the metric workers' input).

    Args:
        u: (H, W) uint8 numpy array, :func:`camkit.boxes.scoremap_to_uint8` of the score map (or the same
            bytes computed on the map's device).
        gt_boxes, thresholds: as in :func:`iou_curves`.
    Returns:
        ``(v1, v2)``, each (T,) float64, equal to ``iou_curves(map, gt_boxes, thresholds)``.
    """
    u = np.asarray(u)
    if u.dtype != np.uint8 or u.ndim != 2 or u.size == 0:
        raise ValueError(f"u must be a non-empty (H, W) uint8 array (scoremap_to_uint8 of the map), got "
                         f"dtype {u.dtype} and shape {u.shape}")
    return _curves_of_uint8(u, gt_boxes, thresholds, want_v1=True, want_v2=True)


def best_iou_per_threshold(score_map, gt_boxes, thresholds=None, multi_contour=True):
    """Best IoU between the map's boxes and the GT boxes at every threshold, one of V1 / V2.

    The same numbers as :func:`iou_curves` (which gives both at once), computing only one curve.

    Args:
        score_map, gt_boxes, thresholds: as in :func:`iou_curves`.
        multi_contour: ``False`` = V1 (largest contour's box), ``True`` = V2 (every contour's box); a bool.
    Returns:
        (T,) float64 best IoU per threshold.
    """
    _check_multi_contour(multi_contour)
    v1, v2 = _curves(score_map, gt_boxes, thresholds, want_v1=not multi_contour, want_v2=bool(multi_contour))
    return v2 if multi_contour else v1
