"""camkit.boxes.curves: the all-thresholds path equals the slow reference exactly (both hole paths,
V1 near-ties and the int32 / int64 tree keys)."""
import numpy as np
import pytest
import torch

import camkit.boxes._component_tree as tree_module
import camkit.boxes.curves as curves_module
import wsol_reference as ref
from box_maps import TAUS, assert_fast_equals_reference, distinct_taus, seeded_maps
from camkit.boxes import best_iou_per_threshold, boxes_from_map, iou_curves, scoremap_to_uint8


def test_fast_path_equals_reference_on_seeded_maps():
    assert_fast_equals_reference(seeded_maps(0, 200), np.random.default_rng(11))


def test_fast_path_at_224_equals_reference():
    rng = np.random.default_rng(7)
    taus = TAUS[::97]
    for k in range(3):
        low = torch.tensor(rng.random((1, 1, 7, 7)) if k < 2 else rng.random((1, 1, 28, 28)), dtype=torch.float32)
        m = torch.nn.functional.interpolate(low, size=(224, 224), mode="bilinear", align_corners=False)[0, 0].numpy()
        m = (m - m.min()) / (m.max() - m.min())
        gt = np.array([[20, 30, 150, 200], [100, 100, 223, 223]])
        v1, v2 = iou_curves(m, gt, taus)
        r1, r2 = ref.best_iou_curves(m, gt, taus)
        np.testing.assert_array_equal(v1, r1)
        np.testing.assert_array_equal(v2, r2)


@pytest.mark.parametrize("direct_levels", [0, 10 ** 6])
def test_hole_paths_min_tree_and_direct_agree_with_reference(monkeypatch, direct_levels):
    """Holes come from a min-tree or, when few thresholds have any, from direct labelling: both exact."""
    monkeypatch.setattr(curves_module, "_MAX_DIRECT_HOLE_LEVELS", direct_levels)
    rng = np.random.default_rng(13)
    for k, (m, gt) in enumerate(seeded_maps(2, 60)):
        if k % 6 not in (0, 3):  # noise and rings: the maps with holes
            continue
        _, v2 = iou_curves(m, gt, TAUS)
        idx = distinct_taus(m, rng)
        np.testing.assert_array_equal(v2[idx], ref.best_iou_curves(m, gt, TAUS[idx])[1])


@pytest.mark.parametrize("direct_levels", [0, 10 ** 6])
def test_v1_hole_budget_and_ties_agree_with_reference(monkeypatch, direct_levels):
    """V1 near-ties: bounded with the min-tree's hole budget (0) or the bbox only (10**6), exact areas by
    filling, equal maxima by first-pixel order; all equal to the reference."""
    monkeypatch.setattr(curves_module, "_MAX_DIRECT_HOLE_LEVELS", direct_levels)
    rng = np.random.default_rng(23)
    for k, (m, gt) in enumerate(seeded_maps(5, 60)):
        v1, _ = iou_curves(m, gt, TAUS)
        idx = distinct_taus(m, rng)
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
    give the same tree, and the all-thresholds curves still equal the reference. (The numpy path: the
    compiled one, with numba installed, has no keys.)"""
    monkeypatch.setenv("CAMKIT_NO_NUMBA", "1")
    rng = np.random.default_rng(29)
    images = [scoremap_to_uint8(m) for m, _ in seeded_maps(3, 40) if min(m.shape) >= 3]
    images.append(rng.integers(0, 256, (21, 26)).astype(np.uint8))
    expected = [[tree_module.max_tree(img, conn) for conn in (1, 2)] for img in images]
    monkeypatch.setattr(tree_module, "INT32_MAX_PIXELS", int32_max_pixels)
    for img, exp in zip(images, expected):
        for conn, e in zip((1, 2), exp):
            for got, want in zip(tree_module.max_tree(img, conn), e):
                np.testing.assert_array_equal(got, want)
    assert_fast_equals_reference(seeded_maps(2, 48), rng)

