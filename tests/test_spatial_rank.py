"""Maps at any spatial rank: 1-D signals (B, C, L) and 3-D volumes / videos (B, C, D, H, W).

The reference computes each method from its definition in float64 on the un-folded grid, with
reductions over all spatial axes, linear / trilinear upsampling and min-max over all positions.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camkit
from camkit import postprocess
from untouched import assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

MODES = {1: "linear", 3: "trilinear"}


class AudioCNN(nn.Module):
    """conv1d-ReLU-conv1d(stride 2)-ReLU -> global average pool -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv1d(2, 6, 5, padding=2), nn.ReLU(), nn.Conv1d(6, 8, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=-1))


def _reference(method, activation, grad, head_row, size):
    """One method from its definition: activation ``(B, C, *S)``, grad ``(B, C, *S)``, head row ``(B, C)``."""
    axes = tuple(range(2, activation.dim()))
    expand = (slice(None), slice(None)) + (None,) * len(axes)
    if method == "cam":
        raw = (head_row[expand] * activation).sum(1)
    elif method == "gradcam":
        raw = (grad.mean(dim=axes)[expand] * activation).sum(1).relu()
    elif method == "pcs":
        raw = (grad * activation).sum(1).relu()
    else:                                                       # gradcam++, eq. 19
        sums = activation.sum(dim=axes)[expand]
        denominator = 2 * grad ** 2 + sums * grad ** 3
        alpha = torch.where(denominator != 0, grad ** 2 / torch.where(denominator != 0, denominator, 1.0), 0.0)
        raw = ((alpha * grad.relu()).sum(dim=axes)[expand] * activation).sum(1).relu()
    up = F.interpolate(raw[:, None], size=size, mode=MODES[len(size)], align_corners=False)[:, 0]
    flat = up.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low)).reshape(up.shape)


def _captured_with_gradient(model, images, layer):
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        logits = model(images)
    finally:
        handle.remove()
    classes = logits.argmax(1)
    grad, = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), captured["a"])
    return captured["a"].detach(), grad, classes


def _check_against_reference(model, images, layer, head, methods=("cam", "gradcam", "gradcam++", "pcs")):
    before = snapshot(model)
    exp = camkit.explain(model, images, methods=methods, layers=layer)
    assert_unchanged(model, before)
    activation, grad, classes = _captured_with_gradient(model, images, layer)
    for method in methods:
        expected = _reference(method, activation, grad, head.weight.detach()[classes], tuple(images.shape[2:]))
        assert float(expected.std()) > 0.01, method
        torch.testing.assert_close(exp.maps[(method, layer)], expected, rtol=0, atol=1e-9, msg=method)


def test_1d_maps_equal_the_float64_reference():
    model = AudioCNN().double().eval()
    torch.manual_seed(1)
    _check_against_reference(model, torch.randn(3, 2, 40, dtype=torch.float64), "features", model.fc)


def test_1d_layer_resolution_maps_keep_the_signal_axis_and_list_layers_sees_it():
    model = AudioCNN().eval()
    images = torch.randn(2, 2, 40)
    exp = camkit.explain(model, images, methods=("gradcam", "bagcams"), layers="features", upsample=False)
    assert exp.maps[("gradcam", "features")].shape == (2, 20)
    assert camkit.explain(model, images[0], methods="gradcam").layers == ["features"]
    assert dict(camkit.list_layers(model, images))["features.2"] == (1, 8, 20)


@pytest.mark.slow
def test_3d_maps_on_r3d_18_equal_the_float64_reference():
    model = torchvision.models.video.r3d_18(weights=None, num_classes=4).double().eval()
    torch.manual_seed(1)
    images = torch.randn(1, 3, 8, 32, 32, dtype=torch.float64)
    _check_against_reference(model, images, "layer3", model.fc, ("gradcam", "gradcam++", "pcs"))  # (2, 4, 4)
    _check_against_reference(model, images, "layer4", model.fc, ("cam",))                          # (1, 2, 2)
    exp = camkit.explain(model, images, methods="gradcam")     # layers=None: the last spatial layer
    assert exp.layers == ["layer4"] and exp.maps[("gradcam", "layer4")].shape == (1, 8, 32, 32)


@pytest.mark.parametrize("maps, size, mode", [
    (torch.rand(2, 3, 7), (20,), "linear"),
    (torch.rand(2, 3, 2, 4, 5), (4, 8, 10), "trilinear"),
])
def test_upsample_and_normalize_follow_the_rank(maps, size, mode):
    rank = len(size)
    up = postprocess.upsample(maps, size)
    expected = F.interpolate(maps.reshape(-1, 1, *maps.shape[-rank:]), size=size, mode=mode,
                             align_corners=False).reshape(*maps.shape[:-rank], *size)
    torch.testing.assert_close(up, expected, rtol=0, atol=0)
    normalized = postprocess.normalize(up, rank).flatten(-rank)
    assert torch.allclose(normalized.amin(-1), torch.zeros(())) and torch.allclose(normalized.amax(-1), torch.ones(()))


@pytest.mark.parametrize("images, words", [
    (torch.randn(2, 2, 4, 40), "(B, C, L) or (C, L)"),
    (torch.randn(40), "(B, C, L) or (C, L)"),
])
def test_wrong_rank_input_names_the_expected_shape(images, words):
    model = AudioCNN().eval()
    before = snapshot(model)
    with warnings.catch_warnings(), pytest.raises(ValueError) as info:
        camkit.explain(model, images, methods="gradcam", layers="features")
    assert words in str(info.value)
    assert_unchanged(model, before)
