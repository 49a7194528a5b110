"""camkit.boxes._compiled: the numba kernels give the numpy path's numbers, array for array.

The numpy path is itself checked against OpenCV and the per-threshold reference (test_boxes_curves.py,
test_boxes_component_tree.py); here every compiled result is compared with it in one process, switched by
``CAMKIT_NO_NUMBA``. The kernels are compiled (or loaded from numba's cache) by the first call; nothing is
timed.
"""
import subprocess
import sys

import numpy as np
import pytest
import torch

from box_maps import TAUS, seeded_maps
from camkit.boxes import _compiled, best_iou_per_threshold, iou_curves, iou_curves_of_uint8, scoremap_to_uint8
from camkit.boxes import _component_tree as ct
from camkit.boxes import curves

pytest.importorskip("numba")


def _numpy_path(monkeypatch, fn, *args):
    monkeypatch.setenv("CAMKIT_NO_NUMBA", "1")
    try:
        return fn(*args)
    finally:
        monkeypatch.delenv("CAMKIT_NO_NUMBA")


def _upsampled(rng, size, grid=7):
    low = torch.tensor(rng.random((1, 1, grid, grid)), dtype=torch.float32)
    m = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    return (m - m.min()) / max(float(m.max() - m.min()), 1e-12)


def _maps_of_kind(kind, rng, size):
    """A seeded (size) map in [0, 1] of one kind, with a random GT box."""
    h, w = size
    m = _upsampled(rng, size, grid=int(rng.integers(3, 15)))
    if kind == "noisy":          # many small components and holes
        m = 0.6 * m + 0.4 * rng.random(size)
    elif kind == "plateaus":     # few levels: ties, wide flat regions
        m = np.floor(m * 6) / 6
    elif kind == "holes":        # rings around local minima: holes at many thresholds
        m = np.abs(np.sin(m * rng.uniform(4, 12)))
    elif kind == "sparse":       # mostly zero
        m = np.where(m > 0.7, m, 0.0)
    m = m / max(float(m.max()), 1e-12)
    x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
    gt = [[x0, y0, int(rng.integers(x0, w)), int(rng.integers(y0, h))]]
    return m.astype(np.float32), np.asarray(gt)


def _cases():
    rng = np.random.default_rng(2024)
    # tiny maps of every kind, 3..13 pixels a side (a side < 3 goes through the per-threshold emulation
    # on both paths: a few such maps only; the trees of 1xN and Nx1 images are compared below)
    cases = [case for case in seeded_maps(31, 260) if min(case[0].shape) >= 3]
    for shape in ((1, 9), (9, 1), (2, 30), (3, 3), (3, 40), (40, 3)):
        m = rng.random(shape)
        cases.append((m / m.max(), np.asarray([[0, 0, shape[1] - 1, shape[0] - 1]])))
    cases.append((np.zeros((20, 17)), np.asarray([[1, 2, 8, 9]])))     # empty map
    cases.append((np.full((16, 21), 0.5), np.asarray([[1, 2, 8, 9]])))  # flat map
    for kind in ("smooth", "noisy", "plateaus", "holes", "sparse"):
        for _ in range(6):
            cases.append(_maps_of_kind(kind, rng, (int(rng.integers(20, 120)), int(rng.integers(20, 120)))))
        cases.append(_maps_of_kind(kind, rng, (224, 224)))
    for kind in ("smooth", "plateaus"):
        cases.append(_maps_of_kind(kind, rng, (448, 448)))
    return cases


CASES = _cases()


def test_switch_is_read_at_call_time(monkeypatch):
    monkeypatch.delenv("CAMKIT_NO_NUMBA", raising=False)
    assert _compiled.enabled() and _compiled.enabled((224, 224))
    for value, expected in (("1", False), ("yes", False), ("0", True), ("", True)):
        monkeypatch.setenv("CAMKIT_NO_NUMBA", value)
        assert _compiled.enabled() is expected
    monkeypatch.delenv("CAMKIT_NO_NUMBA")
    monkeypatch.setattr(_compiled, "MAX_PADDED_PIXELS", 100)
    assert _compiled.enabled((8, 8)) and not _compiled.enabled((9, 9))


def _refuse(*args, **kwargs):
    raise AssertionError("the compiled kernel ran on the numpy path")


@pytest.mark.parametrize("how", ["env", "too_large"])
def test_numpy_path_runs_no_compiled_kernel(monkeypatch, how):
    """With the switch set (or an image too large for int32 indices) no compiled kernel is called."""
    m, gt = _maps_of_kind("holes", np.random.default_rng(3), (48, 60))
    expected = iou_curves(m, gt, TAUS)
    for name in ("component_tree", "quad_events", "filled_twice_area", "largest_components", "scatter_max",
                 "scatter_add"):
        monkeypatch.setattr(_compiled, name, _refuse)
    if how == "env":
        monkeypatch.setenv("CAMKIT_NO_NUMBA", "1")
    else:
        monkeypatch.setattr(_compiled, "MAX_PADDED_PIXELS", 100)
        monkeypatch.setattr(curves, "_scatter_max", lambda out, index, values: np.maximum.at(out, index, values))
        monkeypatch.setattr(curves, "_scatter_add", lambda out, index, values: np.add.at(out, index, values))
    got = iou_curves(m, gt, TAUS)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_iou_curves_compiled_equal_numpy(monkeypatch):
    """V1 and V2 together, and each alone (V1 alone has no hole budget: other candidates are filled)."""
    for m, gt in CASES:
        fast = iou_curves(m, gt, TAUS)
        slow = _numpy_path(monkeypatch, iou_curves, m, gt, TAUS)
        assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1]), m.shape
        for multi in (False, True):
            fast = best_iou_per_threshold(m, gt, TAUS, multi_contour=multi)
            slow = _numpy_path(monkeypatch, best_iou_per_threshold, m, gt, TAUS, multi)
            assert np.array_equal(fast, slow), (m.shape, multi)


@pytest.mark.parametrize("direct_levels", [0, 10 ** 6])
def test_hole_paths_compiled_equal_numpy(monkeypatch, direct_levels):
    """Holes from the min-tree (0) and from labelling each threshold (10**6) agree on both paths."""
    monkeypatch.setattr(curves, "_MAX_DIRECT_HOLE_LEVELS", direct_levels)
    rng = np.random.default_rng(7)
    for kind in ("holes", "noisy", "plateaus"):
        for _ in range(3):
            m, gt = _maps_of_kind(kind, rng, (int(rng.integers(20, 90)), int(rng.integers(20, 90))))
            u = scoremap_to_uint8(m)
            fast = iou_curves_of_uint8(u, gt, TAUS)
            slow = _numpy_path(monkeypatch, iou_curves_of_uint8, u, gt, TAUS)
            assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1])


def _images():
    rng = np.random.default_rng(99)
    images = [scoremap_to_uint8(m) for m, _ in CASES[::3]]
    images += [rng.integers(0, k, shape).astype(np.uint8) for k in (2, 3, 256) for shape in
               ((1, 1), (1, 12), (12, 1), (2, 2), (17, 23), (64, 50))]
    images += [np.zeros((5, 7), np.uint8), np.full((6, 4), 255, np.uint8)]
    return images


def _descendants_are_ranges(parent_node, subtree_end):
    m = parent_node.size
    for k in range(m):
        members = []
        for j in range(m):          # j is in k's subtree when k is on j's path to the root
            a = j
            while a != k and parent_node[a] != a:
                a = parent_node[a]
            if a == k:
                members.append(j)
        if members != list(range(k, subtree_end[k])):
            return False
    return True


@pytest.mark.parametrize("connectivity", [1, 2])
def test_max_tree_and_aggregates_equal_numpy(monkeypatch, connectivity):
    """The same nodes (as pixel sets), levels, parents and per-node aggregates; node ids are a preorder
    whose subtree ranges hold exactly the descendants."""
    for img in _images():
        weights = ct.quad_events(img)
        fast = ct.max_tree(img, connectivity)
        slow = _numpy_path(monkeypatch, ct.max_tree, img, connectivity)
        fast_node, slow_node = fast[0], slow[0]
        # one bijection between the node ids maps the pixels, the parents and the levels
        to_slow = np.full(fast[2].size, -1)
        to_slow[fast_node] = slow_node
        assert fast[2].size == slow[2].size and np.array_equal(to_slow[fast_node], slow_node)
        assert np.unique(to_slow).size == to_slow.size
        assert np.array_equal(to_slow[fast[1]], slow[1][to_slow]) and np.array_equal(fast[2], slow[2][to_slow])
        if fast[2].size <= 300:
            assert _descendants_are_ranges(fast[1], fast[3])
        tree = ct.ComponentTree(img, connectivity, weights)
        ref = _numpy_path(monkeypatch, ct.ComponentTree, img, connectivity, weights)
        for name in ("level", "parent_level", "x0", "y0", "x1", "y1", "first_pixel", "own_pixel", "subtree_sums"):
            assert np.array_equal(getattr(tree, name), getattr(ref, name)[to_slow]), name
        assert ct.ComponentTree(img, connectivity).subtree_sums is None
        # quad=True: the quad events computed on the way (compiled) or first (numpy), the same sums
        assert np.array_equal(ct.ComponentTree(img, connectivity, quad=True).subtree_sums, tree.subtree_sums)
        numpy_quad = _numpy_path(monkeypatch, ct.ComponentTree, img, connectivity, None, True)
        assert np.array_equal(numpy_quad.subtree_sums, ref.subtree_sums)


def test_component_tree_weights_or_quad_not_both():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with pytest.raises(ValueError, match="not both"):
        ct.ComponentTree(img, 2, ct.quad_events(img), quad=True)


def test_quad_events_equal_numpy():
    for img in _images():
        assert np.array_equal(_compiled.quad_events(img), ct._numpy_quad_events(img))


def test_filled_twice_area_hand_computed():
    """Hand-computed: a one-pixel-wide 5x5 square ring around a 3x3 hole that holds a one-pixel island
    filled is the 5x5 square, whose border through the pixel centres encloses 4 x 4, so ``2 * area = 32``;
    the island alone encloses nothing (0); a 3-wide, 2-high rectangle encloses 2 x 1 (4)."""
    u = np.zeros((7, 7), np.uint8)
    u[1:6, 1:6] = 9
    u[2:5, 2:5] = 0
    u[3, 3] = 9
    assert _compiled.filled_twice_area(u, 0, 1, 5, 1, 5, 1, 1) == 32
    assert _compiled.filled_twice_area(u, 0, 3, 3, 3, 3, 3, 3) == 0   # the island alone: one pixel
    v = np.zeros((4, 5), np.uint8)
    v[1:3, 1:4] = 1
    assert _compiled.filled_twice_area(v, 0, 1, 2, 1, 3, 2, 3) == 4


def test_filled_twice_area_equals_labelling(monkeypatch):
    """The two flood fills give what labelling the crop gives (curves._filled_twice_area, numpy), for
    every node with holes of noisy and ringed maps, at the lowest threshold where it is a component."""
    rng = np.random.default_rng(11)
    checked = 0
    for kind in ("noisy", "holes", "plateaus"):
        for _ in range(2):
            u = scoremap_to_uint8(_maps_of_kind(kind, rng, (int(rng.integers(15, 60)), int(rng.integers(15, 60))))[0])
            fg = _numpy_path(monkeypatch, ct.ComponentTree, u, 2, None, True)
            w = u.shape[1]
            for node in np.flatnonzero(fg.subtree_sums[:, 1] < 4)[:40]:   # Euler number < 1: holes
                level = max(int(fg.parent_level[node]), 0)
                py, px = divmod(int(fg.own_pixel[node]), w)
                got = _compiled.filled_twice_area(u, level, fg.y0[node], fg.y1[node], fg.x0[node], fg.x1[node],
                                                  py, px)
                assert got == curves._filled_twice_area(u, level, fg, node)
                checked += 1
    assert checked > 20


def test_without_numba_the_numpy_path_is_used():
    """A process where ``import numba`` fails: camkit.boxes imports, reports no kernels, and computes."""
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np\n"
            "from camkit.boxes import _compiled, iou_curves\n"
            "assert not _compiled.AVAILABLE and not _compiled.enabled()\n"
            "m = np.zeros((9, 9)); m[2:7, 3:6] = 1\n"
            "v1, v2 = iou_curves(m, [[3, 2, 5, 6]], [0.5])\n"
            "print(v1[0], v2[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # the box (3, 2, min(5 + 1, 8), min(6 + 1, 8)) = (3, 2, 6, 7), 4 x 6 pixels, holds the GT (3 x 5)
    assert [float(v) for v in out.stdout.split()] == [15 / 24] * 2
