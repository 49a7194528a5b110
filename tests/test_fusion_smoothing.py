"""Fusion rules, layers="all-stages", aug_smooth and eigen_smooth: hand oracles, invariances, bad input."""
import math

import pytest
import torch
import torchvision
from torch import nn

import camkit
from camkit.explanation import Explanation
from camkit.fusion import fuse
from camkit.smoothing import AugSmooth
from untouched import assert_unchanged, snapshot

pytestmark = [pytest.mark.filterwarnings("ignore::camkit.heads.CAMHeadWarning"), pytest.mark.usefixtures("one_thread")]


class SmallNet(nn.Module):
    """conv(8x8) -> ReLU -> conv stride 2 (4x4) -> ReLU -> GAP -> linear."""

    def __init__(self, symmetric=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.ReLU())
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            if symmetric:   # kernels equal to their mirror image: the model commutes with a horizontal flip
                for conv in (self.stem[0], self.block[0]):
                    conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean(dim=(2, 3)))


def hand_explanation(maps):
    """An Explanation whose maps are given: ``{layer: (1, 2, 2)}`` for method 'm'."""
    return Explanation(maps={("m", layer): torch.tensor(value) for layer, value in maps.items()},
                       logits=torch.zeros(1, 2), targets=torch.zeros(1, dtype=torch.long), methods=["m"],
                       layers=list(maps), images=torch.zeros(1, 3, 2, 2))


def test_max_and_mean_of_one_layer_are_that_layers_map():
    exp = camkit.explain(SmallNet(), torch.randn(2, 3, 8, 8), methods=("gradcam", "pcs"), layers=("stem", "block"))
    for rule in ("max", "mean", "layercam"):
        fused = fuse(exp, layers=["block"], rule=rule)
        for method in ("gradcam", "pcs"):
            torch.testing.assert_close(fused.maps[(method, f"fused:{rule}")], exp.maps[(method, "block")])


def test_max_mean_and_layercam_rules_by_hand():
    shallow, middle, deep = [[[0.0, 0.5], [1.0, 0.25]]], [[[0.2, 0.0], [0.0, 0.4]]], [[[0.9, 0.1], [0.3, 0.0]]]
    exp = hand_explanation({"a": shallow, "b": middle, "c": deep})
    fused = fuse(exp, rule="layercam", normalize=False)
    # shallow maps -> tanh(2 M / max M): a's max is 1, b's is 0.4; c (the deepest) is left as it is
    a = [[math.tanh(2 * v / 1.0) for v in row] for row in shallow[0]]
    b = [[math.tanh(2 * v / 0.4) for v in row] for row in middle[0]]
    expected = [[max(a[i][j], b[i][j], deep[0][i][j]) for j in range(2)] for i in range(2)]
    torch.testing.assert_close(fused.maps[("m", "fused:layercam")], torch.tensor([expected]))
    mean = fuse(exp, rule="mean", normalize=False).maps[("m", "fused:mean")]
    torch.testing.assert_close(mean, torch.tensor([[[1.1 / 3, 0.6 / 3], [1.3 / 3, 0.65 / 3]]]))
    top = fuse(exp, layers=["a", "c"], rule="max").maps[("m", "fused:max")]   # max [[.9,.5],[1,.25]], renormalised
    torch.testing.assert_close(top, torch.tensor([[[0.65 / 0.75, 0.25 / 0.75], [1.0, 0.0]]]))
    assert exp.layers == ["a", "b", "c"] and ("m", "fused:max") not in exp.maps   # a new Explanation


def test_layercam_of_an_all_zero_shallow_map_is_zero():
    exp = hand_explanation({"a": [[[0.0, 0.0], [0.0, 0.0]]], "b": [[[0.1, 0.0], [0.0, 0.2]]]})
    fused = fuse(exp, rule="layercam", normalize=False).maps[("m", "fused:layercam")]
    torch.testing.assert_close(fused, torch.tensor([[[0.1, 0.0], [0.0, 0.2]]]))


def test_all_stages_is_the_last_layer_of_every_resolution():
    model = torchvision.models.resnet18().eval()
    exp = camkit.explain(model, torch.randn(1, 3, 64, 64), methods="gradcam", layers="all-stages")
    # resnet18 at 64x64: relu 32x32, layer1 16x16, layer2 8x8, layer3 4x4, layer4 2x2 (maxpool starts the 16x16 run)
    assert exp.layers == ["relu", "layer1", "layer2", "layer3", "layer4"]
    fused = fuse(exp, rule="layercam")
    assert fused.maps[("gradcam", "fused:layercam")].shape == (1, 64, 64)


def test_aug_smooth_with_one_scale_and_no_flip_is_the_plain_map():
    model, images = SmallNet(), torch.randn(2, 3, 8, 8)
    plain = camkit.explain(model, images, methods=("gradcam", "bagcams"), layers="block")
    smooth = camkit.explain(model, images, methods=("gradcam", "bagcams"), layers="block",
                            aug_smooth=AugSmooth(scales=(1.0,), flip=False))
    for key in plain.maps:
        torch.testing.assert_close(smooth.maps[key], plain.maps[key])
    assert torch.equal(smooth.targets, plain.targets)


def test_aug_smooth_flip_of_a_symmetric_model_is_the_plain_map():
    # 9 pixels wide: the stride-2 conv samples columns 0, 2, .., 8, a set the flip maps onto itself
    model, images = SmallNet(symmetric=True), torch.randn(2, 3, 9, 9)
    plain = camkit.explain(model, images, methods="gradcam", layers="stem")
    before = snapshot(model)
    smooth = camkit.explain(model, images, methods="gradcam", layers="stem",
                            aug_smooth=AugSmooth(scales=(1.0,), flip=True))
    assert_unchanged(model, before)
    assert not torch.allclose(plain["gradcam"], plain["gradcam"].flip(-1), atol=1e-3)   # the map is not symmetric
    torch.testing.assert_close(smooth["gradcam"], plain["gradcam"], atol=1e-5, rtol=1e-5)


def test_aug_smooth_default_keeps_the_input_frame_and_top1():
    model, images = SmallNet(), torch.randn(2, 3, 8, 8)
    smooth = camkit.explain(model, images, methods="pcs", layers="block", aug_smooth=True)
    plain = camkit.explain(model, images, methods="pcs", layers="block")
    assert smooth["pcs"].shape == (2, 8, 8) and torch.equal(smooth.targets, plain.targets)
    torch.testing.assert_close(smooth.logits, plain.logits)


class RankOne(nn.Module):
    """``conv``: 1 -> 3 channels, weight v = [1, 2, -1], so A_k(m) = v_k u(m); GAP -> linear W."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1, bias=False)
        self.fc = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0, -1.0]).view(3, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[2.0, 1.0, 1.0], [-1.0, 0.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_eigen_smooth_of_a_rank_one_activation_by_hand():
    # u = [[1, 2], [3, 6]], mean 3: centred rows (u - 3) (W_c . v)_k; the first component is +-(W_c * v)/|W_c * v|,
    # the projection (u - 3) |W_c * v| with the sign of W_c . v (agreement with the channel sum (W_c . v) u).
    # class 0: W * v = [2, 2, -1], |.| = 3, W . v = 3 > 0  -> ReLU(3 (u - 3)) = [[0, 0], [0, 9]]
    # class 1: W * v = [-1, 0, -1], |.| = sqrt 2, W . v = -2 -> ReLU(-sqrt2 (u - 3)) = sqrt2 [[2, 1], [0, 0]]
    u = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
    exp = camkit.explain(RankOne(), u.repeat(2, 1, 1, 1), methods="cam", layers="conv", target=torch.tensor([0, 1]),
                         eigen_smooth=True, upsample=False, normalize=False)
    expected = torch.stack([torch.tensor([[0.0, 0.0], [0.0, 9.0]]),
                            math.sqrt(2) * torch.tensor([[2.0, 1.0], [0.0, 0.0]])])
    torch.testing.assert_close(exp["cam"], expected, atol=1e-5, rtol=1e-5)


def test_eigen_smooth_runs_for_every_standard_method():
    model, images = SmallNet(), torch.randn(2, 3, 8, 8)
    before = snapshot(model)
    exp = camkit.explain(model, images, methods=("cam", "gradcam", "gradcam++", "pcs", "bagcams"), layers="block",
                         eigen_smooth=True, aug_smooth=True)
    assert_unchanged(model, before)
    assert all(m.shape == (2, 8, 8) and bool(torch.isfinite(m).all()) for m in exp.maps.values())


@pytest.mark.parametrize("call, error, fragment", [
    (lambda e: fuse(e, rule="median"), ValueError, "unknown fusion rule 'median'"),
    (lambda e: fuse(e, layers=["layer9"]), ValueError, "layer(s) ['layer9'] were not explained"),
    (lambda e: fuse(e, layers=[]), ValueError, "non-empty list of layer keys"),
    (lambda e: fuse(e, layers=["stem", "stem"]), ValueError, "lists a layer twice"),
    (lambda e: fuse(e, methods="pcs"), ValueError, "no map for"),
    (lambda e: fuse(e, gamma=0), ValueError, "gamma must be a number > 0"),
])
def test_bad_fusion_is_refused(call, error, fragment):
    exp = camkit.explain(SmallNet(), torch.randn(1, 3, 8, 8), methods="gradcam", layers=("stem", "block"))
    keys = sorted(exp.maps)
    with pytest.raises(error) as info:
        call(exp)
    assert fragment in str(info.value)
    assert sorted(exp.maps) == keys


def test_fusing_maps_of_different_sizes_is_refused():
    exp = camkit.explain(SmallNet(), torch.randn(1, 3, 8, 8), methods="gradcam", layers=("stem", "block"),
                         upsample=False)
    with pytest.raises(ValueError, match="upsample=True"):
        fuse(exp)


@pytest.mark.parametrize("options, call, error, fragment", [
    ({"aug_smooth": "yes"}, {}, TypeError, "aug_smooth must be True, False or"),
    ({"aug_smooth": AugSmooth}, {}, TypeError, "aug_smooth must be True, False or"),
    ({"aug_smooth": True}, {"upsample": False}, ValueError, "use upsample=True"),
    ({"eigen_smooth": "yes"}, {}, TypeError, "eigen_smooth must be True or False"),
    ({"eigen_smooth": True, "methods": ("gradcam", "causal")}, {}, ValueError, "causal is not one"),
    ({"eigen_smooth": True}, {"methods": "causal"}, ValueError, "causal is not one"),
])
def test_bad_modifiers_are_refused_and_change_nothing(options, call, error, fragment):
    model = SmallNet()
    before = snapshot(model)
    with pytest.raises(error) as info:
        explainer = camkit.Explainer(model, **{"methods": "gradcam", "layers": "block", **options})
        explainer(torch.randn(1, 3, 8, 8), **call)
    assert fragment in str(info.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("scales, flip, fragment", [
    ((), True, "non-empty list of numbers > 0"), ((0.0,), True, "non-empty list of numbers > 0"),
    ((1.0, -1.5), True, "non-empty list of numbers > 0"), ("1.0", True, "non-empty list of numbers > 0"),
    ((1.0,), "yes", "flip must be True or False"),
])
def test_bad_aug_smooth_options(scales, flip, fragment):
    with pytest.raises(ValueError) as info:
        AugSmooth(scales=scales, flip=flip)
    assert fragment in str(info.value)
