"""CAM-ready backbones: feature-map sizes at 224, the GAP + linear head, pretrained loading, no downloads."""
import pytest
import torch
from torch import nn

from camkit.models import build_backbone, cam_layer, list_backbones, load_pretrained

# (backbone, options, CAM-layer channels, CAM-layer side at 224)
EXPECTED = [
    ("vgg16", {}, 1024, 14),
    ("resnet50", {}, 2048, 28),
    ("resnet50", {"large_feature_map": False}, 2048, 14),
    ("inception_v3", {}, 1024, 28),
    ("mobilenet_v2", {}, 1280, 7),
    ("tiny", {}, 64, 56),
]


def _capture_shape(model, layer_name, x):
    shapes = {}
    layer = dict(model.named_modules())[layer_name]
    handle = layer.register_forward_hook(lambda m, i, o: shapes.__setitem__("out", tuple(o.shape)))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, shapes["out"]


@pytest.mark.parametrize("name,options,channels,side", EXPECTED)
def test_feature_map_sizes_at_224(name, options, channels, side):
    """Shapes through the real forward code on the meta device (no FLOPs, no init cost)."""
    with torch.device("meta"):
        model = build_backbone(name, num_classes=7, **options)
        logits, shape = _capture_shape(model, cam_layer(model), torch.empty(2, 3, 224, 224))
    assert tuple(logits.shape) == (2, 7)
    assert shape == (2, channels, side, side)
    # GAP + ONE linear head whose in_features equals the CAM layer's channels (CAM head auto-detection)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == channels and linears[0].out_features == 7
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)
    # new_layer_prefixes name real parameters, and the head is among them
    names = [n for n, _ in model.named_parameters()]
    for prefix in model.new_layer_prefixes:
        assert any(n.startswith(prefix + ".") for n in names), prefix
    head_names = [n for n, p in model.named_parameters() if p is linears[0].weight]
    assert any(head_names[0].startswith(p + ".") for p in model.new_layer_prefixes)


def test_tiny_real_forward_and_cam_equals_head_on_pooled_features():
    """logits = W · GAP(A) + b exactly, so CAM (Σ_k W[c,k] A_k) averages to logit - bias."""
    torch.manual_seed(0)
    model = build_backbone("tiny", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, _ = _capture_shape(model, "block4", x)
        feats = {}
        h = model.block4.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o.double()))
        model(x)
        h.remove()
    cam = torch.einsum("kc,bchw->bkhw", model.fc.weight.double(), feats["a"])
    torch.testing.assert_close(cam.mean((2, 3)) + model.fc.bias.double(), logits.double(), rtol=1e-5, atol=1e-5)


def test_explain_finds_cam_head_automatically():
    import camkit

    torch.manual_seed(0)
    model = build_backbone("tiny", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    exp = camkit.explain(model, x, methods=("cam",), layers=("block4",), normalize=False, upsample=False)
    feats = {}
    h = model.block4.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o.detach()))
    with torch.no_grad():
        top1 = model(x).argmax(1)
    h.remove()
    expected = torch.einsum("bc,bchw->bhw", model.fc.weight[top1].detach(), feats["a"])
    got = exp.maps[("cam", "block4")]
    assert got.shape == expected.shape
    # the engine may apply ReLU; compare on the positive part, which survives any post-processing
    torch.testing.assert_close(got.clamp_min(0), expected.clamp_min(0), rtol=1e-4, atol=1e-5)


def test_mobilenet_v2_loads_real_torchvision_weights(tmp_path):
    from conftest import asset
    from torchvision.models import mobilenet_v2
    path = asset("weights/mobilenet_v2_imagenet.pth")
    ours = build_backbone("mobilenet_v2", num_classes=1000, pretrained=str(path)).eval()
    reference = mobilenet_v2()
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    reference.eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    # a new head (other class count) keeps the trunk, skips the head, and stays random there
    five = build_backbone("mobilenet_v2", num_classes=5, pretrained=str(path))
    assert torch.equal(five.features[0][0].weight, reference.features[0][0].weight)
    # a file for another model is refused, naming missing trunk weights
    torch.save({"fc.weight": torch.zeros(5, 1280)}, tmp_path / "wrong.pth")
    with pytest.raises(KeyError, match="trunk weights"):
        load_pretrained(build_backbone("mobilenet_v2", num_classes=5), tmp_path / "wrong.pth")


def test_pretrained_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("attempted a download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(FileNotFoundError, match="never downloads.*pretrained="):
        build_backbone("mobilenet_v2", num_classes=5, pretrained=True)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("mobilenet_v2", num_classes=5, pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="no published pretrained"):
        build_backbone("tiny", pretrained=True)


def test_torchvision_cache_is_used(tmp_path, monkeypatch):
    """pretrained=True reads torch.hub's checkpoints folder (file name = torchvision's URL basename)."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(1)
    source = mobilenet_v2()
    torch.save(source.state_dict(), cache / MobileNet_V2_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1])
    model = build_backbone("mobilenet_v2", num_classes=1000, pretrained=True)
    assert torch.equal(model.features[3].conv[0][0].weight, source.features[3].conv[0][0].weight)


def test_unknown_backbone_lists_names():
    with pytest.raises(KeyError, match="available"):
        build_backbone("resnet5O")
    assert {"tiny", "vgg16", "resnet50", "inception_v3", "mobilenet_v2"} <= set(list_backbones())
