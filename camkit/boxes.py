"""Boxes from score maps with the conventions of clovaai/wsolevaluation, and box IoU.

Conventions (they are the reference's, reproduced exactly):

* A score map in [0, 1] becomes ``u = uint8(score * 255)`` (truncating cast; the product is computed in
  the map's own floating dtype, as numpy does). At threshold ``tau`` the foreground is
  ``u > int(tau * max(u))`` (strict).
* Contours are those of OpenCV ``findContours(RETR_TREE)``: one per 8-connected foreground component
  (outer border) and one per hole, a hole being a 4-connected background component that does not touch
  the image border. A component's contour box is the bounding box of its pixels; a hole's is the bounding
  box of the foreground pixels 4-adjacent to it, which is the hole's own bounding box grown by one pixel.
* A contour ``(x, y, w, h)`` (OpenCV ``boundingRect``) becomes ``(x, y, min(x+w, W-1), min(y+h, H-1))``
  (note ``x+w``, not ``x+w-1``). No contour gives the single box ``[0, 0, 0, 0]``.
* V1 (``multi_contour=False``) keeps the contour of largest *polygon* area (OpenCV ``contourArea`` of the
  border traced through pixel centres), the first one of equal maxima in OpenCV's contour order.
  V2 (``multi_contour=True``) keeps every contour's box, holes included.

How the polygon area is computed without tracing. The region enclosed by an outer border traced through
pixel centres (8-connectivity) is the union, over the 2x2 pixel blocks ("quads") of the filled component
``F`` (component plus everything it encloses), of: the whole unit square when all four corners are in
``F``, the half square cut along the diagonal when three are. So ``2*area = 2*#quads4(F) + #quads3(F)``.
A hole's region is contained in its component's filled region, so a hole never has a larger area than its
component, and the component comes first in the contour order: V1 is always an outer border.

OpenCV's contour order (legacy ``cvFindContours`` then ``cvTreeToNodeSeq``): borders are discovered in raster
order of their first pixel, each new border is inserted at the head of its parent's child list, and the
tree is flattened depth-first, parent before children. So siblings come in *reverse* discovery order.
The parent of a component is the hole (or the image frame) around it; the parent of a hole is the
component around it.

All-thresholds fast path (:func:`best_iou_per_threshold`). A uint8 map has at most 256 distinct integer
thresholds; the component tree (max-tree, 8-connected) of ``u`` gives every threshold's foreground
components, the max-tree of ``255 - u`` (4-connected) every threshold's background components. Bounding
boxes, the quad counts of the polygon area and the Euler number (hence the number of holes) are additive
over the tree, so one pass gives them for every component of every threshold (the nodes are numbered
in a preorder, so a subtree aggregate is a range reduction). For V1, a component with holes has its
filled area bounded by its bbox and by the level's hole budget (filling a hole changes only the quads
touching the hole's bbox); only when a component with holes may still reach the largest area is the
threshold's mask looked at directly (to fill it). Equal maxima are outermost components, which OpenCV
lists in reverse raster order of their first pixel, a tree aggregate as well.

This module works on numpy arrays (box extraction is an edge of the data path, done on the CPU).
Torch tensors are accepted and moved to the CPU.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import minimum_spanning_tree

__all__ = [
    "boxes_from_map", "box_iou", "resize_boxes", "scoremap_to_uint8", "thresholds_for_interval",
    "best_iou_per_threshold", "boxes_fixed_threshold", "boxes_percentile_threshold", "boxes_cicam",
    "validate_boxes",
]

_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = ndi.generate_binary_structure(2, 1)


# --------------------------------------------------------------------------------------------- helpers
def _to_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def scoremap_to_uint8(score_map):
    """``uint8(score_map * 255)`` after checking the map. ``score_map``: (H, W) floats in [0, 1].

    Raises ``ValueError`` for NaN, values outside [0, 1], or a map that is not 2-D.
    """
    s = _to_numpy(score_map)
    if s.ndim != 2:
        raise ValueError(f"score map must be 2-D (H, W), got shape {s.shape}")
    if s.dtype.kind == "u" and s.dtype.itemsize == 1:
        raise ValueError("score map is already uint8; pass the float map in [0, 1] (it is scaled by 255)")
    if s.dtype.kind not in "fc":
        s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("score map contains NaN; fix the map (e.g. torch.nan_to_num) before extracting boxes")
    if (s < 0).any() or (s > 1).any():
        raise ValueError(f"score map values must lie in [0, 1], got range [{s.min()}, {s.max()}]; "
                         "normalise it first (e.g. per-image min-max)")
    return (s * s.dtype.type(255)).astype(np.uint8)


def thresholds_for_interval(cam_curve_interval=0.001):
    """The reference threshold list ``np.arange(0, 1, cam_curve_interval)`` (float64)."""
    return np.arange(0, 1, cam_curve_interval)


def integer_thresholds(max_value, thresholds):
    """``int(tau * max_value)`` for every tau: (T,) int64 (truncation, as ``int()`` does)."""
    return np.trunc(np.asarray(thresholds, dtype=np.float64) * float(max_value)).astype(np.int64)


def _contour_to_box(x0, y0, x1, y1, height, width):
    """Tight inclusive pixel bbox -> wsolevaluation box (x, y, min(x+w, W-1), min(y+h, H-1))."""
    return np.stack([x0, y0, np.minimum(x1 + 1, width - 1), np.minimum(y1 + 1, height - 1)], axis=-1)


def validate_boxes(boxes):
    """Return ``boxes`` as an int64 (n, 4) array, raising ``ValueError`` for x1 < x0 or y1 < y0."""
    b = np.asarray(_to_numpy(boxes), dtype=np.int64).reshape(-1, 4)
    bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        raise ValueError(f"invalid boxes (need x0 <= x1 and y0 <= y1, format x0,y0,x1,y1): {b[bad].tolist()}")
    return b


def box_iou(boxes_a, boxes_b):
    """IoU of every pair with the inclusive "+1" convention: areas ``(x1-x0+1)*(y1-y0+1)``.

    ``boxes_a`` (n, 4), ``boxes_b`` (m, 4), x0,y0,x1,y1 (numpy or torch). Returns (n, m) float64 numpy
    (or a float64 tensor on the input's device for torch input). IoU is 0 where the union is <= 0
    (e.g. for the degenerate box ``[1, 1, 0, 0]``).
    """
    if hasattr(boxes_a, "detach") or hasattr(boxes_b, "detach"):
        import torch
        dev = boxes_a.device if hasattr(boxes_a, "device") else boxes_b.device
        a = torch.as_tensor(boxes_a, dtype=torch.float64, device=dev).reshape(-1, 4)
        b = torch.as_tensor(boxes_b, dtype=torch.float64, device=dev).reshape(-1, 4)
        mx, mn, zero = torch.maximum, torch.minimum, torch.zeros((), dtype=torch.float64, device=dev)
    else:
        a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
        b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
        mx, mn, zero = np.maximum, np.minimum, np.float64(0)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = mx(mn(a[:, None, 2], b[None, :, 2]) - mx(a[:, None, 0], b[None, :, 0]) + 1, zero)
    ih = mx(mn(a[:, None, 3], b[None, :, 3]) - mx(a[:, None, 1], b[None, :, 1]) + 1, zero)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    ok = union > 0
    safe = union * ok + (~ok) * 1.0
    return inter / safe * ok


def resize_boxes(boxes, original_size, new_size):
    """Rescale boxes like wsolevaluation: ``int(x * new_w / orig_w)`` and ``int(y * new_h / orig_h)``.

    ``boxes`` (n, 4) x0,y0,x1,y1; sizes are ``(width, height)``. Returns int64 (n, 4).
    Example: ``resize_boxes([[1,2,4,3]], (10, 20), (35, 10)) -> [[3, 1, 14, 1]]``.
    """
    b = np.asarray(_to_numpy(boxes), dtype=np.float64).reshape(-1, 4)
    ow, oh = original_size
    nw, nh = new_size
    new = np.array([nw, nh, nw, nh], dtype=np.float64)
    old = np.array([ow, oh, ow, oh], dtype=np.float64)
    return np.trunc(b * new / old).astype(np.int64)  # (x * new) / old, in that order, as the reference


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


class _Contours:
    """All contours of one binary mask (H, W), in OpenCV RETR_TREE order (see module docstring)."""

    def __init__(self, mask):
        mask = np.asarray(mask, dtype=bool)
        self.height, self.width = h, w = mask.shape
        self.mask = mask
        fg, nf = ndi.label(mask, structure=_EIGHT)
        bg, nb = ndi.label(~mask, structure=_FOUR)
        self.fg, self.bg, self.n_fg = fg, bg, nf
        flat_fg, flat_bg = fg.ravel(), bg.ravel()
        # first pixel (raster order) of every component: discovery order of its border
        first_fg = np.full(nf + 1, -1, np.int64)
        labels, idx = np.unique(flat_fg, return_index=True)
        first_fg[labels] = idx
        first_bg = np.full(nb + 1, -1, np.int64)
        labels, idx = np.unique(flat_bg, return_index=True)
        first_bg[labels] = idx
        self.first_fg, self.first_bg = first_fg, first_bg
        fg_slices = ndi.find_objects(fg)
        bg_slices = ndi.find_objects(bg)
        # holes: background components not touching the border
        holes = []
        for lab, sl in enumerate(bg_slices, start=1):
            if sl is None:
                continue
            ys, xs = sl
            if ys.start > 0 and xs.start > 0 and ys.stop < h and xs.stop < w:
                holes.append(lab)
        self.holes = holes
        is_hole = np.zeros(nb + 1, bool)
        is_hole[holes] = True
        # parents: pixel left of the first pixel (it is background for a component, foreground for a hole)
        fg_parent_hole = np.zeros(nf + 1, np.int64)  # 0 = frame
        for lab in range(1, nf + 1):
            p = first_fg[lab]
            if p % w > 0:
                b = flat_bg[p - 1]
                if is_hole[b]:
                    fg_parent_hole[lab] = b
        hole_parent = {b: int(flat_fg[first_bg[b] - 1]) for b in holes}
        self.fg_parent_hole, self.hole_parent = fg_parent_hole, hole_parent
        # contour order: depth-first, parent first, siblings in reverse discovery order
        children = {("frame", 0): []}
        for lab in range(1, nf + 1):
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
            kids = sorted(children.get(node, []), key=first)  # discovery order
            stack.extend(kids)  # popped last-discovered first => reverse discovery order
        self.order = order
        self._fg_slices, self._bg_slices = fg_slices, bg_slices

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
        if not self.order:
            return np.zeros((1, 4), np.int64)
        return np.stack([self.box(n) for n in self.order]).astype(np.int64)

    def largest_box(self):
        if not self.order:
            return np.zeros((1, 4), np.int64)
        comps = [n for n in self.order if n[0] == "fg"]
        areas = [self.twice_area(n[1]) for n in comps]
        best = comps[int(np.argmax(areas))]  # argmax keeps the first of equal maxima, as Python's max
        return self.box(best)[None].astype(np.int64)


def boxes_from_map(score_map, threshold, multi_contour=False):
    """Boxes of a score map at one threshold, wsolevaluation conventions.

    Args:
        score_map: (H, W) floats in [0, 1] (numpy or torch).
        threshold: tau in [0, 1); foreground is ``uint8(255*map) > int(tau * max)``.
        multi_contour: False = V1 (largest contour's box), True = V2 (every contour's box).
    Returns:
        int64 (n, 4) boxes x0, y0, x1, y1; ``[[0, 0, 0, 0]]`` when there is no contour.
    """
    u = scoremap_to_uint8(score_map)
    thr = int(integer_thresholds(u.max(), [threshold])[0])
    contours = _Contours(u > thr)
    return contours.all_boxes() if multi_contour else contours.largest_box()


# --------------------------------------------------------------------------- alternative box rules
def boxes_fixed_threshold(score_map, fraction=0.2, multi_contour=False):
    """Fixed-threshold rule (CAM paper style): foreground ``u > int(fraction * max(u))``. Returns (n, 4)."""
    return boxes_from_map(score_map, fraction, multi_contour=multi_contour)


def boxes_percentile_threshold(score_map, tau=0.35, q=90, multi_contour=False):
    """Percentile as Standard (Bae et al. 2020): foreground ``u > tau * percentile(u, q)``.

    ``u = uint8(255 * map)``; the percentile uses numpy's default (linear) interpolation. Returns (n, 4).
    """
    u = scoremap_to_uint8(score_map)
    thr = tau * np.percentile(u, q)
    contours = _Contours(u > thr)
    return contours.all_boxes() if multi_contour else contours.largest_box()


def boxes_cicam(score_map, seg_thr=0.2):
    """The CI-CAM rule: keep ``u > seg_thr * max``, then ``> mean`` of what is kept, then the 4-connected
    component with the largest bounding-box area (first on ties, raster order of labels).

    Returns one tight inclusive box (1, 4) x0, y0, x1, y1, or ``[[0, 0, 0, 0]]`` when nothing is kept.
    """
    u = scoremap_to_uint8(score_map).astype(np.float64)
    keep = u > seg_thr * u.max()
    if not keep.any():
        return np.zeros((1, 4), np.int64)
    keep &= u > u[keep].mean()
    labels, n = ndi.label(keep, structure=_FOUR)
    if n == 0:
        return np.zeros((1, 4), np.int64)
    best, best_area = None, -1
    for sl in ndi.find_objects(labels):
        ys, xs = sl
        area = (ys.stop - ys.start) * (xs.stop - xs.start)
        if area > best_area:
            best, best_area = (xs.start, ys.start, xs.stop - 1, ys.stop - 1), area
    return np.asarray([best], np.int64)


# --------------------------------------------------------------------------- all thresholds at once
_OFFSETS = {1: ((0, 1), (1, 0)), 2: ((0, 1), (1, 0), (1, 1), (1, -1))}
_INT32_MAX_PIXELS = (2 ** 31 - 1) // 256  # images up to this many pixels build their trees in int32


def _shifted(a, dy, dx):
    """Views (first, second) of ``a`` pairing each pixel with its (dy, dx) neighbour."""
    h, w = a.shape[:2]
    if dx == 1:
        return a[:h - dy, :w - 1], a[dy:, 1:]
    if dx == 0:
        return a[:h - dy, :], a[dy:, :]
    return a[:h - dy, 1:], a[dy:, :w - 1]


def _component_tree(image, connectivity):
    """Max-tree of an (H, W) integer image in [0, 255]: ``(pix_node, par_node, level, end)``.

    Node = a connected component (``connectivity`` 1 = 4-, 2 = 8-connected) of ``image >= level``, with
    the pixels of value exactly ``level`` as its own pixels; ``pix_node`` (H*W,) is each pixel's node,
    ``par_node`` (m,) the parent node (the root is its own parent, every other parent has a lower level).
    Nodes are numbered in a preorder: the subtree of node ``k`` is the nodes ``k .. end[k] - 1`` (``end``
    (m,)), so subtree aggregates are range reductions.
    The same tree as skimage's ``max_tree`` (identical nodes and own pixels), built without a pixel-wise
    union-find:

    1. every pixel points to its largest neighbour under the total order (value, index) if larger than
       itself; pointer jumping gives each pixel's attractor ("basin"). A chain climbs, so the part of a
       basin at or above any level is connected.
    2. The components of ``image >= L`` are unions of basin parts glued by neighbour pairs whose smaller
       value is >= L, i.e. single linkage of the basins with pass value ``min`` over a pair (the largest
       over all pairs joining two basins): a maximum spanning tree of the basin graph (scipy) and a
       Kruskal pass over its edges (one Python step per basin) give the merge dendrogram.
    3. A pixel of value v belongs to the highest dendrogram ancestor of its basin whose level is >= v
       (binary lifting over the distinct (basin, value) pairs); max-tree nodes are the distinct
       (dendrogram node, value) pairs.
    4. Numbering: the Kruskal pass also builds a preorder of the dendrogram (a node, then its first
       child's sequence, then its second's: linked lists concatenated at each merge). Sorting the max-tree
       nodes by (preorder of their dendrogram node, value) puts each subtree in one contiguous range: a
       node (D, v) holds D's nodes of value >= v (they follow it) and everything below D (right after).
    """
    h, w = image.shape
    n = h * w
    idt = np.int32 if n <= _INT32_MAX_PIXELS else np.int64  # pixel-wise keys value * n + index
    v8 = image.astype(np.uint8)
    vf = v8.ravel()
    offsets = _OFFSETS[connectivity]
    key = v8.astype(idt) * idt(n) + np.arange(n, dtype=idt).reshape(h, w)
    best = key.copy()
    for dy, dx in offsets:
        ka, kb = _shifted(key, dy, dx)
        ba, bb = _shifted(best, dy, dx)
        np.maximum(ba, kb, out=ba)
        np.maximum(bb, ka, out=bb)
    ptr = (best.ravel() % idt(n)).astype(np.intp)
    while True:
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            break
        ptr = nxt
    roots = np.flatnonzero(ptr == np.arange(n))
    nb = roots.size
    bid = np.empty(n, idt)
    bid[roots] = np.arange(nb, dtype=idt)
    basin = bid[ptr]
    b2 = basin.reshape(h, w)
    leaf_level = vf[roots].astype(np.int64)
    # neighbour pairs (pa, pa + step) in different basins, as raster indices: few (basin borders)
    firsts, steps = [], []
    for dy, dx in offsets:
        ba, bb = _shifted(b2, dy, dx)
        cross = np.flatnonzero(ba != bb)               # raster index in the view (width ba.shape[1])
        row, col = np.divmod(cross, ba.shape[1])
        firsts.append(row * w + col + (dx < 0))
        steps.append(np.full(cross.size, dy * w + dx))
    pa = np.concatenate(firsts)
    pb = pa + np.concatenate(steps)
    x, y = basin[pa].astype(np.int64), basin[pb].astype(np.int64)
    lo, hi = np.minimum(x, y), np.maximum(x, y)
    pv = np.minimum(vf[pa], vf[pb]).astype(np.int64)
    if lo.size:
        # one edge per basin pair, its largest pass value (sort by pair, then pass)
        pk = (lo * nb + hi) * 256 + pv
        pk.sort()  # duplicates are harmless: the last of each pair is kept below
        pair = pk // 256
        last = np.r_[pair[1:] != pair[:-1], True]
        pk = pk[last]
        pv = pk % 256
        pair = pk // 256
        lo, hi = pair // nb, pair % nb
        # the pairs are sorted by (lo, hi): CSR order already (maximum spanning tree = minimum of 256 - pv)
        indptr = np.zeros(nb + 1, np.int32)
        np.cumsum(np.bincount(lo, minlength=nb), out=indptr[1:])
        g = csr_matrix((256 - pv.astype(np.float64), hi.astype(np.int32), indptr), shape=(nb, nb))
        t = minimum_spanning_tree(g)
        rows = np.repeat(np.arange(nb), np.diff(t.indptr))
        ew = (256 - t.data).astype(np.int64)
        o = np.argsort(-ew, kind="stable")
        ea, eb, ew = rows[o].tolist(), t.indices[o].tolist(), ew[o].tolist()
    else:
        ea = eb = ew = []
    total = nb + len(ew)
    parent = list(range(total))
    uf = list(range(nb))
    top = list(range(nb))
    # preorder as linked lists: nxt[] links a set's sequence, which runs from top[set] to tail[set];
    # last[d] is the last node of dendrogram node d's own subtree sequence
    nxt = [-1] * total
    tail = list(range(nb))
    last = list(range(nb)) + [0] * len(ew)
    for k, (a, b) in enumerate(zip(ea, eb)):
        while uf[a] != a:
            uf[a] = uf[uf[a]]
            a = uf[a]
        while uf[b] != b:
            uf[b] = uf[uf[b]]
            b = uf[b]
        node = nb + k
        parent[top[a]] = node
        parent[top[b]] = node
        nxt[node] = top[a]
        nxt[tail[a]] = top[b]
        tail[a] = last[node] = tail[b]
        uf[b] = a
        top[a] = node
    parent = np.asarray(parent, np.int64)
    pre = np.empty(total, np.int64)
    d = 0
    while uf[d] != d:
        d = uf[d]
    d = top[d]  # the root
    for i in range(total):  # walk the root's sequence (the image is connected: one set remains)
        pre[d] = i
        d = nxt[d]
    stop = pre[np.asarray(last, np.int64)] + 1  # preorder range of d's subtree: pre[d] .. stop[d] - 1
    level = np.concatenate([leaf_level, np.asarray(ew, np.int64)])
    # distinct (basin, value) pairs -> highest ancestor of the basin whose level >= value
    bv = basin.astype(np.int64) * 256 + vf
    seen = np.zeros(nb * 256, bool)
    seen[bv] = True
    keys = np.flatnonzero(seen)
    cur, val = keys // 256, keys % 256
    ups = [parent]
    for _ in range(max(1, int(total).bit_length()) - 1):
        ups.append(ups[-1][ups[-1]])
    for up in reversed(ups):
        nxt = up[cur]
        cur = np.where(level[nxt] >= val, nxt, cur)
    # max-tree nodes: distinct (interval node, value)
    nkey = cur * 256 + val
    present = np.zeros(total * 256, bool)
    present[nkey] = True
    mkeys = np.flatnonzero(present)
    m = mkeys.size
    index = np.zeros(total * 256, np.int64)
    index[mkeys] = np.arange(m)
    table = np.zeros(nb * 256, np.int64)
    table[keys] = index[nkey]
    pix_node = table[bv]
    knode, klev = mkeys // 256, mkeys % 256
    lastk = np.full(total, -1, np.int64)
    lastk[knode] = np.arange(m)
    has = lastk >= 0
    root_t = parent == np.arange(total)
    anc = parent.copy()
    while True:
        bad = ~has[anc] & ~root_t[anc]
        if not bad.any():
            break
        anc = np.where(bad, parent[anc], anc)
    same = np.r_[False, knode[1:] == knode[:-1]]
    ar = np.arange(m)
    par_node = np.where(same, ar - 1, lastk[anc[knode]])
    par_node = np.where(~same & root_t[knode], ar, par_node)
    # renumber the nodes in preorder (see 4.)
    sort_key = pre[knode] * 256 + klev
    order = np.argsort(sort_key)
    new_id = np.empty(m, np.int64)
    new_id[order] = ar
    end = np.searchsorted(sort_key[order], stop[knode[order]] * 256)
    return new_id[pix_node], new_id[par_node[order]], klev[order], end


def _range_min(values, start, stop):
    """Minimum of the rows ``values[start[i]:stop[i]]`` for every i: ``values`` (m, k), ``start`` and
    ``stop`` (q,) with ``start < stop``; returns (q, k). A sparse table ``table`` (L, m, k): level ``l``
    holds the minima of the windows of ``2**l`` rows starting at each row; a range is the union of two
    overlapping windows of ``2**floor(log2(length))`` rows."""
    m = values.shape[0]
    n_levels = m.bit_length()
    table = np.empty((n_levels,) + values.shape, values.dtype)
    table[0] = values
    span = 1
    for lvl in range(1, n_levels):
        np.minimum(table[lvl - 1, :m - span], table[lvl - 1, span:], out=table[lvl, :m - span])
        span *= 2
    length = stop - start
    j = np.frexp(length)[1] - 1                        # floor(log2(length)), exact for integers
    return np.minimum(table[j, start], table[j, stop - (1 << j)])


class _Tree:
    """Max-tree of an (H, W) integer image with per-node subtree aggregates.

    Node ``n`` is the connected component (``connectivity`` 1 = 4-, 2 = 8-connected) of the upper level
    set ``image >= level[n]`` containing the node's pixels; ``parent_level[n]`` is its parent's level
    (-1 for the root). Attributes are (n_nodes,) arrays: ``level, parent_level``, the bounding box
    ``x0, y0, x1, y1``, ``first`` (the raster index of the component's first pixel), ``pixel`` (one own
    pixel's raster index) and the subtree sums of ``weights`` columns (``sums``, (n_nodes, k)).
    """

    def __init__(self, image, connectivity, weights=None):
        h, w = image.shape
        pix_node, par_node, level, end = _component_tree(image, connectivity)
        n = h * w
        ar = np.arange(n)
        m = level.size
        root = par_node == np.arange(m)
        parent_level = np.where(root, -1, level[par_node])
        nodes = np.empty(m, np.int64)
        nodes[pix_node] = ar                              # one own pixel of every node
        xs = ar % w
        # own-pixel minima of x, -x, the raster index and minus it, then over each subtree's node range
        # (the rows are the raster index // w: y0 and y1 come from the first and last pixels)
        mins = np.full((4, m), n, np.int64)
        for col, vals in enumerate((xs, -xs, ar, -ar)):
            np.minimum.at(mins[col], pix_node, vals)
        mins = _range_min(np.ascontiguousarray(mins.T), np.arange(m), end)
        sums = None
        if weights is not None:
            own = np.zeros((m + 1, weights.shape[1]), np.int64)
            for j in range(weights.shape[1]):
                own[1:, j] = np.bincount(pix_node, weights=weights[:, j], minlength=m).astype(np.int64)
            cum = np.cumsum(own, axis=0)                  # cum[k] = sum of the nodes before k
            sums = cum[end] - cum[:-1]
        self.level, self.parent_level = level, parent_level
        self.x0, self.x1 = mins[:, 0], -mins[:, 1]
        self.first = mins[:, 2]
        self.y0, self.y1 = self.first // w, -mins[:, 3] // w
        self.sums = sums
        self.pixel = nodes


def _quad_events(u):
    """Per-pixel weights whose subtree sums give, for every 8-connected component of ``u > t``:
    column 0: ``2 * polygon area`` without filling holes; column 1: ``4 * Euler number``.

    For a 2x2 block with corner values a >= b >= c >= d, the block holds ``[a>t]+[b>t]+[c>t]+[d>t]``
    foreground pixels, all in one component. Area: ``2*area = [c>t] + [d>t]``. Euler number (Gray's bit
    quads, 8-connectivity): ``4*chi = n1 - n3 - 2*nD``, i.e. ``[a>t] - (1+2D)[b>t] + (2D-1)[c>t] + [d>t]``
    with D = 1 if the two largest corners are diagonal. The zero-padded border blocks are included.
    """
    h, w = u.shape
    w2 = w + 2
    pad = np.full((h + 2, w2), -1, np.int16)
    pad[1:-1, 1:-1] = u
    # composite keys (value + 1) * 4 + corner (TL 0, TR 1, BL 2, BR 3): distinct within a block; a
    # sorting network puts them in decreasing order (ties of value go to one node, so their order does
    # not change the sums). int16: the largest key is 256 * 4 + 3.
    pad *= 4
    pad += 4
    k = [pad[:-1, :-1], pad[:-1, 1:] + 1, pad[1:, :-1] + 2, pad[1:, 1:] + 3]
    for i, j in ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)):
        k[i], k[j] = np.maximum(k[i], k[j]), np.minimum(k[i], k[j])
    # ids[r] (h+1, w+1): padded raster index of each block's r-th largest corner; a padding corner
    # points at a padding pixel, dropped when the counts are cropped to the image
    base = np.arange((h + 1) * w2, dtype=np.intp).reshape(h + 1, w2)[:, :w + 1]
    ids = []
    for x in k:
        c = x & 3                                      # corner: row offset c >> 1, column offset c & 1
        i = (c >> 1).astype(np.intp)
        i *= w2
        i += base
        i += c & 1
        ids.append(i.ravel())
    size = (h + 2) * w2
    counts = [np.bincount(i, minlength=size) for i in ids]
    diag = ((k[0] & 3) + (k[1] & 3) == 3).ravel()      # TL(0)-BR(3) or TR(1)-BL(2)
    diag_counts = [np.bincount(ids[r][diag], minlength=size) for r in (1, 2)]
    area_col = counts[2] + counts[3]
    # weights 1, -(1 + 2D), 2D - 1, 1 of the four corners
    euler_col = counts[0] - counts[1] - counts[2] + counts[3] - 2 * diag_counts[0] + 2 * diag_counts[1]
    out = np.stack([area_col, euler_col], 1).reshape(h + 2, w2, 2)
    return out[1:-1, 1:-1].reshape(h * w, 2)


_MAX_DIRECT_HOLE_LEVELS = 12


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


def _alive_pairs(lo, hi, n_levels=256):
    """Expand node intervals [lo, hi] (clipped to 0..n_levels-1) into (node, t) pairs."""
    lo = np.clip(lo, 0, n_levels - 1)
    hi = np.clip(hi, -1, n_levels - 1)
    length = np.maximum(hi - lo + 1, 0)
    node = np.repeat(np.arange(lo.size), length)
    offs = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    return node, lo[node] + offs


def best_iou_per_threshold(score_map, gt_boxes, thresholds=None, multi_contour=True, return_boxes=False):
    """Best IoU between the map's boxes and the GT boxes at every threshold, in one pass.

    Equal, threshold by threshold, to ``box_iou(boxes_from_map(map, tau, multi_contour), gt).max()``.

    Args:
        score_map: (H, W) floats in [0, 1].
        gt_boxes: (g, 4) x0,y0,x1,y1 ground-truth boxes in the map's pixel frame.
        thresholds: (T,) taus; default ``arange(0, 1, 0.001)``.
        multi_contour: False = V1, True = V2. A pair ``(v1, v2)`` is returned when it is ``"both"``.
    Returns:
        (T,) float64 best IoU per threshold (or a tuple (v1, v2) for ``"both"``).
    """
    thresholds = thresholds_for_interval() if thresholds is None else np.asarray(thresholds, np.float64)
    u = scoremap_to_uint8(score_map)
    gt = np.asarray(_to_numpy(gt_boxes), np.int64).reshape(-1, 4)
    h, w = u.shape
    big_m = int(u.max())
    thr = integer_thresholds(big_m, thresholds)
    zero_iou = box_iou(np.zeros((1, 4)), gt).max(initial=0.0)
    want_v1 = multi_contour in (False, "both")
    want_v2 = multi_contour in (True, "both")
    best1 = np.full(257, zero_iou)
    best2 = np.full(257, zero_iou)
    if big_m > 0 and min(h, w) < 3:
        # tiny maps (a side < 3) go threshold by threshold, directly
        for level in np.unique(np.clip(thr, 0, 256)):
            if level >= big_m:
                continue
            contours = _Contours(u > level)
            best1[level] = box_iou(contours.largest_box(), gt).max(initial=0.0)
            best2[level] = box_iou(contours.all_boxes(), gt).max(initial=0.0)
    elif big_m > 0:
        levels_used = np.unique(np.clip(thr, 0, 256))
        fg = _Tree(u, 2, _quad_events(u))
        fg_box = _contour_to_box(fg.x0, fg.y0, fg.x1, fg.y1, h, w)
        fg_iou = box_iou(fg_box, gt).max(axis=1, initial=0.0)
        # a foreground node is the component of u > t for parent_level <= t < level
        node, t = _alive_pairs(np.maximum(fg.parent_level, 0), fg.level - 1)
        used = np.zeros(257, bool)
        used[levels_used] = True
        keep = used[t]
        node, t = node[keep], t[keep]
        n_holes = 1 - fg.sums[:, 1] // 4  # Euler number of each component = 1 - #holes
        if want_v2:
            v2 = np.full(257, -1.0)
            np.maximum.at(v2, t, fg_iou[node])
        hole_levels = np.unique(t[n_holes[node] > 0]) if want_v2 else np.zeros(0, np.int64)
        # per level, a bound on what filling every hole can add to a component's 2*area (see V1 below)
        hole_budget = np.full(257, np.iinfo(np.int64).max // 4)
        if 0 < hole_levels.size <= _MAX_DIRECT_HOLE_LEVELS:
            # few thresholds have holes: label their backgrounds directly (cheaper than a second tree)
            for level in hole_levels:
                boxes = _hole_boxes(u > level)
                if len(boxes):
                    v2[level] = max(v2[level], box_iou(boxes, gt).max(initial=0.0))
        elif hole_levels.size:  # holes at many thresholds: all background components from one min-tree
            inv = (255 - u).astype(np.uint8)
            bg = _Tree(inv, 1)
            bg_level = 255 - bg.level  # value of u
            bg_parent = np.where(bg.parent_level < 0, 256, 255 - bg.parent_level)
            hole = (bg.x0 > 0) & (bg.y0 > 0) & (bg.x1 < w - 1) & (bg.y1 < h - 1)
            hx0, hy0 = bg.x0[hole] - 1, bg.y0[hole] - 1
            hx1, hy1 = bg.x1[hole] + 1, bg.y1[hole] + 1
            hole_iou = box_iou(_contour_to_box(hx0, hy0, hx1, hy1, h, w), gt).max(axis=1, initial=0.0)
            # a background node (in u) is the component of u <= t for level <= t < parent level
            hnode, ht = _alive_pairs(bg_level[hole], bg_parent[hole] - 1)
            hk = used[ht]
            np.maximum.at(v2, ht[hk], hole_iou[hnode[hk]])
            # a hole and what it encloses lie in its bbox, so filling it changes at most the quads
            # touching that bbox, each by at most 2 in 2*area
            touching_quads = (hx1 - hx0) * (hy1 - hy0)  # (bbox width + 1) * (bbox height + 1)
            hole_budget[:] = 0
            np.add.at(hole_budget, ht, 2 * touching_quads[hnode])
        if want_v2:
            best2 = np.where(v2 >= 0, v2, best2)
        if want_v1:
            twice_area = fg.sums[:, 0]
            width_c, height_c = fg.x1 - fg.x0, fg.y1 - fg.y0
            # exact 2*area: twice_area without holes; with holes, at most the bbox's and at most
            # twice_area + the level's hole budget
            upper = np.where(n_holes[node] > 0, np.minimum(np.maximum(2 * width_c * height_c, twice_area)[node],
                                                           twice_area[node] + hole_budget[t]), twice_area[node])
            best_lower = np.full(257, -1, np.int64)
            np.maximum.at(best_lower, t, twice_area[node])
            cand = upper >= best_lower[t]
            n_cand = np.bincount(t[cand], minlength=257)
            winner = np.full(257, -1, np.int64)
            winner[t[cand]] = node[cand]
            v1 = np.full(257, -1.0)
            single = n_cand == 1
            v1[single] = fg_iou[winner[single]]
            for level in np.flatnonzero(n_cand > 1):
                mask = u > level
                cand_nodes = node[cand & (t == level)]
                # exact areas: from the tree without holes, by filling the component's crop with them
                exact = twice_area[cand_nodes].copy()
                for k in np.flatnonzero(n_holes[cand_nodes] > 0):
                    c = cand_nodes[k]
                    y0, x0 = fg.y0[c], fg.x0[c]
                    crop = mask[y0:fg.y1[c] + 1, x0:fg.x1[c] + 1]
                    lab, _ = ndi.label(crop, structure=_EIGHT)
                    py, px = divmod(int(fg.pixel[c]), w)
                    comp = lab == lab[py - y0, px - x0]
                    # fill: everything but the 4-connected background components touching the crop's edge
                    bl, _ = ndi.label(~comp, structure=_FOUR)
                    edge = np.zeros(bl.max() + 1, bool)
                    for side in (bl[0], bl[-1], bl[:, 0], bl[:, -1]):
                        edge[side] = True
                    edge[0] = False
                    exact[k] = _twice_polygon_area(~edge[bl])
                top = exact == exact.max()
                if top.sum() == 1:
                    v1[level] = fg_iou[cand_nodes[np.argmax(exact)]]
                    continue
                # equal maxima: OpenCV's contour order decides. They are outermost components (one
                # inside a hole of another has a strictly smaller area), which OpenCV lists in reverse
                # order of discovery, i.e. of their first pixel in raster order: the last one wins.
                tied = cand_nodes[top]
                v1[level] = fg_iou[tied[np.argmax(fg.first[tied])]]
            best1 = np.where(v1 >= 0, v1, best1)
    idx = np.clip(thr, 0, 256)
    out1, out2 = best1[idx], best2[idx]
    if multi_contour == "both":
        return out1, out2
    return out2 if multi_contour else out1


def iou_curves(score_map, gt_boxes, thresholds=None):
    """``(v1, v2)``: the best IoU per threshold of the largest-contour box (V1) and of every contour's box (V2)."""
    return best_iou_per_threshold(score_map, gt_boxes, thresholds, "both")


BOX_RULES = {"fixed": boxes_fixed_threshold, "percentile": boxes_percentile_threshold, "cicam": boxes_cicam}


def get_box_rule(name):
    """The box rule ``name`` of :data:`BOX_RULES`."""
    if name not in BOX_RULES:
        raise ValueError(f"unknown box rule {name!r}; choose one of {', '.join(BOX_RULES)}")
    return BOX_RULES[name]
