"""Slow, straight-from-the-definition reference for wsolevaluation's boxes and metrics.

Nothing here is shared with ``camkit.boxes``' fast path. Per threshold (every one of the 1000 taus, no
caching), per contour:

* foreground ``u > int(tau * max(u))``; 8-connected components and 4-connected background components
  with ``scipy.ndimage.label``; holes = background components not touching the border;
* every border is traced with Suzuki & Abe's border-following algorithm (1985, steps 3.1-3.5) through
  pixel centres, and its polygon area is the shoelace formula (as OpenCV ``contourArea``);
* contour boxes from the traced points (as OpenCV ``boundingRect``) -> ``(x, y, min(x+w, W-1), min(y+h, H-1))``;
* OpenCV's order: raster discovery, each border inserted at the head of its parent's children, the tree
  flattened depth-first; V1 = Python ``max`` by area over that list (first of equal maxima).
"""
import numpy as np
from scipy import ndimage as ndi

# 8-neighbourhood, clockwise in image coordinates (row down): E, SE, S, SW, W, NW, N, NE
_DIRS = [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)]
_DIR_INDEX = {d: k for k, d in enumerate(_DIRS)}


def to_uint8(score_map):
    s = np.asarray(score_map)
    if np.isnan(s).any():
        raise ValueError("NaN in score map")
    return (s * s.dtype.type(255)).astype(np.uint8)


def trace_border(img, start, zero_neighbour):
    """Suzuki-Abe border following on a zero-padded 0/1 image (a list of rows). Returns (row, col) points."""
    i, j = start
    d0 = _DIR_INDEX[(zero_neighbour[0] - i, zero_neighbour[1] - j)]
    # 3.1: clockwise from the zero neighbour, find the first nonzero pixel
    found = None
    for k in range(1, 9):
        d = (d0 + k) % 8
        if img[i + _DIRS[d][0]][j + _DIRS[d][1]]:
            found = (i + _DIRS[d][0], j + _DIRS[d][1])
            break
    if found is None:
        return [(i, j)]
    i1 = found
    i2, i3 = i1, (i, j)
    points = [(i, j)]
    while True:
        # 3.3: counterclockwise from the element after i2, around i3
        d2 = _DIR_INDEX[(i2[0] - i3[0], i2[1] - i3[1])]
        for k in range(1, 9):
            d = (d2 - k) % 8
            cand = (i3[0] + _DIRS[d][0], i3[1] + _DIRS[d][1])
            if img[cand[0]][cand[1]]:
                i4 = cand
                break
        # 3.5
        if i4 == (i, j) and i3 == i1:
            break
        i2, i3 = i3, i4
        points.append(i3)
    return points


def shoelace_area(points):
    if len(points) < 3:
        return 0.0
    ys = np.array([p[0] for p in points], float)
    xs = np.array([p[1] for p in points], float)
    return abs(float(np.sum(xs * np.roll(ys, -1) - np.roll(xs, -1) * ys))) / 2.0


def contours(mask):
    """All contours of a binary mask in OpenCV RETR_TREE order: list of dicts(kind, points, area, rect)."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    img = np.zeros((h + 2, w + 2), np.uint8)
    img[1:-1, 1:-1] = mask
    img = img.tolist()
    fg, nf = ndi.label(mask, structure=np.ones((3, 3)))
    bg, nb = ndi.label(~mask, structure=ndi.generate_binary_structure(2, 1))
    border_bg = set(np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))) - {0}
    items = {}  # key -> dict
    # raster-scan discovery: a border is found at the first pixel (raster order) of its component
    discovered = []
    for labels, kind in ((fg, "fg"), (bg, "hole")):
        labs, first = np.unique(labels.ravel(), return_index=True)
        for lab, idx in zip(labs, first):
            if lab == 0 or (kind == "hole" and lab in border_bg):
                continue
            discovered.append((int(idx), kind, int(lab)))
    discovered = [(kind, lab, idx // w, idx % w) for idx, kind, lab in sorted(discovered)]
    for kind, lab, y, x in discovered:
        if kind == "fg":
            pts = trace_border(img, (y + 1, x + 1), (y + 1, x))
            parent = ("frame", 0)
            if x > 0 and bg[y, x - 1] not in border_bg:
                parent = ("hole", bg[y, x - 1])
        else:
            pts = trace_border(img, (y + 1, x), (y + 1, x + 1))
            parent = ("fg", fg[y, x - 1])
        pts = [(r - 1, c - 1) for r, c in pts]
        ys = [p[0] for p in pts]
        xs = [p[1] for p in pts]
        rect = (min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)
        items[(kind, lab)] = dict(kind=kind, points=pts, area=shoelace_area(pts), rect=rect,
                                  parent=parent, children=[])
    for key, it in items.items():
        if it["parent"] != ("frame", 0):
            items[it["parent"]]["children"].insert(0, key)  # head insertion, in discovery order
    top = []
    for kind, lab, _, _ in discovered:
        if items[(kind, lab)]["parent"] == ("frame", 0):
            top.insert(0, (kind, lab))
    out = []

    def visit(key):
        out.append(items[key])
        for child in items[key]["children"]:
            visit(child)

    for key in top:
        visit(key)
    return out


def boxes_at_threshold(u, tau, multi_contour):
    return _boxes(contours(u > int(tau * np.max(u))), u.shape, multi_contour)


def _boxes(cs, shape, multi_contour):
    h, w = shape
    if not cs:
        return np.asarray([[0, 0, 0, 0]])
    if not multi_contour:
        cs = [max(cs, key=lambda c: c["area"])]
    boxes = []
    for c in cs:
        x, y, bw, bh = c["rect"]
        boxes.append([x, y, min(x + bw, w - 1), min(y + bh, h - 1)])
    return np.asarray(boxes)


def iou_matrix(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0, min(p[2], q[2]) - max(p[0], q[0]) + 1)
            ih = max(0, min(p[3], q[3]) - max(p[1], q[1]) + 1)
            inter = iw * ih
            union = (p[2] - p[0] + 1) * (p[3] - p[1] + 1) + (q[2] - q[0] + 1) * (q[3] - q[1] + 1) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def best_iou_curve(score_map, gt_boxes, thresholds, multi_contour):
    """(T,) best IoU per threshold, one threshold at a time."""
    u = to_uint8(score_map)
    return np.array([iou_matrix(boxes_at_threshold(u, t, multi_contour), gt_boxes).max() for t in thresholds])


def best_iou_curves(score_map, gt_boxes, thresholds):
    """(V1 curve, V2 curve), each (T,), from one contour list per threshold."""
    u = to_uint8(score_map)
    v1, v2 = [], []
    for t in thresholds:
        cs = contours(u > int(t * np.max(u)))
        v1.append(iou_matrix(_boxes(cs, u.shape, False), gt_boxes).max())
        v2.append(iou_matrix(_boxes(cs, u.shape, True), gt_boxes).max())
    return np.array(v1), np.array(v2)


def max_box_acc(maps, gts, thresholds, multi_contour, deltas=(30, 50, 70)):
    """Percent correct per (delta, threshold) and the max over thresholds, wsolevaluation's loop."""
    counts = np.zeros((len(deltas), len(thresholds)))
    for m, g in zip(maps, gts):
        curve = best_iou_curve(m, g, thresholds, multi_contour)
        for k, d in enumerate(deltas):
            counts[k] += curve >= d / 100
    acc = counts * 100 / len(maps)
    return {d: acc[k].max() for k, d in enumerate(deltas)}


def pxap(maps, masks, interval=0.001, ignore=255):
    """PxAP and pIoU from the definition: histograms, reverse cumsums, sum of precision * d(recall)."""
    edges = list(np.arange(0, 1, interval)) + [1.0, 2.0, 3.0]
    n_bins = len(edges) - 1
    pos = np.zeros(n_bins)
    neg = np.zeros(n_bins)
    for m, gt in zip(maps, masks):
        m = np.asarray(m, float)
        gt = np.asarray(gt)
        keep = gt != ignore
        pos += np.histogram(m[keep & (gt == 1)], bins=edges)[0]
        neg += np.histogram(m[keep & (gt == 0)], bins=edges)[0]
    tp = np.cumsum(pos[::-1])[::-1]
    fp = np.cumsum(neg[::-1])[::-1]
    fn = pos.sum() - tp
    # wsolevaluation orders the curve from the highest threshold down (reversed cumulative sums)
    tp_r, fp_r = tp[::-1], fp[::-1]
    terms = []
    for i in range(1, n_bins):
        if tp_r[i] + fp_r[i] > 0:
            precision = tp_r[i] / (tp_r[i] + fp_r[i])
            terms.append(precision * (tp_r[i] / pos.sum() - tp_r[i - 1] / pos.sum()))
    total = np.sum(np.array(terms))  # numpy's (pairwise) summation, as wsolevaluation's .sum()
    iou = tp / (tp + fp + fn)
    return total * 100, iou.max() * 100
