"""KD-CI-CAM teacher masks (camkit.train.kd_masks): hand-computed oracles, a float64 reference, invariances."""
import math

import pytest
import torch

from camkit.train.kd_masks import down_branch_ccam, teacher_masks, threshold_masks


def test_threshold_masks_hand_computed():
    maps = torch.tensor([[[0., 1.], [2., 4.]],        # max 4
                         [[3., 3.], [3., 3.]],        # constant 3 > 0.3 * 3: all foreground
                         [[0., 0.], [0., 0.]]])       # all zeros (a constant CCAM): empty foreground
    fg, bg = threshold_masks(maps, 0.3)               # threshold 1.2 for the first
    assert fg.tolist() == [[[0, 0], [1, 1]], [[1, 1], [1, 1]], [[0, 0], [0, 0]]]
    assert bg.tolist() == [[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 1], [1, 1]]]
    fg0, _ = threshold_masks(maps, 0.0)               # strict: only the minimum (0) is background
    assert fg0[0].tolist() == [[0, 1], [1, 1]]
    fg_eq, _ = threshold_masks(torch.tensor([[[0., 1.], [2., 4.]]]), 0.5)   # 2 == 0.5 * 4 is not above
    assert fg_eq[0].tolist() == [[0, 0], [0, 1]]


def _cicam_output(features, logits):
    return {"enhanced": features, "down": logits}


def test_teacher_masks_hand_computed_same_size():
    # N=2 classes, C=1: M0 = F, M1 = -F. Down logits rank class 0 first. cicam-quadratic h = [0, -1]:
    # ccam = 0*M0 - M1 = F (its minimum is 0 already).
    features = torch.tensor([[[[0., 1.], [2., 3.]]]])
    weight = torch.tensor([[1.], [-1.]])
    out = _cicam_output(features, torch.tensor([[2., 1.]]))
    assert torch.equal(down_branch_ccam(out, weight), features[:, 0])
    fg, bg = teacher_masks(out, weight, 2, 0.5)       # threshold 1.5
    assert fg.shape == (1, 1, 2, 2)
    assert fg[0, 0].tolist() == [[0, 0], [1, 1]] and bg[0, 0].tolist() == [[1, 1], [0, 0]]


def test_teacher_masks_hand_computed_upsampled():
    # ccam rows [0, 0], [2, 2]; bilinear x2 (align_corners=False) of [0, 2] is [0, 0.5, 1.5, 2].
    features = torch.tensor([[[[0., 0.], [2., 2.]]]])
    weight = torch.tensor([[1.], [-1.]])
    out = _cicam_output(features, torch.tensor([[2., 1.]]))
    fg, _ = teacher_masks(out, weight, (4, 4), 0.5)   # threshold 1.0: rows 2 and 3
    assert fg[0, 0].tolist() == [[0] * 4, [0] * 4, [1] * 4, [1] * 4]
    fg, _ = teacher_masks(out, weight, (4, 4), 0.2)   # threshold 0.4: rows 1, 2, 3
    assert fg[0, 0].tolist() == [[0] * 4, [1] * 4, [1] * 4, [1] * 4]


def test_constant_ccam_gives_an_empty_foreground():
    out = _cicam_output(torch.ones(1, 1, 2, 2), torch.tensor([[2., 1.]]))   # ccam = F - min = 0
    fg, bg = teacher_masks(out, torch.tensor([[1.], [-1.]]), 4, 0.0)
    assert fg.sum() == 0 and bool((bg == 1).all())


def test_ranking_is_the_down_logits():
    # the same features with the logits reversed swap the roles: ccam = -M0 - min = -F + 3
    features = torch.tensor([[[[0., 1.], [2., 3.]]]])
    weight = torch.tensor([[1.], [-1.]])
    ccam = down_branch_ccam(_cicam_output(features, torch.tensor([[1., 2.]])), weight)
    assert ccam[0].tolist() == [[3, 2], [1, 0]]


def _bilinear_reference(image, size):
    """align_corners=False bilinear upsampling from the definition (half-pixel centres, edge clamp)."""
    h, w = len(image), len(image[0])
    oh, ow = size

    def source(i, n_in, n_out):
        x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(math.floor(x)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        return lo, hi, x - lo

    result = []
    for i in range(oh):
        y0, y1, fy = source(i, h, oh)
        row = []
        for j in range(ow):
            x0, x1, fx = source(j, w, ow)
            top = image[y0][x0] * (1 - fx) + image[y0][x1] * fx
            bottom = image[y1][x0] * (1 - fx) + image[y1][x1] * fx
            row.append(top * (1 - fy) + bottom * fy)
        result.append(row)
    return result


def _reference_masks(features, weight, logits, size, seg_thr):
    """float64, loops: class maps, cicam-quadratic over the logit ranking, min-subtract, upsample, threshold."""
    n, c = len(weight), len(weight[0])
    h, w = len(features[0]), len(features[0][0])
    order = sorted(range(n), key=lambda k: -logits[k])
    h_r = [-(r / (n - 1)) ** 2 for r in range(n)]
    ccam = [[sum(h_r[r] * sum(weight[order[r]][ch] * features[ch][y][x] for ch in range(c)) for r in range(n))
             for x in range(w)] for y in range(h)]
    low = min(min(row) for row in ccam)
    ccam = [[v - low for v in row] for row in ccam]
    up = _bilinear_reference(ccam, size)
    peak = max(max(row) for row in up)
    return [[1.0 if v > seg_thr * peak else 0.0 for v in row] for row in up]


@pytest.mark.parametrize("seed,size,seg_thr", [(0, (8, 8), 0.0), (1, (12, 8), 0.3), (2, (6, 6), 0.7)])
def test_teacher_masks_match_the_float64_reference(seed, size, seg_thr):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 3, generator=g, dtype=torch.float64)
    logits = torch.randn(2, 4, generator=g, dtype=torch.float64)
    fg, bg = teacher_masks(_cicam_output(features, logits), weight, size, seg_thr)
    for b in range(2):
        expected = _reference_masks(features[b].tolist(), weight.tolist(), logits[b].tolist(), size, seg_thr)
        assert fg[b, 0].tolist() == expected
    assert torch.equal(fg + bg, torch.ones_like(fg))


def test_invariances_and_no_gradient():
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 3, 4, 4, generator=g).requires_grad_()
    weight = torch.randn(5, 3, generator=g).requires_grad_()
    logits = torch.randn(2, 5, generator=g).requires_grad_()
    fg, bg = teacher_masks(_cicam_output(features, logits), weight, 16, 0.2)
    assert not fg.requires_grad and not bg.requires_grad and fg.dtype == torch.float32
    # a positive scale of the features scales the map: same masks; a shift of the logits keeps the ranking
    fg2, _ = teacher_masks(_cicam_output(features * 3.5, logits + 7), weight, 16, 0.2)
    assert torch.equal(fg, fg2)
    # each image is masked on its own: a batch of one gives that image's rows
    fg1, _ = teacher_masks(_cicam_output(features[1:], logits[1:]), weight, 16, 0.2)
    assert torch.equal(fg1[0], fg[1])
    # a larger threshold never grows the foreground
    fg_hi, _ = teacher_masks(_cicam_output(features, logits), weight, 16, 0.6)
    assert bool((fg_hi <= fg).all()) and fg_hi.sum() < fg.sum()


@pytest.mark.parametrize("seg_thr", [-0.1, 1.0, float("nan"), True, "0.5", None])
def test_bad_seg_thr_is_refused(seg_thr):
    with pytest.raises(ValueError, match="seg_thr must be a number in"):
        threshold_masks(torch.zeros(1, 2, 2), seg_thr)


@pytest.mark.parametrize("maps", [torch.zeros(2, 2), torch.zeros(1, 1, 2, 2), [[0.0]]])
def test_bad_maps_are_refused(maps):
    with pytest.raises(ValueError, match=r"maps \(B, H, W\)"):
        threshold_masks(maps, 0.1)


def test_output_without_the_down_branch_is_refused():
    with pytest.raises(ValueError, match="'enhanced'"):
        teacher_masks({"down": torch.zeros(1, 2)}, torch.zeros(2, 1), 4, 0.1)
