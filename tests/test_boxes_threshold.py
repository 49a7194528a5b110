"""camkit.boxes.threshold: wsolevaluation's expected boxes, hand oracles, the rules, the slow reference
and real cv2.findContours."""
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

import wsol_reference as ref
from box_maps import MAP_A, MAP_B, TAUS, seeded_maps
from camkit.boxes import (BOX_RULES, best_iou_per_threshold, boxes_cicam, boxes_cicam_kept_mean, boxes_fixed_threshold,
                          boxes_from_map, boxes_percentile_threshold, get_box_rule, iou_curves, scoremap_to_uint8)


@pytest.mark.parametrize("score_map, expected", [
    (MAP_A, [[1, 1, 4, 3], [1, 1, 4, 3], [2, 1, 4, 3], [2, 2, 4, 3], [2, 2, 3, 3]]),
    (MAP_B, [[0, 0, 4, 3], [0, 0, 2, 2], [0, 3, 3, 3], [2, 3, 3, 3], [0, 3, 1, 3]]),
])
def test_v1_boxes_expected(score_map, expected):
    m = np.asarray(score_map, dtype=np.float64)
    got = [boxes_from_map(m, t, multi_contour=False)[0].tolist() for t in (0, .2, .4, .6, .8)]
    assert got == expected
    # the fast all-thresholds path gives IoU 1 against each expected box
    for t, box in zip((0, .2, .4, .6, .8), expected):
        assert best_iou_per_threshold(m, [box], [t], multi_contour=False)[0] == 1.0


def test_all_zero_map():
    m = np.zeros((5, 7))
    for t in (0, .3, .999):
        assert boxes_from_map(m, t).tolist() == [[0, 0, 0, 0]]
        assert boxes_from_map(m, t, multi_contour=True).tolist() == [[0, 0, 0, 0]]
    assert (iou_curves(m, [[0, 0, 0, 0]], TAUS)[0] == 1).all()


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


def test_torch_input():
    m = torch.tensor(MAP_A, dtype=torch.float64)
    assert boxes_from_map(m, 0.4).tolist() == [[2, 1, 4, 3]]


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


def test_cicam_kept_mean_rule():
    m = np.zeros((8, 8))
    m[1, 1:3] = 0.9           # small strong blob: bbox area 2
    m[4:7, 4:7] = 0.6         # larger blob with a peak
    m[5, 5] = 1.0
    # kept: u > 0.2*255 -> all non-zero; then u > the mean of the kept u only; largest 4-conn bbox, tight
    u = scoremap_to_uint8(m).astype(float)
    kept = u > 0.2 * u.max()
    keep = kept & (u > u[kept].mean())
    lab, _ = ndi.label(keep)
    expected = max(ndi.find_objects(lab), key=lambda s: (s[0].stop - s[0].start) * (s[1].stop - s[1].start))
    got = boxes_cicam_kept_mean(m)[0].tolist()
    assert got == [expected[1].start, expected[0].start, expected[1].stop - 1, expected[0].stop - 1]
    assert boxes_cicam_kept_mean(np.zeros((4, 4))).tolist() == [[0, 0, 0, 0]]


def test_box_rules_registry():
    assert BOX_RULES == {"fixed": boxes_fixed_threshold, "pas": boxes_percentile_threshold,
                         "percentile": boxes_percentile_threshold, "cicam": boxes_cicam,
                         "cicam-kept-mean": boxes_cicam_kept_mean}
    assert get_box_rule("percentile") is boxes_percentile_threshold
    with pytest.raises(ValueError, match="unknown box rule 'otsu'; known rules: cicam, cicam-kept-mean, fixed, pas, "
                                         "percentile"):
        get_box_rule("otsu")


def test_single_threshold_boxes_equal_reference():
    rng = np.random.default_rng(5)
    for m, _ in seeded_maps(1, 60):
        u = ref.to_uint8(m)
        for t in rng.random(4):
            for mc in (False, True):
                np.testing.assert_array_equal(boxes_from_map(m, t, mc), ref.boxes_at_threshold(u, t, mc))



def test_reference_matches_opencv_if_available():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    for _ in range(100):
        mask = rng.random(tuple(int(v) for v in rng.integers(2, 20, 2))) < rng.uniform(0.2, 0.8)
        cs = cv2.findContours((mask * 255).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        rc = ref.contours(mask)
        assert [cv2.boundingRect(c) for c in cs] == [tuple(int(v) for v in c["rect"]) for c in rc]
        assert [cv2.contourArea(c) for c in cs] == [c["area"] for c in rc]


