"""Token layers as spatial maps (ViT, DeiT, Swin), the default layer on transformers, reshape=.

Oracle: Grad-CAM computed by hand, in float64, on the tokens reshaped by hand (drop the class /
distillation tokens, row-major grid; or permute Swin's channel-last output), from a hook of our own.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camkit
from untouched import assert_unchanged, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, PATCH, SIZE, CLASSES = 16, 4, 16, 5
GRID = SIZE // PATCH


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` with GELU."""

    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding (conv, stride 4), ``extra`` leading tokens (1: ViT, 2: DeiT), two blocks, a
    final norm and a linear head on the first token (mean of the tokens when ``extra == 0``)."""

    def __init__(self, extra=1):
        super().__init__()
        torch.manual_seed(0)
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.extra = nn.Parameter(torch.randn(1, extra, DIM)) if extra else None
        self.pos = nn.Parameter(0.1 * torch.randn(1, extra + GRID * GRID, DIM))
        self.blocks = nn.Sequential(Block(), Block())
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.extra is not None:
            x = torch.cat([self.extra.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x + self.pos))
        return self.head(x[:, 0] if self.extra is not None else x.mean(dim=1))


class TinySwin(nn.Module):
    """Channel-last stages as in torchvision's Swin: ``(B, h, w, C)`` outputs, mean over positions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch_embed = nn.Conv2d(3, 12, PATCH, PATCH)
        self.stage = nn.Sequential(nn.LayerNorm(12), nn.Linear(12, 12), nn.GELU())
        self.mix = nn.Linear(GRID * GRID, GRID * GRID)     # mixes positions, so gradients vary
        self.head = nn.Linear(12, CLASSES)

    def forward(self, x):
        x = self.stage(self.patch_embed(x).permute(0, 2, 3, 1))              # (B, h, w, C)
        b, h, w, c = x.shape
        x = self.mix(x.reshape(b, h * w, c).transpose(1, 2)).tanh()
        return self.head(x.mean(dim=2))


def _images():
    torch.manual_seed(1)
    return torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)


def _hand_gradcam(model, images, layer, to_map):
    """Grad-CAM of the top-1 class at ``layer``: our own hook, ``to_map`` on tokens and gradients."""
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda module, inputs, output: captured.setdefault("a", output))
    try:
        logits = model(images)
    finally:
        handle.remove()
    scores = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    grad, = torch.autograd.grad(scores, captured["a"])
    activation, grad = to_map(captured["a"].detach()), to_map(grad)
    cam = (grad.mean(dim=(2, 3))[:, :, None, None] * activation).sum(1).relu()
    cam = F.interpolate(cam[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.flatten(1).amin(1)[:, None, None]
    return (cam - low) / (cam.flatten(1).amax(1)[:, None, None] - low)


def _drop_tokens(extra):
    return lambda t: t[:, extra:].reshape(t.shape[0], GRID, GRID, t.shape[-1]).permute(0, 3, 1, 2)


@pytest.mark.parametrize("extra, layer", [(1, "blocks.1.norm1"), (2, "blocks.1.norm1"), (0, "blocks.1"),
                                          (1, "blocks.0.mlp.0")])
def test_gradcam_at_a_token_layer_equals_the_hand_computation(extra, layer):
    model = TinyViT(extra).double().eval()
    images = _images()
    expected = _hand_gradcam(model, images, layer, _drop_tokens(extra))
    exp = camkit.explain(model, images, methods="gradcam", layers=layer)
    torch.testing.assert_close(exp.maps[("gradcam", layer)], expected, rtol=0, atol=1e-10)
    assert float(expected.std()) > 0.05                     # the oracle is not a flat map


def test_gradcam_at_a_channel_last_layer_equals_the_hand_computation():
    model = TinySwin().double().eval()
    images = _images()
    expected = _hand_gradcam(model, images, "stage", lambda t: t.permute(0, 3, 1, 2))
    exp = camkit.explain(model, images, methods="gradcam", layers="stage")
    torch.testing.assert_close(exp.maps[("gradcam", "stage")], expected, rtol=0, atol=1e-10)


def test_a_reshape_callable_replaces_the_inferred_layout():
    """The transposed grid (a deliberately different reading) must come out transposed."""
    model = TinyViT(1).double().eval()
    images = _images()
    transposed = lambda t: _drop_tokens(1)(t).transpose(2, 3)  # noqa: E731
    expected = _hand_gradcam(model, images, "blocks.1.norm1", transposed)
    for reshape in (transposed, {"blocks.1.norm1": transposed}):
        exp = camkit.explain(model, images, methods="gradcam", layers="blocks.1.norm1", reshape=reshape)
        torch.testing.assert_close(exp.maps[("gradcam", "blocks.1.norm1")], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("reshape, error, words", [
    ("tokens", TypeError, "reshape must be"),
    ({"blocks.0": lambda t: t}, camkit.LayerError, "not explained"),
    (lambda t: t.flatten(1), ValueError, "(B, C, *grid)"),
])
def test_bad_reshape_is_refused_and_leaves_the_model_untouched(reshape, error, words):
    model = TinyViT(1).eval()
    before = snapshot(model)
    with pytest.raises(error, match=None) as info:
        camkit.explain(model, _images().float(), methods="gradcam", layers="blocks.1.norm1", reshape=reshape)
    assert words in str(info.value)
    assert_unchanged(model, before)


def test_layers_none_on_a_class_token_vit_is_the_last_blocks_first_norm():
    for extra in (1, 2):
        exp = camkit.explain(TinyViT(extra).eval(), _images().float(), methods="gradcam")
        assert exp.layers == ["blocks.1.norm1"]


def test_list_layers_shows_token_layers_with_their_grid():
    entries = dict((entry.name, entry) for entry in camkit.list_layers(TinyViT(2).eval(), _images().float()))
    assert entries["blocks.1.norm1"].shape == (1, 2 + GRID * GRID, DIM)
    assert entries["blocks.1.norm1"].layout.describe() == f"tokens 2+{GRID}x{GRID}"
    assert entries["patch_embed"].layout.describe() == f"channels-first {GRID}x{GRID}"
    assert "head" not in entries
    swin = dict((e.name, e) for e in camkit.list_layers(TinySwin().eval(), _images().float()))
    assert swin["stage"].layout.describe() == f"channels-last {GRID}x{GRID}"


def test_zero_gradients_at_the_last_block_output_give_a_note_not_silence():
    exp = camkit.explain(TinyViT(1).eval(), _images().float(), methods=("gradcam", "pcs"), layers="blocks.1")
    assert any("exactly zero" in note and "'blocks.1'" in note for note in exp.notes)
    exp = camkit.explain(TinyViT(1).eval(), _images().float(), methods="gradcam", layers="blocks.1.norm1")
    assert not any("exactly zero" in note for note in exp.notes)


def test_every_method_runs_on_tokens_and_bagcams_says_it_is_unguided():
    model = TinyViT(1).eval()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = camkit.explain(model, _images().float(), methods=None)
    assert_unchanged(model, before)
    assert set(exp.methods) >= {"gradcam", "gradcam++", "pcs", "bagcams"}
    for key, maps in exp.maps.items():
        assert maps.shape == (2, SIZE, SIZE) and torch.isfinite(maps).all(), key
    assert any("GELU" in note and "unguided" in note for note in exp.notes)


def _redraw_head(linear):
    torch.manual_seed(2)
    with torch.no_grad():       # torchvision zero-initialises the ViT head: every map would be flat
        linear.weight.normal_(0, 0.02)


@pytest.mark.slow
def test_torchvision_vit_b_16_defaults_to_the_last_ln_1_with_informative_maps():
    model = torchvision.models.vit_b_16(weights=None, image_size=32).eval()
    _redraw_head(model.heads.head)
    before = snapshot(model)
    exp = camkit.explain(model, torch.randn(1, 3, 32, 32), methods="gradcam")
    assert exp.layers == ["encoder.layers.encoder_layer_11.ln_1"]
    assert float(exp.maps[("gradcam", exp.layers[0])].std()) > 0
    assert_unchanged(model, before)


@pytest.mark.slow
def test_torchvision_swin_t_defaults_to_its_channel_first_permute():
    model = torchvision.models.swin_t(weights=None).eval()
    before = snapshot(model)
    images = torch.randn(1, 3, 64, 64)
    exp = camkit.explain(model, images, methods="gradcam")
    assert exp.layers == ["permute"]
    exp = camkit.explain(model, images, methods="gradcam", layers="features.5")   # channel-last (1, 4, 4, 384)
    assert float(exp.maps[("gradcam", "features.5")].std()) > 0
    assert_unchanged(model, before)


def test_torchvision_maxvit_defaults_to_its_last_block():
    """torchvision's MaxVit (maxvit_t's class, at a tiny configuration that fits a 32x32 input)."""
    torch.manual_seed(0)
    model = torchvision.models.maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2,
                                             block_channels=[8, 16], block_layers=[1, 1], head_dim=4,
                                             stochastic_depth_prob=0.0, num_classes=CLASSES).eval()
    before = snapshot(model)
    exp = camkit.explain(model, torch.randn(2, 3, 32, 32), methods="gradcam")
    assert exp.layers == ["blocks.1"]
    assert float(exp.maps[("gradcam", "blocks.1")].std()) > 0
    assert_unchanged(model, before)


@pytest.mark.slow
def test_torchvision_maxvit_t_defaults_to_its_last_block():
    torch.manual_seed(0)
    model = torchvision.models.maxvit_t(weights=None).eval()
    before = snapshot(model)
    exp = camkit.explain(model, torch.randn(1, 3, 224, 224), methods="gradcam")
    assert exp.layers == ["blocks.3"]
    assert float(exp.maps[("gradcam", "blocks.3")].std()) > 0
    assert_unchanged(model, before)
