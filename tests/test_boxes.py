"""camkit.boxes: wsolevaluation's own expected values, a slow Suzuki-Abe reference, hand oracles."""
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

import wsol_reference as ref
from camkit.boxes import (best_iou_per_threshold, box_iou, boxes_cicam, boxes_fixed_threshold, boxes_from_map,
                          boxes_percentile_threshold, resize_boxes, scoremap_to_uint8, validate_boxes)

TAUS = np.arange(0, 1, 0.001)


# ---------------------------------------------------------------- wsolevaluation unit-test values
def test_iou_expected_values():
    assert box_iou([[1, 2, 5, 6]], [[3, 1, 4, 5]])[0, 0] == pytest.approx(8 / 27, abs=0)
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 1.0


def test_invalid_box():
    with pytest.raises(ValueError, match="invalid boxes"):
        validate_boxes([[1, 1, 0, 0]])
    # its area is 0 under the +1 convention, so its IoU with itself has a zero denominator -> 0
    assert box_iou([[1, 1, 0, 0]], [[1, 1, 0, 0]])[0, 0] == 0.0


def test_resize_expected_value():
    assert resize_boxes([[1, 2, 4, 3]], (10, 20), (35, 10)).tolist() == [[3, 1, 14, 1]]


MAP_A = [[0, 0, 0, 0, 0], [0, .4, .4, .4, .6], [0, .4, 1, .8, .6], [0, .4, .4, .4, .6]]
MAP_B = [[.4, 0, .2, .2, .2], [.4, .4, 0, .4, 0], [0, 0, 0, .4, 0], [1, .6, .8, .2, .2]]


@pytest.mark.parametrize("score_map, expected", [
    (MAP_A, [[1, 1, 4, 3], [1, 1, 4, 3], [2, 1, 4, 3], [2, 2, 4, 3], [2, 2, 3, 3]]),
    (MAP_B, [[0, 0, 4, 3], [0, 0, 2, 2], [0, 3, 3, 3], [2, 3, 3, 3], [0, 3, 1, 3]]),
])
def test_v1_boxes_expected(score_map, expected):
    m = np.asarray(score_map, dtype=np.float64)
    got = [boxes_from_map(m, t, multi_contour=False)[0].tolist() for t in (0, .2, .4, .6, .8)]
    assert got == expected
    gt = np.asarray(expected)  # the fast all-thresholds path gives IoU 1 against each expected box
    for t, box in zip((0, .2, .4, .6, .8), expected):
        assert best_iou_per_threshold(m, [box], [t], multi_contour=False)[0] == 1.0
    del gt


def test_all_zero_map():
    m = np.zeros((5, 7))
    for t in (0, .3, .999):
        assert boxes_from_map(m, t).tolist() == [[0, 0, 0, 0]]
        assert boxes_from_map(m, t, multi_contour=True).tolist() == [[0, 0, 0, 0]]
    assert (best_iou_per_threshold(m, [[0, 0, 0, 0]], TAUS, "both")[0] == 1).all()


def test_nan_raises():
    m = np.zeros((4, 4))
    m[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        boxes_from_map(m, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        best_iou_per_threshold(m, [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        boxes_from_map(np.full((4, 4), 2.0), 0.5)


# ------------------------------------------------------------------------------- hand oracles
def test_truncation_and_strict_threshold():
    # 0.5*255 = 127.5 -> 127; max 255; tau=0.5 -> int(127.5)=127: 127 > 127 is False
    m = np.array([[1.0, 0.5, 0.0]])
    assert scoremap_to_uint8(m).tolist() == [[255, 127, 0]]
    assert boxes_from_map(m, 0.5).tolist() == [[0, 0, 1, 0]]   # x1 = min(0+1, W-1)
    assert boxes_from_map(m, 0.49).tolist() == [[0, 0, 2, 0]]  # 124 < 127 -> two pixels, w=2 -> min(2, 2)


def test_ring_gives_component_and_hole():
    m = np.zeros((7, 7))
    m[1:6, 1:6] = 1
    m[3, 3] = 0
    # component bbox x,y 1..5 -> (1,1,min(6,6),min(6,6)); hole (3,3) -> fg 4-neighbours 2..4 -> (2,2,5,5)
    assert boxes_from_map(m, 0.5, multi_contour=True).tolist() == [[1, 1, 6, 6], [2, 2, 5, 5]]
    assert boxes_from_map(m, 0.5).tolist() == [[1, 1, 6, 6]]


def test_v1_uses_polygon_area_not_pixel_count():
    # a 1-pixel-thick long line (7 pixels, polygon area 0) versus a 2x2 square (4 pixels, area 1)
    m = np.zeros((6, 9))
    m[0, 0:7] = 1
    m[3:5, 3:5] = 1
    assert boxes_from_map(m, 0.5).tolist() == [[3, 3, 5, 5]]


def test_v1_ties_follow_opencv_order():
    # three single pixels (area 0 each): OpenCV lists top-level contours in reverse raster order,
    # so Python's max keeps the last-discovered one
    m = np.zeros((5, 5))
    m[0, 4] = m[2, 0] = m[4, 2] = 1
    assert boxes_from_map(m, 0.5).tolist() == [[2, 4, 3, 4]]


def test_torch_input_and_iou_torch():
    m = torch.tensor(MAP_A, dtype=torch.float64)
    assert boxes_from_map(m, 0.4).tolist() == [[2, 1, 4, 3]]
    iou = box_iou(torch.tensor([[1, 2, 5, 6]]), torch.tensor([[3, 1, 4, 5], [1, 2, 5, 6]]))
    assert isinstance(iou, torch.Tensor) and iou.tolist() == [[8 / 27, 1.0]]


def test_box_iou_matches_loop_reference():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 20, (30, 4))
    b = rng.integers(0, 20, (20, 4))
    np.testing.assert_array_equal(box_iou(a, b), ref.iou_matrix(a, b))


# ------------------------------------------------------------------------- alternative rules
def test_fixed_threshold_rule():
    np.testing.assert_array_equal(boxes_fixed_threshold(np.asarray(MAP_B), 0.2), [[0, 0, 2, 2]])


def test_percentile_rule():
    m = np.asarray(MAP_A)
    u = scoremap_to_uint8(m)
    # u sorted: 8x0, 7x102, 3x153, 204, 255; position 0.9*19 = 17.1 -> 153 + 0.1*51 = 158.1
    thr = 0.35 * np.percentile(u, 90)
    assert thr == pytest.approx(0.35 * 158.1)  # 55.335: keeps every 0.4 (102) and up
    assert boxes_percentile_threshold(m).tolist() == [[1, 1, 4, 3]]


def test_cicam_rule():
    m = np.zeros((8, 8))
    m[1, 1:3] = 0.9           # small strong blob: bbox area 2
    m[4:7, 4:7] = 0.6         # larger blob: mean of kept = (2*.9*255.. ) -> both survive the mean? no:
    m[5, 5] = 1.0
    # kept: > 0.2*255 -> all non-zero; mean of kept u over 2+9 pixels; then > mean; largest 4-conn bbox
    u = scoremap_to_uint8(m).astype(float)
    kept = u > 0.2 * u.max()
    keep = kept & (u > u[kept].mean())
    lab, _ = ndi.label(keep)
    expected = max(ndi.find_objects(lab), key=lambda s: (s[0].stop - s[0].start) * (s[1].stop - s[1].start))
    got = boxes_cicam(m)[0].tolist()
    assert got == [expected[1].start, expected[0].start, expected[1].stop - 1, expected[0].stop - 1]
    assert boxes_cicam(np.zeros((4, 4))).tolist() == [[0, 0, 0, 0]]


# ------------------------------------------------------- fast path == slow reference, exactly
def _maps(seed, n):
    rng = np.random.default_rng(seed)
    for k in range(n):
        h, w = (int(v) for v in rng.integers(2, 14, 2))
        kind = k % 6
        if kind == 0:       # noise: many components, holes, touching diagonals
            m = rng.random((h, w))
        elif kind == 1:     # smooth blobs
            m = ndi.zoom(rng.random((3, 4)), (h / 3, w / 4), order=1)
        elif kind == 2:     # few levels: flat regions and ties
            m = np.round(rng.random((h, w)) * 3) / 3
        elif kind == 3:     # rings with holes and nested islands
            yy, xx = np.mgrid[:h, :w]
            r = np.hypot(yy - h / 2, xx - w / 2)
            m = (np.cos(r * rng.uniform(1, 3)) + 1) / 2
        elif kind == 4:     # binary
            m = (rng.random((h, w)) < 0.5).astype(float)
        else:               # sparse / nearly empty
            m = np.where(rng.random((h, w)) < 0.1, rng.random((h, w)), 0.0)
            if k % 12 == 11:
                m[:] = 0
        if m.max() > 0:
            m = m / m.max()
        gt = [[int(rng.integers(0, w // 2 + 1)), int(rng.integers(0, h // 2 + 1)),
               int(rng.integers(w // 2, w)), int(rng.integers(h // 2, h))]]
        if k % 4 == 0:
            gt.append([0, 0, w - 1, h - 1])
        yield m.astype(np.float32 if k % 2 else np.float64), np.asarray(gt)


def _distinct_taus(m, rng, k=20):
    """Indices into TAUS: one tau per distinct integer threshold int(tau*max), k of them at random
    (plus the first and last), so every kind of mask is covered without repeating identical masks."""
    top = int(ref.to_uint8(m).max())
    _, first = np.unique(np.trunc(TAUS * top), return_index=True)
    pick = rng.choice(first, size=min(k, first.size), replace=False)
    return np.unique(np.r_[pick, 0, len(TAUS) - 1])


def _assert_fast_equals_reference(maps, rng):
    """V1 and V2 curves over all 1000 thresholds at once equal the reference at each distinct threshold."""
    for m, gt in maps:
        v1, v2 = best_iou_per_threshold(m, gt, TAUS, "both")
        idx = _distinct_taus(m, rng)
        r1, r2 = ref.best_iou_curves(m, gt, TAUS[idx])
        np.testing.assert_array_equal(v1[idx], r1)
        np.testing.assert_array_equal(v2[idx], r2)


def test_fast_path_equals_reference_on_seeded_maps():
    _assert_fast_equals_reference(_maps(0, 200), np.random.default_rng(11))


def test_single_threshold_boxes_equal_reference():
    rng = np.random.default_rng(5)
    for m, _ in _maps(1, 60):
        u = ref.to_uint8(m)
        for t in rng.random(4):
            for mc in (False, True):
                np.testing.assert_array_equal(boxes_from_map(m, t, mc), ref.boxes_at_threshold(u, t, mc))


def test_fast_path_at_224_equals_reference():
    rng = np.random.default_rng(7)
    taus = TAUS[::97]
    for k in range(3):
        low = torch.tensor(rng.random((1, 1, 7, 7)) if k < 2 else rng.random((1, 1, 28, 28)), dtype=torch.float32)
        m = torch.nn.functional.interpolate(low, size=(224, 224), mode="bilinear", align_corners=False)[0, 0].numpy()
        m = (m - m.min()) / (m.max() - m.min())
        gt = np.array([[20, 30, 150, 200], [100, 100, 223, 223]])
        v1, v2 = best_iou_per_threshold(m, gt, taus, "both")
        r1, r2 = ref.best_iou_curves(m, gt, taus)
        np.testing.assert_array_equal(v1, r1)
        np.testing.assert_array_equal(v2, r2)


def test_reference_matches_opencv_if_available():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    for _ in range(100):
        mask = rng.random(tuple(int(v) for v in rng.integers(2, 20, 2))) < rng.uniform(0.2, 0.8)
        cs = cv2.findContours((mask * 255).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        rc = ref.contours(mask)
        assert [cv2.boundingRect(c) for c in cs] == [tuple(int(v) for v in c["rect"]) for c in rc]
        assert [cv2.contourArea(c) for c in cs] == [c["area"] for c in rc]


@pytest.mark.parametrize("direct_levels", [0, 10 ** 6])
def test_hole_paths_min_tree_and_direct_agree_with_reference(monkeypatch, direct_levels):
    """Holes come from a min-tree or, when few thresholds have any, from direct labelling: both exact."""
    import camkit.boxes as boxes_module
    monkeypatch.setattr(boxes_module, "_MAX_DIRECT_HOLE_LEVELS", direct_levels)
    rng = np.random.default_rng(13)
    for k, (m, gt) in enumerate(_maps(2, 60)):
        if k % 6 not in (0, 3):  # noise and rings: the maps with holes
            continue
        _, v2 = best_iou_per_threshold(m, gt, TAUS, "both")
        idx = _distinct_taus(m, rng)
        np.testing.assert_array_equal(v2[idx], ref.best_iou_curves(m, gt, TAUS[idx])[1])


def _tree_nodes(pix_node, par_node, level):
    """A max-tree as a set of (level, parent level, own pixels) per node (independent of node ids)."""
    root = par_node == np.arange(level.size)
    assert (root | (level[par_node] < level)).all() and root.sum() == 1
    parent_level = np.where(root, -1, level[par_node])
    own = {}
    for p, nd in enumerate(pix_node.tolist()):
        own.setdefault(nd, []).append(p)
    return {(int(level[nd]), int(parent_level[nd]), tuple(own[nd])) for nd in range(level.size)}


def test_component_tree_equals_skimage_max_tree():
    """The basin + spanning-tree construction gives skimage's max-tree: same nodes, same own pixels."""
    from camkit.boxes import _component_tree
    max_tree = pytest.importorskip("skimage.morphology").max_tree
    rng = np.random.default_rng(17)
    images = [scoremap_to_uint8(m) for m, _ in _maps(3, 36) if min(m.shape) >= 3]
    low = torch.tensor(rng.random((2, 1, 7, 7)), dtype=torch.float32)
    up = torch.nn.functional.interpolate(low, size=(64, 80), mode="bilinear", align_corners=False)[:, 0].numpy()
    images += [(u * 255).astype(np.uint8) for u in up]
    images += [rng.integers(0, 256, (40, 37)).astype(np.uint8), np.zeros((4, 5), np.uint8)]
    for img in images:
        for conn in (1, 2):
            parent, _ = max_tree(img, connectivity=conn)
            pf, vf, ar = parent.ravel(), img.ravel(), np.arange(img.size)
            canonical = (pf == ar) | (vf[pf] != vf)
            node_pixel = np.where(canonical, ar, pf)
            nodes = np.flatnonzero(canonical)
            index = np.full(img.size, -1)
            index[nodes] = np.arange(nodes.size)
            expected = _tree_nodes(index[node_pixel], index[node_pixel[pf[nodes]]], vf[nodes].astype(np.int64))
            assert _tree_nodes(*_component_tree(img, conn)[:3]) == expected


def test_component_tree_subtrees_are_contiguous_ranges():
    """Nodes come in a preorder: the subtree of node k is exactly the nodes k .. end[k] - 1."""
    from camkit.boxes import _component_tree
    rng = np.random.default_rng(19)
    images = [scoremap_to_uint8(m) for m, _ in _maps(4, 24) if min(m.shape) >= 3]
    images.append(rng.integers(0, 256, (30, 33)).astype(np.uint8))
    for img in images:
        for conn in (1, 2):
            _, par_node, level, end = _component_tree(img, conn)
            m = level.size
            inside = np.zeros((m, m), bool)  # inside[a, k]: a is in k's subtree
            a = np.arange(m)
            inside[a, a] = True
            cur = a.copy()
            for _ in range(m):
                cur = par_node[cur]
                inside[a, cur] = True
            for k in range(m):
                assert np.array_equal(np.flatnonzero(inside[:, k]), np.arange(k, end[k]))


def test_tree_boxes_and_first_pixels_equal_labelling():
    """_Tree's per-node bbox (x from own-pixel minima, y from the first and last raster pixels) and first
    pixel equal those of the node's component labelled directly, for both connectivities."""
    from camkit.boxes import _Tree
    rng = np.random.default_rng(23)
    images = [scoremap_to_uint8(m) for m, _ in _maps(3, 28) if min(m.shape) >= 3]
    images += [rng.integers(0, 256, (21, 26)).astype(np.uint8), rng.integers(0, 3, (17, 30)).astype(np.uint8)]
    for img in images:
        for conn, struct in ((1, ndi.generate_binary_structure(2, 1)), (2, np.ones((3, 3), bool))):
            tree = _Tree(img, conn)
            for k in range(tree.level.size):
                py, px = divmod(int(tree.pixel[k]), img.shape[1])
                lab, _ = ndi.label(img >= tree.level[k], structure=struct)
                ys, xs = np.nonzero(lab == lab[py, px])
                got = (tree.x0[k], tree.y0[k], tree.x1[k], tree.y1[k], tree.first[k])
                assert got == (xs.min(), ys.min(), xs.max(), ys.max(), ys.min() * img.shape[1] + xs[0])


@pytest.mark.parametrize("direct_levels", [0, 10 ** 6])
def test_v1_hole_budget_and_ties_agree_with_reference(monkeypatch, direct_levels):
    """V1 near-ties: bounded with the min-tree's hole budget (0) or the bbox only (10**6), exact areas by
    filling, equal maxima by first-pixel order; all equal to the reference."""
    import camkit.boxes as boxes_module
    monkeypatch.setattr(boxes_module, "_MAX_DIRECT_HOLE_LEVELS", direct_levels)
    rng = np.random.default_rng(23)
    for k, (m, gt) in enumerate(_maps(5, 60)):
        v1, _ = best_iou_per_threshold(m, gt, TAUS, "both")
        idx = _distinct_taus(m, rng)
        np.testing.assert_array_equal(v1[idx], ref.best_iou_curves(m, gt, TAUS[idx])[0])
    # equal areas: a ring (2*area 8 once filled, 6 without) and two 3x3 squares (8): the last-discovered wins
    m = np.zeros((5, 17))
    m[1:4, 1:4] = 1
    m[2, 2] = 0
    m[1:4, 6:9] = 1
    m[1:4, 12:15] = 1
    m[1, 12] = 0.9   # same mask at 0.5; first pixel (1, 12) is still the last discovered
    for gt in ([[1, 1, 4, 4]], [[6, 1, 9, 4]], [[12, 1, 15, 4]]):
        got = best_iou_per_threshold(m, gt, [0.5], multi_contour=False)
        assert got.tolist() == ref.best_iou_curves(m, np.asarray(gt), np.array([0.5]))[0].tolist()
    assert boxes_from_map(m, 0.5).tolist() == [[12, 1, 15, 4]]


@pytest.mark.parametrize("int32_max_pixels", [0, 10 ** 9])
def test_component_tree_int64_and_int32_keys_agree(monkeypatch, int32_max_pixels):
    """The tree build works on int32 pixel keys when ``value * n + index`` fits, int64 otherwise; both
    give the same tree, and the all-thresholds curves still equal the reference."""
    import camkit.boxes as boxes_module
    rng = np.random.default_rng(29)
    images = [scoremap_to_uint8(m) for m, _ in _maps(3, 40) if min(m.shape) >= 3]
    images.append(rng.integers(0, 256, (21, 26)).astype(np.uint8))
    expected = [[boxes_module._component_tree(img, conn) for conn in (1, 2)] for img in images]
    monkeypatch.setattr(boxes_module, "_INT32_MAX_PIXELS", int32_max_pixels)
    for img, exp in zip(images, expected):
        for conn, e in zip((1, 2), exp):
            for got, want in zip(boxes_module._component_tree(img, conn), e):
                np.testing.assert_array_equal(got, want)
    _assert_fast_equals_reference(_maps(2, 48), rng)


def test_range_min_equals_brute_force():
    """The sparse-table range minimum equals ``values[start:stop].min(0)`` for all ranges, every size."""
    from camkit.boxes import _range_min
    rng = np.random.default_rng(31)
    for m in (1, 2, 3, 7, 8, 9, 33):
        values = rng.integers(-50, 50, (m, 3))
        start, stop = np.triu_indices(m + 1, 1)
        start, stop = start.astype(np.int64), stop.astype(np.int64)
        expected = np.stack([values[a:b].min(0) for a, b in zip(start, stop)])
        np.testing.assert_array_equal(_range_min(values, start, stop), expected)


def test_quad_events_give_area_and_euler_number_at_every_threshold():
    """Summed over a component's pixels, the quad events give (2 * unfilled polygon area, 4 * Euler
    number) of the 8-connected components of ``u > t``, for every t (checked on the quads directly)."""
    from camkit.boxes import _quad_events
    rng = np.random.default_rng(37)
    for shape in ((1, 1), (1, 6), (5, 1), (2, 2), (6, 7), (9, 4)):
        for levels in (2, 4, 256):
            u = (rng.integers(0, levels, shape) * (255 // (levels - 1))).astype(np.uint8)
            ev = _quad_events(u)
            for t in np.unique(np.r_[-1, u.ravel().astype(np.int64)])[:-1]:
                mask = u > t
                lab, n = ndi.label(mask, structure=np.ones((3, 3), bool))
                for c in range(1, n + 1):
                    comp = np.pad(lab == c, 1)
                    q = (comp[:-1, :-1].astype(int) + comp[:-1, 1:] + comp[1:, :-1] + comp[1:, 1:])
                    diag = (comp[:-1, :-1] & comp[1:, 1:] & ~comp[:-1, 1:] & ~comp[1:, :-1]) | \
                           (comp[:-1, 1:] & comp[1:, :-1] & ~comp[:-1, :-1] & ~comp[1:, 1:])
                    area2 = 2 * (q == 4).sum() + (q == 3).sum()
                    euler4 = (q == 1).sum() - (q == 3).sum() - 2 * diag.sum()
                    own = (lab == c).ravel()
                    got = ev[own & (u.ravel() > t)].sum(0)
                    assert got.tolist() == [area2, euler4], (shape, t, c)
