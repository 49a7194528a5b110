"""FAM's fixed-threshold localisation (camkit.fam_metrics): hand oracles, a slow flood-fill reference,
invariances and bad input."""
import numpy as np
import pytest
import torch

from camkit.fam_metrics import fixed_threshold_localization, largest_component_box


def test_largest_component_hand_oracle_absolute_threshold_and_8_connectivity():
    m = np.zeros((6, 7))
    m[0, 0] = m[1, 1] = m[2, 2] = 0.9          # a diagonal: one 8-connected component of 3 pixels
    m[4, 4:7] = 0.6                            # 3 pixels, later in raster order: the tie goes to the first
    m[5, 0] = 0.5                              # exactly 0.5 is not foreground (map > 0.5)
    assert largest_component_box(m).tolist() == [[0, 0, 2, 2]]
    m[5, 4] = 0.7                              # now 4 pixels
    assert largest_component_box(m).tolist() == [[4, 4, 6, 5]]
    assert largest_component_box(np.full((3, 3), 0.4)).tolist() == [[0, 0, 0, 0]]


def _slow_largest_box(m, t):
    """Flood fill from the definition: 8-neighbours, components in raster order of their first pixel."""
    h, w = m.shape
    seen = np.zeros((h, w), bool)
    best = None
    for y in range(h):
        for x in range(w):
            if m[y, x] > t and not seen[y, x]:
                stack, pixels = [(y, x)], []
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    pixels.append((cy, cx))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and m[ny, nx] > t:
                                seen[ny, nx] = True
                                stack.append((ny, nx))
                if best is None or len(pixels) > len(best):
                    best = pixels
    if best is None:
        return [0, 0, 0, 0]
    ys, xs = zip(*best)
    return [min(xs), min(ys), max(xs), max(ys)]


@pytest.mark.parametrize("seed", range(6))
def test_largest_component_matches_slow_flood_fill(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((9, 11))
    assert largest_component_box(m, 0.6)[0].tolist() == _slow_largest_box(m, 0.6)
    assert largest_component_box(torch.tensor(m), 0.6)[0].tolist() == _slow_largest_box(m, 0.6)


def test_localization_hand_oracle():
    m1 = np.zeros((10, 10)); m1[0:5, 0:5] = 0.9         # box (0, 0, 4, 4): IoU 1 with itself
    m2 = np.zeros((10, 10)); m2[0:5, 0:5] = 0.9         # vs gt (0, 0, 9, 4): 25 / 50 = 0.5 -> counts
    m3 = np.zeros((10, 10)); m3[0:2, 0:2] = 0.9         # (0, 0, 1, 1) vs (0, 0, 4, 4): 4 / 25 = 0.16
    gts = [np.array([[0, 0, 4, 4]]), np.array([[0, 0, 9, 4]]), np.array([[6, 6, 9, 9], [0, 0, 4, 4]])]
    out = fixed_threshold_localization([m1, m2, m3], gts)
    assert np.allclose(out["iou"], [1.0, 0.5, 0.16])
    assert out["GT-known"] == pytest.approx(200 / 3)
    assert out["mean_IoU"] == pytest.approx(100 * 1.66 / 3)


def test_localization_is_invariant_to_image_order():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 8, 8))
    gts = [np.array([[1, 1, 5, 6]])] * 5
    a = fixed_threshold_localization(maps, gts, 0.7)
    b = fixed_threshold_localization(maps[::-1], gts, 0.7)
    assert a["GT-known"] == b["GT-known"] and a["mean_IoU"] == pytest.approx(b["mean_IoU"])


@pytest.mark.parametrize("call,match", [
    (lambda: largest_component_box(np.zeros((2, 2, 2))), r"\(H, W\)"),
    (lambda: largest_component_box(np.array([[np.nan]])), "NaN"),
    (lambda: largest_component_box(np.zeros((2, 2)), threshold="0.5"), "threshold"),
    (lambda: fixed_threshold_localization([np.zeros((2, 2))], []), "one per map"),
    (lambda: fixed_threshold_localization([], []), "at least one"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
