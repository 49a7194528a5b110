"""Boxes of a score map at one threshold, and the named box rules.

A score map in [0, 1] becomes ``u = uint8(score * 255)`` (:func:`scoremap_to_uint8`: a truncating cast,
the product computed in the map's own floating dtype, as numpy does). At threshold ``tau`` the
foreground is ``u > int(tau * max(u))`` (strict; :func:`integer_thresholds`).

One-threshold contour emulation (:class:`_Contours`), equal to OpenCV ``findContours(RETR_TREE)``:

* one contour per 8-connected foreground component (outer border) and one per hole, a hole being a
  4-connected background component that does not touch the image border. A component's contour box is
  the bounding box of its pixels; a hole's is the bounding box of the foreground pixels 4-adjacent to it,
  which is the hole's own bounding box grown by one pixel.
* A contour ``(x, y, w, h)`` (OpenCV ``boundingRect``) becomes ``(x, y, min(x+w, W-1), min(y+h, H-1))``
  (note ``x+w``, not ``x+w-1``). No contour gives the single box ``[0, 0, 0, 0]``.
* The polygon area (OpenCV ``contourArea`` of the border traced through pixel centres) without tracing:
  the region enclosed by an outer border is the union, over the 2x2 pixel blocks ("quads") of the filled
  component ``F`` (component plus everything it encloses), of the whole unit square when all four
  corners are in ``F`` and the half square cut along the diagonal when three are. So
  ``2*area = 2*#quads4(F) + #quads3(F)``. A hole's region lies inside its component's filled region, so a
  hole never has a larger area than its component, which comes first in the contour order: the largest
  contour (V1) is always an outer border.
* OpenCV's contour order (legacy ``cvFindContours`` then ``cvTreeToNodeSeq``): borders are discovered in
  raster order of their first pixel, each new border is inserted at the head of its parent's child list,
  and the tree is flattened depth-first, parent before children; so siblings come in *reverse* discovery
  order. The parent of a component is the hole (or the image frame) around it; the parent of a hole is
  the component around it. V1 keeps the first contour of largest area in that order.

The box rules here (:func:`boxes_fixed_threshold`, :func:`boxes_percentile_threshold`, :func:`boxes_cicam`,
:func:`boxes_cicam_kept_mean`; named in :mod:`camkit.boxes.rules`) all take
``(score_map (H, W) in [0, 1], **options)`` and return int64 (n, 4) boxes x0, y0, x1, y1, inclusive pixel
coordinates.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import ndimage as ndi

from camkit.boxes.iou import _to_numpy

__all__ = [
    "scoremap_to_uint8", "thresholds_for_interval", "integer_thresholds", "boxes_from_map",
    "boxes_fixed_threshold", "boxes_percentile_threshold", "boxes_cicam", "boxes_cicam_kept_mean",
]

_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = ndi.generate_binary_structure(2, 1)


# --------------------------------------------------------------------------------- checks, helpers
def _is_real_number(value):
    """True for a real, non-boolean number: a Python or numpy scalar, or a 0-d array or tensor of one."""
    if hasattr(value, "ndim") and value.ndim == 0 and hasattr(value, "item"):
        value = value.item()
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_real(name, value, low, high, hint=""):
    """Raise ``ValueError`` unless ``value`` is a finite real number in ``[low, high]``."""
    if not _is_real_number(value) or not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}{hint}")


def _check_multi_contour(multi_contour):
    if multi_contour not in (True, False):
        raise ValueError(f"multi_contour must be True (V2: every contour's box) or False (V1: the largest "
                         f"contour's box), got {multi_contour!r}; for both curves at once use "
                         "camkit.boxes.iou_curves")


def _checked_map(score_map):
    """A score map (H, W) of real floats in [0, 1] as a numpy array in its own floating dtype (other real
    dtypes as float64); ``ValueError`` naming the problem otherwise (see :func:`scoremap_to_uint8`)."""
    s = _to_numpy(score_map)
    if s.ndim != 2:
        raise ValueError(f"score map must be 2-D (H, W), got shape {s.shape}")
    if s.size == 0:
        raise ValueError(f"score map is empty (shape {s.shape}); give an (H, W) map with H, W >= 1")
    if s.dtype.kind == "u" and s.dtype.itemsize == 1:
        raise ValueError("score map is already uint8; pass the float map in [0, 1] (it is scaled by 255)")
    if s.dtype.kind == "c":
        raise ValueError("score map is complex; pass a real (H, W) map in [0, 1]")
    if s.dtype.kind != "f":
        s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("score map contains NaN; fix the map (e.g. torch.nan_to_num) before extracting boxes")
    if (s < 0).any() or (s > 1).any():
        raise ValueError(f"score map values must lie in [0, 1], got range [{s.min()}, {s.max()}]; "
                         "normalise it first (e.g. per-image min-max)")
    return s


def scoremap_to_uint8(score_map):
    """``uint8(score_map * 255)`` after checking the map.

    Args:
        score_map: (H, W) real floats in [0, 1] (numpy or torch; other real dtypes are taken as float64).
    Returns:
        (H, W) uint8 numpy array.
    Raises:
        ValueError: for a map that is not 2-D, is empty, is already uint8, is complex, has NaN or values
            outside [0, 1].
    """
    s = _checked_map(score_map)
    return (s * s.dtype.type(255)).astype(np.uint8)


def thresholds_for_interval(cam_curve_interval=0.001):
    """The reference threshold list ``np.arange(0, 1, cam_curve_interval)`` (T,) float64.

    Raises ``ValueError`` unless ``0 < cam_curve_interval < 1``.
    """
    if not _is_real_number(cam_curve_interval) or not 0 < float(cam_curve_interval) < 1:
        raise ValueError(f"cam_curve_interval must be a number in (0, 1) (the threshold step, e.g. 0.001 "
                         f"for 1000 thresholds), got {cam_curve_interval!r}")
    return np.arange(0, 1, cam_curve_interval)


def _checked_thresholds(thresholds):
    """``thresholds`` as a (T,) float64 array, each a finite tau in [0, 1]."""
    taus = np.asarray(thresholds, dtype=np.float64)
    if taus.ndim != 1:
        raise ValueError(f"thresholds must be a 1-D sequence of taus, got shape {taus.shape}")
    if not (np.isfinite(taus) & (taus >= 0) & (taus <= 1)).all():
        raise ValueError(f"thresholds must lie in [0, 1] (fractions of the map's maximum), got "
                         f"{taus[~(np.isfinite(taus) & (taus >= 0) & (taus <= 1))][:5].tolist()}")
    return taus


def integer_thresholds(max_value, thresholds):
    """``int(tau * max_value)`` for every tau: (T,) int64 (truncation, as ``int()`` does)."""
    return np.trunc(np.asarray(thresholds, dtype=np.float64) * float(max_value)).astype(np.int64)


def _contour_to_box(x0, y0, x1, y1, height, width):
    """Tight inclusive pixel bbox -> wsolevaluation box (x, y, min(x+w, W-1), min(y+h, H-1))."""
    return np.stack([x0, y0, np.minimum(x1 + 1, width - 1), np.minimum(y1 + 1, height - 1)], axis=-1)


# ------------------------------------------------------------------------- one threshold, directly
def _quad_counts(mask):
    """Number of pixels of ``mask`` (H, W) bool in each 2x2 block: (H-1, W-1) int."""
    m = mask.astype(np.int8)
    return m[:-1, :-1] + m[:-1, 1:] + m[1:, :-1] + m[1:, 1:]


def _twice_polygon_area(filled):
    """``2 * contourArea`` of the outer border of a filled 8-connected set ``filled`` (H, W) bool."""
    if filled.shape[0] < 2 or filled.shape[1] < 2:
        return 0
    q = _quad_counts(filled)
    return int(2 * np.count_nonzero(q == 4) + np.count_nonzero(q == 3))


def _first_pixels(labels, n_labels):
    """Raster index of the first pixel of every label 0..n_labels of a label image: (n_labels + 1,)."""
    first = np.full(n_labels + 1, -1, np.int64)
    present, index = np.unique(labels.ravel(), return_index=True)
    first[present] = index
    return first


class _Contours:
    """All contours of one binary mask (H, W), in OpenCV RETR_TREE order (see the module docstring).

    ``order`` lists the contours as ``("fg", label)`` (an outer border) or ``("hole", label)``.
    """

    def __init__(self, mask):
        mask = np.asarray(mask, dtype=bool)
        self.height, self.width = h, w = mask.shape
        self.mask = mask
        fg, n_fg = ndi.label(mask, structure=_EIGHT)
        bg, n_bg = ndi.label(~mask, structure=_FOUR)
        self.fg, self.bg, self.n_fg = fg, bg, n_fg
        flat_fg, flat_bg = fg.ravel(), bg.ravel()
        # first pixel (raster order) of every component: discovery order of its border
        first_fg, first_bg = _first_pixels(fg, n_fg), _first_pixels(bg, n_bg)
        self.first_fg, self.first_bg = first_fg, first_bg
        self._fg_slices, self._bg_slices = ndi.find_objects(fg), ndi.find_objects(bg)
        # holes: background components not touching the border
        self.holes = holes = [lab for lab, sl in enumerate(self._bg_slices, start=1) if sl is not None
                              and sl[0].start > 0 and sl[1].start > 0 and sl[0].stop < h and sl[1].stop < w]
        is_hole = np.zeros(n_bg + 1, bool)
        is_hole[holes] = True
        # parents: pixel left of the first pixel (it is background for a component, foreground for a hole)
        fg_parent_hole = np.zeros(n_fg + 1, np.int64)  # 0 = frame
        for lab in range(1, n_fg + 1):
            p = first_fg[lab]
            if p % w > 0 and is_hole[flat_bg[p - 1]]:
                fg_parent_hole[lab] = flat_bg[p - 1]
        hole_parent = {b: int(flat_fg[first_bg[b] - 1]) for b in holes}
        self.fg_parent_hole, self.hole_parent = fg_parent_hole, hole_parent
        # contour order: depth-first, parent first, siblings in reverse discovery order
        children = {("frame", 0): []}
        for lab in range(1, n_fg + 1):
            par = ("hole", int(fg_parent_hole[lab])) if fg_parent_hole[lab] else ("frame", 0)
            children.setdefault(par, []).append(("fg", lab))
        for b in holes:
            children.setdefault(("fg", hole_parent[b]), []).append(("hole", b))

        def first(node):
            return first_fg[node[1]] if node[0] == "fg" else first_bg[node[1]]

        order = []
        stack = [("frame", 0)]
        while stack:
            node = stack.pop()
            if node[0] != "frame":
                order.append(node)
            stack.extend(sorted(children.get(node, []), key=first))  # popped last-discovered first
        self.order = order

    def box(self, node):
        """wsolevaluation box (4,) of a contour ``("fg", label)`` or ``("hole", label)``."""
        kind, lab = node
        if kind == "fg":
            ys, xs = self._fg_slices[lab - 1]
            x0, y0, x1, y1 = xs.start, ys.start, xs.stop - 1, ys.stop - 1
        else:
            ys, xs = self._bg_slices[lab - 1]
            x0, y0, x1, y1 = xs.start - 1, ys.start - 1, xs.stop, ys.stop
        return _contour_to_box(np.int64(x0), np.int64(y0), np.int64(x1), np.int64(y1), self.height, self.width)

    def twice_area(self, lab):
        """2 * polygon area of component ``lab``'s outer border (holes filled)."""
        ys, xs = self._fg_slices[lab - 1]
        comp = self.fg[ys, xs] == lab
        if self.holes:
            comp = ndi.binary_fill_holes(comp, structure=_FOUR)
        return _twice_polygon_area(comp)

    def all_boxes(self):
        """V2: every contour's box (n, 4) int64, in contour order; ``[[0, 0, 0, 0]]`` without contours."""
        if not self.order:
            return np.zeros((1, 4), np.int64)
        return np.stack([self.box(n) for n in self.order]).astype(np.int64)

    def largest_box(self):
        """V1: the box (1, 4) int64 of the first contour of largest area; ``[[0, 0, 0, 0]]`` without any."""
        if not self.order:
            return np.zeros((1, 4), np.int64)
        comps = [n for n in self.order if n[0] == "fg"]
        areas = [self.twice_area(n[1]) for n in comps]
        best = comps[int(np.argmax(areas))]  # argmax keeps the first of equal maxima, as Python's max
        return self.box(best)[None].astype(np.int64)


def _contour_boxes(mask, multi_contour):
    contours = _Contours(mask)
    return contours.all_boxes() if multi_contour else contours.largest_box()


def boxes_from_map(score_map, threshold, multi_contour=False):
    """Boxes of a score map at one threshold, wsolevaluation conventions.

    Args:
        score_map: (H, W) floats in [0, 1] (numpy or torch).
        threshold: tau in [0, 1]; foreground is ``uint8(255*map) > int(tau * max)``.
        multi_contour: False = V1 (largest contour's box), True = V2 (every contour's box).
    Returns:
        int64 (n, 4) boxes x0, y0, x1, y1; ``[[0, 0, 0, 0]]`` when there is no contour.
    """
    _check_real("threshold", threshold, 0, 1, hint=" (a fraction of the map's maximum)")
    _check_multi_contour(multi_contour)
    u = scoremap_to_uint8(score_map)
    thr = int(integer_thresholds(u.max(), [threshold])[0])
    return _contour_boxes(u > thr, multi_contour)


# ------------------------------------------------------------------------------------ box rules
def boxes_fixed_threshold(score_map, fraction=0.2, multi_contour=False):
    """Fixed-threshold rule (CAM paper style): foreground ``u > int(fraction * max(u))``.

    ``score_map`` (H, W) in [0, 1]; ``fraction`` in [0, 1]. Returns int64 (n, 4) x0, y0, x1, y1 (the
    boxes of :func:`boxes_from_map`).
    """
    _check_real("fraction", fraction, 0, 1, hint=" (a fraction of the map's maximum)")
    return boxes_from_map(score_map, fraction, multi_contour=multi_contour)


def boxes_percentile_threshold(score_map, tau=0.35, q=90, multi_contour=False):
    """Percentile as Standard (Bae et al. 2020): foreground ``u > tau * percentile(u, q)``.

    ``score_map`` (H, W) in [0, 1], ``u = uint8(255 * map)``; the percentile uses numpy's default (linear)
    interpolation; ``tau`` >= 0, ``q`` in [0, 100]. Returns int64 (n, 4) x0, y0, x1, y1.
    """
    _check_real("tau", tau, 0, math.inf, hint=" (the multiple of the percentile)")
    _check_real("q", q, 0, 100, hint=" (a percentile)")
    _check_multi_contour(multi_contour)
    u = scoremap_to_uint8(score_map)
    return _contour_boxes(u > tau * np.percentile(u, q), multi_contour)


def _largest_box_component(keep, stop):
    """The 4-connected component of ``keep`` (H, W) bool whose bounding box has the largest area (the first
    in label order, i.e. raster order of first pixels, on ties) as a (1, 4) int64 box; ``stop(xs, ys)`` turns
    its ``(x slice, y slice)`` into the box; ``[[0, 0, 0, 0]]`` when ``keep`` is empty."""
    labels, n = ndi.label(keep, structure=_FOUR)
    if n == 0:
        return np.zeros((1, 4), np.int64)
    slices = ndi.find_objects(labels)
    areas = [(ys.stop - ys.start) * (xs.stop - xs.start) for ys, xs in slices]
    ys, xs = slices[int(np.argmax(areas))]  # argmax: the first of equal maxima
    return np.asarray([stop(xs, ys)], np.int64)


def boxes_cicam(score_map, seg_thr=0.12):
    """The box rule of the released CI-CAM code (shaofeifei11/CI-CAM, ``utils.py`` ``create_rois`` and
    ``_connected_component``).

    1. ``cut = map`` where ``map > seg_thr * max(map)``, else 0 (the float map, not its uint8 form);
    2. keep ``cut > mean(cut)``, the mean over the *whole* image, zeros included;
    3. label the kept pixels' 4-connected components (``scipy.ndimage.label``'s default structure) and
       take the one whose bounding box has the largest area (the first in label order on ties);
    4. the released box is ``[x.start, y.start, x.stop, y.stop]`` of that component's slices, stops
       *exclusive*, scored with "+1" areas. In camkit's inclusive convention (the one of
       :func:`boxes_from_map`, where a contour ``(x, y, w, h)`` is ``(x, y, min(x+w, W-1), min(y+h, H-1))``)
       that is ``x0 = x.start, y0 = y.start, x1 = min(x.stop, W-1), y1 = min(y.stop, H-1)``: one pixel
       beyond the tight box on the right and bottom, unless at the image edge.

    Args:
        score_map: (H, W) floats in [0, 1] (numpy or torch); only ``map / max(map)`` matters.
        seg_thr: in [0, 1], the fraction of the maximum below which pixels are zeroed. Default 0.12, the
            released ``option.py`` default; the released CUB runs (``run.sh``) pass ``--seg_thr 0.0``.

    Returns:
        int64 (1, 4) box ``x0, y0, x1, y1``; ``[[0, 0, 0, 0]]`` when nothing is kept (an all-zero map, or a
        constant one whose mean rounds to its value, where the released code fails on an empty ``argmax``).
    """
    _check_real("seg_thr", seg_thr, 0, 1, hint=" (a fraction of the map's maximum)")
    s = _checked_map(score_map).astype(np.float64)
    height, width = s.shape
    cut = np.where(s > seg_thr * s.max(), s, 0.0)
    return _largest_box_component(cut > cut.mean(), lambda xs, ys: (xs.start, ys.start, min(xs.stop, width - 1),
                                                                    min(ys.stop, height - 1)))


def boxes_cicam_kept_mean(score_map, seg_thr=0.2):
    """camkit's earlier CI-CAM-like rule, kept under its own name: keep ``u > seg_thr * max(u)`` of
    ``u = uint8(255 * map)``, then ``u > mean`` of the *kept* pixels only, then the 4-connected component
    with the largest bounding-box area (first on ties); its *tight* inclusive box ``stop - 1``.

    It differs from :func:`boxes_cicam` (the released rule) in the mean (kept pixels vs the whole image),
    the box edge (tight vs one pixel beyond) and the default ``seg_thr`` (0.2 vs 0.12).

    ``score_map`` (H, W) in [0, 1]; ``seg_thr`` in [0, 1]. Returns int64 (1, 4) ``x0, y0, x1, y1``, or
    ``[[0, 0, 0, 0]]`` when nothing is kept.
    """
    _check_real("seg_thr", seg_thr, 0, 1, hint=" (a fraction of the map's maximum)")
    u = scoremap_to_uint8(score_map).astype(np.float64)
    keep = u > seg_thr * u.max()
    if not keep.any():
        return np.zeros((1, 4), np.int64)
    keep &= u > u[keep].mean()
    return _largest_box_component(keep, lambda xs, ys: (xs.start, ys.start, xs.stop - 1, ys.stop - 1))
