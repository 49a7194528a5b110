"""Score maps and checks shared by the camkit.boxes tests: seeded maps of every kind, distinct taus,
and the fast-vs-reference curve check."""
import numpy as np
from scipy import ndimage as ndi

import wsol_reference as ref
from camkit.boxes import iou_curves

TAUS = np.arange(0, 1, 0.001)
MAP_A = [[0, 0, 0, 0, 0], [0, .4, .4, .4, .6], [0, .4, 1, .8, .6], [0, .4, .4, .4, .6]]
MAP_B = [[.4, 0, .2, .2, .2], [.4, .4, 0, .4, 0], [0, 0, 0, .4, 0], [1, .6, .8, .2, .2]]


def seeded_maps(seed, n):
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


def distinct_taus(m, rng, k=20):
    """Indices into TAUS: one tau per distinct integer threshold int(tau*max), k of them at random
    (plus the first and last), so every kind of mask is covered without repeating identical masks."""
    top = int(ref.to_uint8(m).max())
    _, first = np.unique(np.trunc(TAUS * top), return_index=True)
    pick = rng.choice(first, size=min(k, first.size), replace=False)
    return np.unique(np.r_[pick, 0, len(TAUS) - 1])


def assert_fast_equals_reference(maps, rng):
    """V1 and V2 curves over all 1000 thresholds at once equal the reference at each distinct threshold."""
    for m, gt in maps:
        v1, v2 = iou_curves(m, gt, TAUS)
        idx = distinct_taus(m, rng)
        r1, r2 = ref.best_iou_curves(m, gt, TAUS[idx])
        np.testing.assert_array_equal(v1[idx], r1)
        np.testing.assert_array_equal(v2[idx], r2)

