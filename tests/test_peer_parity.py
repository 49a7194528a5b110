"""Parity with pytorch-grad-cam on a token layer (dev only: skipped when grad-cam is not installed).

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
