"""Hand-computed oracles for every method on two tiny fixed-weight models.

Every expected value below was worked out by hand from DESIGN.md's definitions; the arithmetic is in
the comments. The models take ``(1, 3, 4, 4)`` inputs and produce 2x2 maps, so the normalised
(upsampled to 4x4) maps exercise the bilinear ``align_corners=False`` rule as well.

Model A (``TinyGapNet``), the usual CAM shape: conv -> ReLU -> GAP -> linear.
    conv: 1x1, stride 2, 3 -> 2 channels, weight rows ``[1, 0, 0]`` and ``[-1, 0, 0]``, bias
    ``[0, 1]``; so it reads input channel 0 at pixels (0,0), (0,2), (2,0), (2,2):
        x0 at those pixels = [[2, -1], [0.5, 1.5]]
        A1 = conv ch 1 = [[ 2, -1], [0.5,  1.5]]
        A2 = conv ch 2 = 1 - x0 = [[-1,  2], [0.5, -0.5]]
    relu: R1 = [[2, 0], [0.5, 1.5]], R2 = [[0, 2], [0.5, 0]]
    GAP: p1 = (2 + 0 + 0.5 + 1.5)/4 = 1, p2 = (0 + 2 + 0.5 + 0)/4 = 0.625
    fc: W = [[2, -1], [-1, 3]], b = [0.5, 0.5]
        S0 = 2*1 - 0.625 + 0.5 = 1.875 = 15/8,  S1 = -1 + 3*0.625 + 0.5 = 1.375 = 11/8
Model B (``TinyMixNet``): model A's conv and ReLU, then a 1x1 "mix" conv and a second ReLU before
GAP -> linear, so that gradients at ``relu1`` vary over positions and guided backprop matters.
"""
from fractions import Fraction

import pytest
import torch
from torch import nn

import camkit
import reference_methods as ref

METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")


def _input():
    """``(1, 3, 4, 4)``: channel 0 holds x0 at the stride-2 pixels; every other value is ignored by
    the conv (stride 2 skips odd pixels, channels 1 and 2 have zero weight), set to 9 to prove it."""
    x = torch.full((1, 3, 4, 4), 9.0)
    x[0, 0, 0, 0], x[0, 0, 0, 2], x[0, 0, 2, 0], x[0, 0, 2, 2] = 2.0, -1.0, 0.5, 1.5
    return x


def _set(module, weight, bias):
    with torch.no_grad():
        module.weight.copy_(torch.tensor(weight, dtype=torch.float32).reshape(module.weight.shape))
        module.bias.copy_(torch.tensor(bias, dtype=torch.float32))


class TinyGapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=1, stride=2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        _set(self.conv, [[1, 0, 0], [-1, 0, 0]], [0, 1])
        _set(self.fc, [[2, -1], [-1, 3]], [0.5, 0.5])

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


class TinyMixNet(nn.Module):
    """conv, relu1 as in TinyGapNet; mix: 1x1 conv V = [[1, -1], [1, 1]], d = [0.25, -1.25];
    relu2; GAP; fc U = [[3, -1], [-1, 4]], no bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=1, stride=2)
        self.relu1 = nn.ReLU()
        self.mix = nn.Conv2d(2, 2, kernel_size=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        _set(self.conv, [[1, 0, 0], [-1, 0, 0]], [0, 1])
        _set(self.mix, [[1, -1], [1, 1]], [0.25, -1.25])
        _set(self.fc, [[3, -1], [-1, 4]], [0, 0])

    def forward(self, x):
        y = self.relu2(self.mix(self.relu1(self.conv(x))))
        return self.fc(torch.flatten(self.pool(y), 1))


def F(n, d=1):
    return float(Fraction(n, d))


# --------------------------------------------------------------------------------------------------
# Model A expected raw maps, layer "relu" (A = R >= 0). There dS_c/dR_k(m) = W[c,k]/4 everywhere.
# --------------------------------------------------------------------------------------------------
GAP_RELU = {
    0: {  # W0 = [2, -1], S0 = 15/8, g = [1/2, -1/4] uniform
        # CAM = 2 R1 - R2 = [[4 - 0, 0 - 2], [1 - 0.5, 3 - 0]]; no ReLU.
        "cam": [[4.0, -2.0], [0.5, 3.0]],
        # Grad-CAM = ReLU(1/2 R1 - 1/4 R2) = ReLU([[1, -0.5], [0.25 - 0.125, 0.75]])
        "gradcam": [[1.0, 0.0], [0.125, 0.75]],
        # Grad-CAM++: ch1 sum R1 = 4, alpha = 1/(2 + 4 * 1/2) = 1/4 at all 4 positions,
        # w1 = 4 * 1/4 * 1/2 = 1/2; ch2 g < 0 so ReLU(g) = 0, w2 = 0.  map = 1/2 R1.
        "gradcam++": [[1.0, 0.0], [0.25, 0.75]],
        # PCS = ReLU(sum_k g_k R_k) = same as Grad-CAM here (g uniform).
        "pcs": [[1.0, 0.0], [0.125, 0.75]],
        # BagCAMs: g_hat = W0 / (4 S0) = [2, -1] / 7.5 = [4/15, -2/15] (no ReLU module after the layer)
        # t1 = 1 + 4/15 * mean(R1) = 1 + 4/15 * 1 = 19/15;  t2 = 1 - 2/15 * 0.625 = 11/12
        # term1 = 19/15 * 4/15 * R1 = 76/225 R1;  term2 = ReLU(11/12 * -2/15 * R2) = 0 (R2 >= 0)
        "bagcams": [[F(152, 225), 0.0], [F(38, 225), F(114, 225)]],
    },
    1: {  # W1 = [-1, 3], S1 = 11/8, g = [-1/4, 3/4] uniform
        # CAM = -R1 + 3 R2 = [[-2 + 0, 0 + 6], [-0.5 + 1.5, -1.5 + 0]]
        "cam": [[-2.0, 6.0], [1.0, -1.5]],
        # Grad-CAM = ReLU(CAM / 4)
        "gradcam": [[0.0, 1.5], [0.25, 0.0]],
        # Grad-CAM++: ch2 sum R2 = 2.5, alpha = 1/(2 + 2.5 * 3/4) = 1/3.875 = 8/31,
        # w2 = 4 * 8/31 * 3/4 = 24/31; w1 = 0.  map = 24/31 R2
        "gradcam++": [[0.0, F(48, 31)], [F(12, 31), 0.0]],
        "pcs": [[0.0, 1.5], [0.25, 0.0]],
        # BagCAMs: g_hat = [-1, 3] / (4 * 11/8) = [-2/11, 6/11]
        # t2 = 1 + 6/11 * 0.625 = 59/44; term2 = 59/44 * 6/11 R2 = 177/242 R2; term1 = 0
        "bagcams": [[0.0, F(177, 121)], [F(177, 484), 0.0]],
    },
}

# Model A, layer "conv" (pre-ReLU A1, A2 as above). dS_c/dA_k(m) = W[c,k]/4 * 1[A_k(m) > 0];
# masks: A1 > 0 at [[1, 0], [1, 1]], A2 > 0 at [[0, 1], [1, 0]].  sum A1 = 3, sum A2 = 1.
GAP_CONV = {
    0: {
        # CAM = 2 A1 - A2 = [[4 + 1, -2 - 2], [1 - 0.5, 3 + 0.5]]
        "cam": [[5.0, -4.0], [0.5, 3.5]],
        # g1 = 1/2 * mask1, mean 3/8; g2 = -1/4 * mask2, mean -1/8
        # 3/8 A1 - 1/8 A2 = [[0.75 + 0.125, -0.375 - 0.25], [0.1875 - 0.0625, 0.5625 + 0.0625]]
        "gradcam": [[0.875, 0.0], [0.125, 0.625]],
        # alpha1 = 1/(2 + 3 * 1/2) = 2/7 where g1 != 0; w1 = 3 * 2/7 * 1/2 = 3/7; w2 = 0 (g2 <= 0)
        # map = 3/7 * ReLU-free A1, then ReLU: 3/7 [[2, -1], [0.5, 1.5]] -> [[6/7, 0], [3/14, 9/14]]
        "gradcam++": [[F(6, 7), 0.0], [F(3, 14), F(9, 14)]],
        # g1 A1 + g2 A2 = [[1 + 0, 0 - 0.5], [0.25 - 0.125, 0.75 + 0]]
        "pcs": [[1.0, 0.0], [0.125, 0.75]],
        # guided: gradient at the ReLU output [4/15, -2/15] clamps to [4/15, 0], then the ReLU mask:
        # g_hat1 = 4/15 mask1, g_hat2 = 0.  t1 = 1 + 4/15 * (2 + 0.5 + 1.5)/4 = 19/15
        # map = 19/15 * 4/15 * mask1 * A1 = 76/225 [[2, 0], [0.5, 1.5]]
        "bagcams": [[F(152, 225), 0.0], [F(38, 225), F(114, 225)]],
    },
    1: {
        # CAM = -A1 + 3 A2 = [[-2 - 3, 1 + 6], [-0.5 + 1.5, -1.5 - 1.5]]
        "cam": [[-5.0, 7.0], [1.0, -3.0]],
        # g1 = -1/4 mask1 (mean -3/16), g2 = 3/4 mask2 (mean 3/8)
        # -3/16 A1 + 3/8 A2 = [[-0.375 - 0.375, 0.1875 + 0.75], [-0.09375 + 0.1875, -0.28125 - 0.1875]]
        "gradcam": [[0.0, 0.9375], [0.09375, 0.0]],
        # alpha2 = 1/(2 + 1 * 3/4) = 4/11 where g2 != 0; w2 = 2 * 4/11 * 3/4 = 6/11; w1 = 0
        # map = ReLU(6/11 A2) = [[0, 12/11], [3/11, 0]]
        "gradcam++": [[0.0, F(12, 11)], [F(3, 11), 0.0]],
        # g1 A1 + g2 A2 = [[-0.5 + 0, 0 + 1.5], [-0.125 + 0.375, -0.375 + 0]]
        "pcs": [[0.0, 1.5], [0.25, 0.0]],
        # guided: [-2/11, 6/11] -> [0, 6/11]; g_hat2 = 6/11 mask2; t2 = 1 + 6/11 * 2.5/4 = 59/44
        "bagcams": [[0.0, F(177, 121)], [F(177, 484), 0.0]],
    },
}

# Model B, layer "relu1" (A = R). mix: Z1 = R1 - R2 + 1/4 = [[9/4, -7/4], [1/4, 7/4]],
# Z2 = R1 + R2 - 5/4 = [[3/4, 3/4], [-1/4, 1/4]]; masks mZ1 = [[1, 0], [1, 1]], mZ2 = [[1, 1], [0, 1]].
# GAP of ReLU(Z): p1 = (9/4 + 1/4 + 7/4)/4 = 17/16, p2 = (3/4 + 3/4 + 1/4)/4 = 7/16.
# S0 = 3 * 17/16 - 7/16 = 11/4; S1 = -17/16 + 4 * 7/16 = 11/16.
# dS_c/dR_k(m) = sum_j U[c,j]/4 * mZ_j(m) * V[j,k]; V[:, 1] = [1, 1], V[:, 2] = [-1, 1].
MIX_RELU1 = {
    0: {  # U0/4 = [3/4, -1/4]: g1 = 3/4 mZ1 - 1/4 mZ2 = [[1/2, -1/4], [3/4, 1/2]]
          #                     g2 = -3/4 mZ1 - 1/4 mZ2 = [[-1, -1/4], [-3/4, -1]]
        # mean g1 = 3/8, mean g2 = -3/4: 3/8 R1 - 3/4 R2 = [[0.75, -1.5], [0.1875 - 0.375, 0.5625]]
        "gradcam": [[0.75, 0.0], [0.0, 0.5625]],
        # ch1 (sum R1 = 4): alpha = 1/(2 + 4g): g = 1/2 -> 1/4, g = 3/4 -> 1/5 (g = -1/4: ReLU(g) = 0)
        # w1 = 1/4 * 1/2 + 1/5 * 3/4 + 1/4 * 1/2 = 0.4; ch2: all g < 0, w2 = 0.  map = 0.4 R1
        "gradcam++": [[0.8, 0.0], [0.2, 0.6]],
        # g1 R1 + g2 R2 = [[1 + 0, 0 - 0.5], [0.375 - 0.375, 0.75 + 0]]
        "pcs": [[1.0, 0.0], [0.0, 0.75]],
        # guided, seed 1/S0 = 4/11: at relu2's output [3/11, -1/11] -> clamp -> [3/11, 0]
        # g_hat1 = 3/11 mZ1, g_hat2 = -3/11 mZ1.  t1 = 1 + 3/11 * (2 + 0.5 + 1.5)/4 = 14/11,
        # t2 = 1 - 3/11 * 0.5/4 = 85/88.  term1 = 14/11 * 3/11 * mZ1 R1 = 42/121 [[2, 0], [0.5, 1.5]]
        # term2 = ReLU(85/88 * -3/11 * mZ1 R2) = 0.
        # (Unguided it would be g1/S0 = [[2/11, -1/11], [3/11, 2/11]]: a different t1 and map.)
        "bagcams": [[F(84, 121), 0.0], [F(21, 121), F(63, 121)]],
    },
    1: {  # U1/4 = [-1/4, 1]: g1 = -1/4 mZ1 + mZ2 = [[3/4, 1], [-1/4, 3/4]]
          #                   g2 = 1/4 mZ1 + mZ2 = [[5/4, 1], [1/4, 5/4]]
        # mean g1 = 9/16, mean g2 = 15/16: 9/16 R1 + 15/16 R2 =
        #   [[18/16, 30/16], [4.5/16 + 7.5/16, 13.5/16]] = [[9/8, 15/8], [3/4, 27/32]]
        "gradcam": [[1.125, 1.875], [0.75, 0.84375]],
        # ch1 (sum R1 = 4): g = 3/4 -> alpha 1/5, g = 1 -> 1/6; w1 = 2 * 1/5 * 3/4 + 1/6 = 7/15
        # ch2 (sum R2 = 5/2): g = 5/4 -> 1/(2 + 25/8) = 8/41, g = 1 -> 2/9, g = 1/4 -> 8/21
        # w2 = 2 * 8/41 * 5/4 + 2/9 + 8/21 * 1/4 = 20/41 + 20/63 = 2080/2583
        # map = 7/15 R1 + 2080/2583 R2 = [[14/15, 4160/2583], [7/30 + 1040/2583, 7/10]]
        "gradcam++": [[F(14, 15), F(4160, 2583)], [F(7, 30) + F(1040, 2583), 0.7]],
        # g1 R1 + g2 R2 = [[1.5 + 0, 0 + 2], [-0.125 + 0.125, 1.125 + 0]]
        "pcs": [[1.5, 2.0], [0.0, 1.125]],
        # guided, seed 1/S1 = 16/11: at relu2's output [-4/11, 16/11] -> [0, 16/11]
        # g_hat1 = g_hat2 = 16/11 mZ2.  t1 = 1 + 16/11 * (2 + 0 + 1.5)/4 = 25/11,
        # t2 = 1 + 16/11 * (0 + 2 + 0)/4 = 19/11.
        # term1 = 25/11 * 16/11 mZ2 R1 = 400/121 [[2, 0], [0, 1.5]]; term2 = 304/121 [[0, 2], [0, 0]]
        "bagcams": [[F(800, 121), F(608, 121)], [0.0, F(600, 121)]],
    },
}

CASES = [(TinyGapNet, "relu", GAP_RELU), (TinyGapNet, "conv", GAP_CONV), (TinyMixNet, "relu1", MIX_RELU1)]
CASE_IDS = ["gap-relu", "gap-conv", "mix-relu1"]

# Bilinear, align_corners=False, 2 -> 4: output i samples source (i + 0.5)/2 - 0.5 =
# -0.25 (clamped to 0), 0.25, 0.75, 1.25 (the last clamps to pixel 1), so the 1-D weights are
UP_2_TO_4 = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]], dtype=torch.float64)


def _upsampled_and_normalised(raw):
    """Hand rule for a 2x2 map: upsample with UP_2_TO_4 along both axes, then min-max. The 4x4
    corners are the 2x2 values and the rest are convex combinations, so min/max are the raw ones."""
    raw = torch.tensor(raw, dtype=torch.float64)
    up = UP_2_TO_4 @ raw @ UP_2_TO_4.T
    low, high = raw.min(), raw.max()
    return torch.zeros_like(up) if high == low else (up - low) / (high - low)


def _maps(model, layer, method, target, **kwargs):
    exp = camkit.explain(model, _input(), methods=method, layers=layer, target=target, **kwargs)
    return exp.maps[(method, layer)]


def _methods_for(expected):
    return [m for m in METHODS if m in expected[0]]


def test_model_a_logits_by_hand():
    # S0 = 15/8, S1 = 11/8; top-1 is class 0.
    exp = camkit.explain(TinyGapNet(), _input(), methods="gradcam", layers="relu")
    torch.testing.assert_close(exp.logits, torch.tensor([[1.875, 1.375]]), rtol=0, atol=1e-6)
    assert exp.targets.tolist() == [0]


def test_model_b_logits_by_hand():
    # S0 = 11/4, S1 = 11/16
    exp = camkit.explain(TinyMixNet(), _input(), methods="gradcam", layers="relu1")
    torch.testing.assert_close(exp.logits, torch.tensor([[2.75, 0.6875]]), rtol=0, atol=1e-6)
    assert exp.targets.tolist() == [0]


# CAM at model A's "conv" is deliberately not the layer feeding the head; the engine warns about it.
pytestmark = pytest.mark.filterwarnings("ignore::camkit.CAMHeadWarning")


@pytest.mark.parametrize("model_cls,layer,expected", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("target", [0, 1])
def test_raw_maps_match_hand_computation(model_cls, layer, expected, target):
    model = model_cls()
    for method in _methods_for(expected):
        got = _maps(model, layer, method, target, upsample=False, normalize=False)
        want = torch.tensor([expected[target][method]], dtype=torch.float32)
        assert got.shape == (1, 2, 2), (method, got.shape)
        torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{method} at {layer}, class {target}: {m}")


@pytest.mark.parametrize("model_cls,layer,expected", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("target", [0, 1])
def test_normalised_maps_match_hand_computation(model_cls, layer, expected, target):
    model = model_cls()
    for method in _methods_for(expected):
        got = _maps(model, layer, method, target)
        want = _upsampled_and_normalised(expected[target][method]).unsqueeze(0).float()
        assert got.shape == (1, 4, 4), (method, got.shape)
        torch.testing.assert_close(got.float(), want, rtol=0, atol=1e-5,
                                   msg=lambda m: f"{method} at {layer}, class {target}: {m}")


def test_one_normalised_map_written_out():
    # Grad-CAM, model A, layer relu, class 0: raw [[1, 0], [0.125, 0.75]] (min 0, max 1).
    # Columns: row 0 -> [1, 0.75, 0.25, 0]; row 1 -> [0.125, 0.28125, 0.59375, 0.75].
    # Rows: out1 = 0.75 row0 + 0.25 row1, out2 = 0.25 row0 + 0.75 row1.
    want = torch.tensor([[[1.0, 0.75, 0.25, 0.0],
                          [0.78125, 0.6328125, 0.3359375, 0.1875],
                          [0.34375, 0.3984375, 0.5078125, 0.5625],
                          [0.125, 0.28125, 0.59375, 0.75]]])
    got = _maps(TinyGapNet(), "relu", "gradcam", 0)
    torch.testing.assert_close(got.float(), want, rtol=0, atol=1e-5)


def test_upsampled_raw_maps_keep_their_scale():
    # upsample=True, normalize=False: CAM class 1 at "relu", raw [[-2, 6], [1, -1.5]], so the 4x4
    # corners are -2, 6, 1, -1.5 and (1, 1) = 0.75*(0.75*-2 + 0.25*6) + 0.25*(0.75*1 + 0.25*-1.5)
    #                                       = 0.75*0 + 0.25*0.375 = 0.09375.
    got = _maps(TinyGapNet(), "relu", "cam", 1, normalize=False)
    assert got.shape == (1, 4, 4)
    corners = got[0, [0, 0, 3, 3], [0, 3, 0, 3]]
    torch.testing.assert_close(corners.float(), torch.tensor([-2.0, 6.0, 1.0, -1.5]), rtol=0, atol=1e-5)
    torch.testing.assert_close(got[0, 1, 1].float(), torch.tensor(0.09375), rtol=0, atol=1e-6)


def test_cam_with_negative_weights_clamped():
    # NWC: W0 = [2, -1] -> [2, 0]: CAM = 2 R1 = [[4, 0], [1, 3]];  W1 = [-1, 3] -> [0, 3]: 3 R2.
    model = TinyGapNet()
    opts = {"method_options": {"cam": {"clamp_negative_weights": True}}}
    got0 = _maps(model, "relu", "cam", 0, upsample=False, normalize=False, **opts)
    got1 = _maps(model, "relu", "cam", 1, upsample=False, normalize=False, **opts)
    torch.testing.assert_close(got0.float(), torch.tensor([[[4.0, 0.0], [1.0, 3.0]]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(got1.float(), torch.tensor([[[0.0, 6.0], [1.5, 0.0]]]), rtol=0, atol=1e-6)


def test_constant_map_normalises_to_zeros():
    # Model A, layer relu, class 0, Grad-CAM++ with the fc row for class 0 zeroed: S0 = 0.5 (bias),
    # g = 0 everywhere, so alpha = 0, w = 0, and the raw map is all zeros -> normalised zeros (no NaN).
    model = TinyGapNet()
    with torch.no_grad():
        model.fc.weight[0] = 0.0
    for method in ("gradcam", "gradcam++", "pcs", "cam"):
        got = _maps(model, "relu", method, 0)
        assert torch.isfinite(got).all(), method
        assert torch.equal(got, torch.zeros_like(got)), method


@pytest.mark.parametrize("model_cls,layer,expected", CASES, ids=CASE_IDS)
def test_reference_implementation_matches_the_hand_oracle(model_cls, layer, expected):
    """Self-check of tests/reference_methods.py against the same hand-computed values."""
    model = model_cls()
    methods = _methods_for(expected)
    head = model.fc.weight if "cam" in methods else None
    raw = ref.reference_raw_maps(model, _input(), layer, [[0, 1]], methods, head_weight=head)
    for method in methods:
        for c in (0, 1):
            want = torch.tensor(expected[c][method], dtype=torch.float64)
            torch.testing.assert_close(raw[method][0, c], want, rtol=1e-12, atol=1e-12,
                                       msg=lambda m: f"reference {method}, class {c}: {m}")
        norm = ref.postprocess_batch(raw[method], (4, 4))
        for c in (0, 1):
            torch.testing.assert_close(norm[0, c], _upsampled_and_normalised(expected[c][method]),
                                       rtol=0, atol=1e-12)


def test_edge_cases_negative_alpha_and_negative_logit():
    """Model A with x0 at pixel (0, 2) set to -9 instead of -1, layer "conv", class 0:
        A1 = [[2, -9], [0.5, 1.5]] (sum -5), A2 = 1 - x0 = [[-1, 10], [0.5, -0.5]]
        R1 = [[2, 0], [0.5, 1.5]], R2 = [[0, 10], [0.5, 0]]; p = [1, 10.5/4 = 2.625]
        S0 = 2 * 1 - 2.625 + 0.5 = -0.125 < 0;  S1 = -1 + 3 * 2.625 + 0.5 = 7.375
    Grad-CAM++: g1 = 1/2 on mask1 = [[1, 0], [1, 1]], so 2 + sum(A1) g = 2 - 5/2 = -1/2 and
        alpha = 1 / (-1/2) = -2 (eq. 19 taken literally: no clamping of alpha);
        w1 = 3 * (-2) * 1/2 = -3; w2 = 0 (g2 = -1/4 < 0).  map = ReLU(-3 A1) = [[0, 27], [0, 0]].
    BagCAMs: log(S0) seeds the backward with 1/S0 = -8, so at the ReLU output the gradient is
        [2, -1] * (-8) / 4 = [-4, 2] -> guided clamp -> [0, 2]: the sign flip keeps channel 2.
        g_hat2 = 2 * mask2 (mask2 = [[0, 1], [1, 0]]); t2 = 1 + 2 * (10 + 0.5) / 4 = 6.25
        map = 6.25 * 2 * mask2 * A2 = 12.5 * [[0, 10], [0.5, 0]] = [[0, 125], [6.25, 0]].
    """
    x = _input()
    x[0, 0, 0, 2] = -9.0
    with pytest.warns(RuntimeWarning, match="logit"):  # the engine flags S_c <= 0 for BagCAMs
        exp = camkit.explain(TinyGapNet(), x, methods=("gradcam++", "bagcams"), layers="conv", target=0,
                             normalize=False, upsample=False)
    torch.testing.assert_close(exp.logits, torch.tensor([[-0.125, 7.375]]), rtol=0, atol=1e-6)
    assert exp.negative_target_logit.tolist() == [True]
    torch.testing.assert_close(exp.maps[("gradcam++", "conv")], torch.tensor([[[0.0, 27.0], [0.0, 0.0]]]),
                               rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(exp.maps[("bagcams", "conv")], torch.tensor([[[0.0, 125.0], [6.25, 0.0]]]),
                               rtol=1e-6, atol=1e-4)
    raw = ref.reference_raw_maps(TinyGapNet(), x, "conv", [[0]], ("gradcam++", "bagcams"))
    torch.testing.assert_close(raw["gradcam++"][0, 0], torch.tensor([[0.0, 27.0], [0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(raw["bagcams"][0, 0], torch.tensor([[0.0, 125.0], [6.25, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("size", [(6, 10), (5, 7)])
def test_postprocessing_of_engine_maps_matches_reference_rule(size):
    """Non-square and odd input sizes (layer maps 3x5 / 3x4): the engine's upsampled and/or
    normalised maps equal the reference rule (bilinear, align_corners=False, then min-max) applied
    to its own raw maps (which the tests above check separately)."""
    model = TinyGapNet()
    torch.manual_seed(0)
    x = torch.randn(1, 3, *size)
    for method in METHODS:
        def run(**kw):
            return camkit.explain(model, x, methods=method, layers="relu", target=1, **kw).maps[(method, "relu")][0]
        raw = run(normalize=False, upsample=False).double()
        for upsample, normalize in [(True, True), (True, False), (False, True)]:
            want = ref.postprocess(raw, size, upsample=upsample, normalize=normalize)
            got = run(upsample=upsample, normalize=normalize).double()
            assert got.shape == want.shape, (method, upsample, normalize)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * max(1.0, float(raw.abs().max())),
                                       msg=lambda m: f"{method} upsample={upsample} normalize={normalize}: {m}")


def test_head_given_explicitly_equals_detected_head():
    model = TinyGapNet()
    auto = _maps(model, "relu", "cam", 1, upsample=False, normalize=False)
    for head in (model.fc, model.fc.weight.detach().clone()):
        given = _maps(model, "relu", "cam", 1, upsample=False, normalize=False, head=head)
        torch.testing.assert_close(given, auto, rtol=0, atol=0)
    # A different head really is used: rows swapped -> class 1 reads W0 = [2, -1] -> [[4, -2], [0.5, 3]].
    swapped = model.fc.weight.detach()[[1, 0]]
    got = _maps(model, "relu", "cam", 1, upsample=False, normalize=False, head=swapped)
    torch.testing.assert_close(got.float(), torch.tensor([[[4.0, -2.0], [0.5, 3.0]]]), rtol=0, atol=1e-6)
