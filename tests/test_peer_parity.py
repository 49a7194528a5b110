"""Parity with pytorch-grad-cam (dev only: ``pip install -e ".[peers]"``; skipped when grad-cam is absent).

CNN methods of issue 13 (XGrad-CAM, LayerCAM, Eigen-CAM, Score-CAM in its peer's named form, Ablation-CAM) on
a random ResNet-18 at layer3 and layer4, both libraries asked for layer-resolution maps and post-processed
alike (bilinear, min-max). Two documented departures are bridged in the test: pytorch-grad-cam leaves
Eigen-CAM's sign to LAPACK (given camkit's rule ``v_1 . sum_m X(m) > 0`` here) and clips every map at 0
(camkit's Eigen-CAM is the signed projection, clipped here).

Token layer:

pytorch-grad-cam explains a ViT only through a user-written ``reshape_transform``; the one below is
the one from its tutorial (``tutorials/vision_transformers.md``: drop the class token, a
``height x width`` grid, 14x14 by default, channels first), called here with the 7x7 grid of a
112-pixel input. camkit reshapes the tokens itself. Both explain the same top-1 classes of torchvision's
``vit_b_16`` (random init, its zero-initialised head re-drawn) at the last block's ``ln_1``.

Identical post-processing: pytorch-grad-cam is asked for its maps at the token grid (its own resize is
then the identity) and camkit for its raw layer-resolution maps; both go through the same bilinear
upsampling and min-max normalisation, written here. A min-max of pytorch-grad-cam's ``(c - min) /
(max + 1e-7)`` maps equals the min-max of ``c``, so its epsilon does not enter.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import camkit

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER, SIZE, GRID = "encoder.layers.encoder_layer_11.ln_1", 112, 7    # 112 keeps it to seconds on a CPU


def reshape_transform(tensor, height=14, width=14):
    """pytorch-grad-cam's tutorial transform for ViT: ``(B, 1 + h * w, C)`` -> ``(B, C, h, w)``."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def _post(maps):
    """``(B, h, w)`` -> ``(B, SIZE, SIZE)``: bilinear (``align_corners=False``), then per-image min-max."""
    maps = F.interpolate(torch.as_tensor(maps, dtype=torch.float64)[:, None], size=(SIZE, SIZE), mode="bilinear",
                         align_corners=False)[:, 0]
    low, high = maps.flatten(1).amin(1), maps.flatten(1).amax(1)
    assert (high > low).all(), "a flat map: the comparison would be empty"
    return (maps - low[:, None, None]) / (high - low)[:, None, None]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=SIZE).eval()
    with torch.no_grad():       # torchvision zero-initialises the head: every map would be flat
        model.heads.head.weight.normal_(0, 0.02)
    return model


@pytest.mark.parametrize("method, peer", [("gradcam", "GradCAM"), ("pcs", "HiResCAM")])
def test_vit_token_layer_matches_pytorch_grad_cam_with_its_reshape_transform(vit, method, peer):
    torch.manual_seed(1)
    images = torch.randn(2, 3, SIZE, SIZE)
    ours = camkit.explain(vit, images, methods=method, layers=LAYER, upsample=False, normalize=False)
    raw = ours.maps[(method, LAYER)]
    assert raw.shape == (2, GRID, GRID)
    layer = dict(vit.named_modules())[LAYER]
    with getattr(pgc, peer)(model=vit, target_layers=[layer], reshape_transform=lambda t: reshape_transform(t, GRID, GRID)) as cam:
        cam.get_target_width_height = lambda input_tensor: (GRID, GRID)     # its maps at the token grid
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in ours.targets])
    a, b = _post(raw), _post(theirs)
    print(f"{method} vs {peer}: max |difference| {float((a - b).abs().max()):.2e}")
    assert float((a - b).abs().max()) <= 1e-5
    assert float(a.std()) > 0.05                 # informative maps, not two flat ones


# ----------------------------------------------------------------- issue 13's methods on a CNN
CNN_SIZE, CNN_LAYERS = 96, ("layer3", "layer4")          # 6x6 and 3x3 grids


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _post_cnn(maps):
    maps = F.interpolate(torch.as_tensor(maps, dtype=torch.float64)[:, None], size=(CNN_SIZE, CNN_SIZE),
                         mode="bilinear", align_corners=False)[:, 0]
    low, high = maps.flatten(1).amin(1), maps.flatten(1).amax(1)
    assert (high > low).all(), "a flat map: the comparison would be empty"
    return (maps - low[:, None, None]) / (high - low)[:, None, None]


def _projection_with_camkits_sign(activation_batch):
    """pytorch-grad-cam's centred projection ``(X - mean) v_1``, signed so that ``v_1 . sum_m X(m) > 0``."""
    out = []
    for activations in np.asarray(activation_batch, dtype=np.float64):
        x = activations.reshape(activations.shape[0], -1).T                 # (hw, C)
        _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
        v1 = vt[0] if x.sum(axis=0) @ vt[0] >= 0 else -vt[0]
        out.append(((x - x.mean(axis=0)) @ v1).reshape(activations.shape[1:]))
    return np.float32(out)


@pytest.mark.parametrize("layer", CNN_LAYERS)
@pytest.mark.parametrize("method, peer, options", [
    ("xgradcam", "XGradCAM", None),
    ("layercam", "LayerCAM", None),
    ("eigencam", "EigenCAM", {"center": True}),
    ("scorecam", "ScoreCAM", {"form": "pytorch-grad-cam"}),
    ("ablationcam", "AblationCAM", None),
])
def test_cnn_methods_match_pytorch_grad_cam(resnet, layer, method, peer, options, monkeypatch):
    if peer == "EigenCAM":          # the peer's sign is LAPACK's (arbitrary): give it camkit's documented rule
        monkeypatch.setattr("pytorch_grad_cam.eigen_cam.get_2d_projection", _projection_with_camkits_sign)
    torch.manual_seed(2)
    images = torch.randn(2, 3, CNN_SIZE, CNN_SIZE)
    ours = camkit.explain(resnet, images, methods=method, layers=layer, upsample=False, normalize=False,
                          method_options={method: options} if options else None)
    raw = ours.maps[(method, layer)]
    grid = tuple(raw.shape[-2:])
    with getattr(pgc, peer)(model=resnet, target_layers=[dict(resnet.named_modules())[layer]]) as cam:
        if hasattr(cam, "batch_size"):
            cam.batch_size = 64
        cam.get_target_width_height = lambda input_tensor: grid[::-1]     # its maps at the layer's grid
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in ours.targets])
    if method == "eigencam":        # camkit's Eigen-CAM is the signed projection; the peer's BaseCAM clips it at 0
        raw = raw.clamp(min=0)
    a, b = _post_cnn(raw), _post_cnn(theirs)
    print(f"{method} vs {peer} at {layer}: max |difference| {float((a - b).abs().max()):.2e}")
    assert float((a - b).abs().max()) <= 1e-5
