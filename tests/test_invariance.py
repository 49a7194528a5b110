"""Invariances and exact relations that follow from the method definitions (DESIGN.md).

1. A batch equals its single images (all methods, two layers, top-1 and top-k).
2. Positive rescaling of the head (``W, b -> a W, a b``) scales ``S_c`` and ``g`` by ``a``:
   CAM, Grad-CAM and PCS raw maps scale by ``a`` (normalised maps are unchanged); BagCAMs uses
   ``grad log(a S_c) = g / S_c``, so even its raw maps are unchanged. Grad-CAM++ is *not* invariant:
   its ``alpha = 1 / (2 + sum_m(A_k) g)`` (exponential-score assumption) depends on the scale of g.
3. At the last layer of a GAP + linear network (``S_c = sum_k W[c,k] mean_m A_k(m) + b_c``, with no
   ReLU module after the layer), ``g_k(m) = W[c,k] / (h w)`` for every position, hence exactly
     Grad-CAM = PCS = ReLU(CAM) / (h w),
     Grad-CAM++ = ReLU(sum_k ReLU(W[c,k]) / (2 + W[c,k] p_k) A_k),  p_k = mean_m A_k(m),
     BagCAMs = sum_k ReLU(t_k W[c,k]) A_k / (S_c h w),  t_k = 1 + W[c,k] p_k / (S_c h w)
       (when S_c > 0 and A >= 0, so the per-term ReLU acts on the weight alone).
   *When is Grad-CAM == CAM == PCS after normalisation?* Min-max normalisation is invariant to a
   positive factor, so the three agree exactly iff ReLU(CAM) = CAM, i.e. iff CAM(m) >= 0 at every
   position of the layer-resolution map (or the map is constant). A >= 0 alone does not give it:
   negative weights can make CAM negative somewhere. The model below makes it hold for class 0 by
   a channel that is constant 2 with a large positive class-0 weight, and class 1 is a counterexample
   (CAM < 0 somewhere, so normalised Grad-CAM != normalised CAM while Grad-CAM == PCS still holds).
   *BagCAMs vs CAM with negative weights clamped (NWC).* With ``delta_k = W[c,k] p_k / (S_c h w)``,
   ``t_k W[c,k] = W[c,k] (1 + delta_k)``. If every ``1 + delta_k > 0``, negative-weight channels drop
   out exactly as in NWC and ``S_c h w BagCAMs = N + E`` with ``N`` = CAM-NWC and
   ``0 <= E <= delta_max N`` pointwise (``delta_max`` over positive weights). Bilinear upsampling is a
   positive linear map, so this survives it, and for min-max normalisation
   ``|norm(N + E) - norm(N)| <= 4 delta_max max(N) / range(N)`` -- the tolerance used below,
   computed from the model; it is small because ``h w = 64``.
"""
import warnings

import pytest
import torch
import torchvision
from torch import nn

import camkit
import reference_methods as ref

METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")
GRADIENT_METHODS = ("gradcam", "gradcam++", "pcs", "bagcams")


pytestmark = pytest.mark.usefixtures("one_thread")


def _explain(model, images, methods, layers, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", camkit.CAMHeadWarning)
        warnings.filterwarnings("ignore", message=".*target logit.*")
        return camkit.explain(model, images, methods=methods, layers=layers, **kwargs)


# --------------------------------------------------------------------------------------------------
# 1. A batch equals its single images.
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval(), torch.randn(3, 3, 64, 64)


@pytest.mark.parametrize("target", [None, "topk"])
@pytest.mark.parametrize("normalize", [False, True])
def test_batch_equals_single_images(resnet, target, normalize):
    model, images = resnet
    target = camkit.TopK(2) if target == "topk" else target
    layers = ("layer3", "layer4")
    kw = dict(target=target, normalize=normalize, upsample=normalize)
    batch = _explain(model, images, METHODS, layers, **kw)
    for b in range(images.shape[0]):
        single = _explain(model, images[b:b + 1], METHODS, layers, **kw)
        assert single.targets.tolist() == batch.targets[b:b + 1].tolist()
        torch.testing.assert_close(single.logits, batch.logits[b:b + 1], rtol=1e-5, atol=1e-5)
        assert set(single.maps) == set(batch.maps)
        for key, maps in batch.maps.items():
            # Batched and single convolutions may round differently: float32 tolerance relative to
            # the map's scale (raw) or absolute on [0, 1] (normalised).
            scale = 1.0 if normalize else float(maps[b].abs().max().clamp(min=1e-30))
            torch.testing.assert_close(single.maps[key][0] / scale, maps[b] / scale, rtol=0, atol=2e-5,
                                       msg=lambda m: f"{key} image {b}: {m}")


def test_unbatched_image_equals_batch_of_one(resnet):
    model, images = resnet
    one = _explain(model, images[0], METHODS, ("layer4",))
    batch = _explain(model, images[:1], METHODS, ("layer4",))
    for key, maps in batch.maps.items():
        torch.testing.assert_close(one.maps[key].reshape(maps.shape), maps, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# 2. Positive rescaling of the head.
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [4.0, 0.37])
def test_positive_head_rescaling(resnet, factor):
    model, images = resnet
    scaled = torchvision.models.resnet18(weights=None).eval()
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        scaled.fc.weight.mul_(factor)
        scaled.fc.bias.mul_(factor)
    layers = ("layer3", "layer4")
    target = camkit.TopK(2)
    base_raw = _explain(model, images, METHODS, layers, target=target, normalize=False, upsample=False)
    new_raw = _explain(scaled, images, METHODS, layers, target=target, normalize=False, upsample=False)
    base = _explain(model, images, METHODS, layers, target=target)
    new = _explain(scaled, images, METHODS, layers, target=target)
    assert new.targets.tolist() == base.targets.tolist()
    for (method, layer), maps in base_raw.maps.items():
        expected_factor = {"cam": factor, "gradcam": factor, "pcs": factor, "bagcams": 1.0}.get(method)
        if expected_factor is None:
            continue  # Grad-CAM++: see the next test
        scale = maps.abs().amax(dim=(-2, -1), keepdim=True).clamp(min=1e-30)
        torch.testing.assert_close(new_raw.maps[(method, layer)] / (expected_factor * scale), maps / scale,
                                   rtol=0, atol=1e-5, msg=lambda m: f"raw {method}@{layer}: {m}")
        torch.testing.assert_close(new.maps[(method, layer)], base.maps[(method, layer)], rtol=0, atol=2e-5,
                                   msg=lambda m: f"normalised {method}@{layer}: {m}")


def test_gradcam_plus_plus_depends_on_the_score_scale(resnet):
    """alpha = 1 / (2 + sum_m(A_k) g): scaling the logits changes the map, and it must match the
    reference on the scaled model (guards against an implementation that drops the g^3 term)."""
    model, images = resnet
    scaled = torchvision.models.resnet18(weights=None).eval()
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        scaled.fc.weight.mul_(8.0)
        scaled.fc.bias.mul_(8.0)
    base = _explain(model, images[:1], "gradcam++", "layer3")
    new = _explain(scaled, images[:1], "gradcam++", "layer3")
    want = ref.reference_maps(scaled, images[:1], "layer3", "gradcam++", new.targets.reshape(1, 1))[:, 0]
    assert (new.maps[("gradcam++", "layer3")] - base.maps[("gradcam++", "layer3")]).abs().max() > 1e-3
    torch.testing.assert_close(new.maps[("gradcam++", "layer3")].double(), want, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# 3. GAP + linear relations at the last layer.
# --------------------------------------------------------------------------------------------------
class GapLinearNet(nn.Module):
    """``features`` (conv-ReLU-conv-ReLU, 16 channels at 8x8 for 16x16 inputs) -> GAP -> ``fc`` (3 classes).

    Channel 15 of ``features`` is constant 2 (zero weights, bias 2). Class 0 gives it weight 10,
    which makes CAM_0 > 0 everywhere; class 1 gives it 0 and has mixed-sign weights elsewhere.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():
            self.features[2].weight[15] = 0.0
            self.features[2].bias[15] = 2.0
            self.fc.weight[0, 15] = 10.0
            self.fc.weight[1, 15] = 0.0
            self.fc.bias.copy_(torch.tensor([0.1, 0.5, 0.0]))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@pytest.fixture(scope="module")
def gap_case():
    model = GapLinearNet().eval()
    torch.manual_seed(4)
    images = torch.randn(2, 3, 16, 16)
    # Activation and logits of the layer in float64, from the reference's split forward.
    model64 = ref.float64_copy(model)
    acts, logits = [], []
    for b in range(2):
        A, S = ref.split_forward(model64, "features", images[b:b + 1].double())
        acts.append(A[0].detach())
        logits.append(S.detach())
    A, S = torch.stack(acts), torch.stack(logits)
    W = model.fc.weight.detach().double()
    cam = torch.einsum("kc,bchw->bkhw", W, A)  # (B, K, h, w), no bias
    return model, images, A, S, W, cam


def _layer_maps(model, images, methods, target, **kwargs):
    exp = _explain(model, images, methods, "features", target=target, **kwargs)
    return {m: exp.maps[(m, "features")].double() for m in methods}


@pytest.mark.parametrize("target", [0, 1])
def test_gap_linear_gradcam_equals_pcs_equals_relu_cam(gap_case, target):
    model, images, A, S, W, cam = gap_case
    hw = A.shape[-1] * A.shape[-2]
    raw = _layer_maps(model, images, ("cam", "gradcam", "pcs"), target, normalize=False, upsample=False)
    scale = cam[:, target].abs().amax()
    torch.testing.assert_close(raw["cam"] / scale, cam[:, target] / scale, rtol=0, atol=1e-5)
    want = cam[:, target].clamp(min=0) / hw
    torch.testing.assert_close(raw["gradcam"] / scale, want / scale, rtol=0, atol=1e-5)
    torch.testing.assert_close(raw["pcs"] / scale, want / scale, rtol=0, atol=1e-5)


def test_gap_linear_gradcam_cam_pcs_agree_after_normalisation_iff_cam_nonnegative(gap_case):
    model, images, A, S, W, cam = gap_case
    # Preconditions of the construction: CAM_0 >= 0 everywhere, CAM_1 < 0 somewhere (both images).
    assert cam[:, 0].amin() > 0
    assert (cam[:, 1].amin(dim=(-2, -1)) < 0).all()
    norm0 = _layer_maps(model, images, ("cam", "gradcam", "pcs"), 0)
    torch.testing.assert_close(norm0["gradcam"], norm0["cam"], rtol=0, atol=2e-5)
    torch.testing.assert_close(norm0["pcs"], norm0["cam"], rtol=0, atol=2e-5)
    norm1 = _layer_maps(model, images, ("cam", "gradcam", "pcs"), 1)
    torch.testing.assert_close(norm1["pcs"], norm1["gradcam"], rtol=0, atol=2e-5)
    assert (norm1["gradcam"] - norm1["cam"]).abs().amax(dim=(-2, -1)).min() > 0.05


@pytest.mark.parametrize("target", [0, 1])
def test_gap_linear_gradcam_plus_plus_closed_form(gap_case, target):
    model, images, A, S, W, cam = gap_case
    p = A.mean(dim=(-2, -1))  # (B, C)
    w = W[target].clamp(min=0) / (2 + W[target] * p)  # (B, C)
    want = torch.einsum("bc,bchw->bhw", w, A).clamp(min=0)
    got = _layer_maps(model, images, ("gradcam++",), target, normalize=False, upsample=False)["gradcam++"]
    scale = want.abs().amax()
    torch.testing.assert_close(got / scale, want / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("target", [0, 1])
def test_gap_linear_bagcams_closed_form(gap_case, target):
    model, images, A, S, W, cam = gap_case
    h, w = A.shape[-2:]
    S_c = S[:, target]
    assert (S_c > 0).all() and (A >= 0).all()  # the closed form's conditions
    p = A.mean(dim=(-2, -1))  # (B, C)
    t = 1 + W[target] * p / (S_c[:, None] * h * w)  # (B, C)
    weight = (t * W[target]).clamp(min=0) / (S_c[:, None] * h * w)
    want = torch.einsum("bc,bchw->bhw", weight, A)
    got = _layer_maps(model, images, ("bagcams",), target, normalize=False, upsample=False)["bagcams"]
    scale = want.abs().amax()
    torch.testing.assert_close(got / scale, want / scale, rtol=0, atol=1e-5)


def test_gap_linear_bagcams_approximately_cam_with_negative_weights_clamped(gap_case):
    """Class 1 (S_1 ~ 0.45 > 0). Class 0 is not used: its constant channel makes max(N)/range(N) ~ 100,
    so the bound would say nothing; class 2 has S_2 < 0, outside the relation's conditions."""
    target = 1
    model, images, A, S, W, cam = gap_case
    h, w = A.shape[-2:]
    S_c = S[:, target]
    delta = W[target] * A.mean(dim=(-2, -1)) / (S_c[:, None] * h * w)  # (B, C)
    assert ((1 + delta) > 0).all()  # negative-weight channels drop out exactly as in NWC
    delta_max = (delta * (W[target] > 0)).amax(dim=1)  # (B,)
    nwc = torch.einsum("c,bchw->bhw", W[target].clamp(min=0), A)
    up = ref.postprocess_batch(nwc, tuple(images.shape[-2:]), normalize=False)
    value_range = up.amax(dim=(-2, -1)) - up.amin(dim=(-2, -1))
    bound = 4 * delta_max * up.amax(dim=(-2, -1)) / value_range + 2e-5  # + float32 rounding
    assert (bound < 0.1).all(), f"the construction should make the bound informative, got {bound}"
    maps = _layer_maps(model, images, ("bagcams", "cam"), target,
                       method_options={"cam": {"clamp_negative_weights": True}})
    err = (maps["bagcams"] - maps["cam"]).abs().amax(dim=(-2, -1))
    assert (err <= bound).all(), f"BagCAMs vs CAM-NWC: {err} > bound {bound}"
    # The NWC clamp matters here: plain CAM is measurably different from BagCAMs.
    plain = _layer_maps(model, images, ("cam",), target)["cam"]
    assert (plain - maps["bagcams"]).abs().amax() > 0.05


class ConvHeadNet(nn.Module):
    """GapLinearNet's features, then a 1x1 conv classifier (16 -> 3) *before* GAP: the logits are
    again ``sum_k W[c,k] mean_m A_k(m) + b_c``, so the same last-layer relations hold."""

    def __init__(self):
        super().__init__()
        source = GapLinearNet()  # seeded: the same weights as the gap_case model
        self.features = source.features
        self.classifier = nn.Conv2d(16, 3, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.classifier.weight.copy_(source.fc.weight[:, :, None, None])
            self.classifier.bias.copy_(source.fc.bias)

    def forward(self, x):
        return torch.flatten(self.pool(self.classifier(self.features(x))), 1)


def test_one_by_one_conv_head_is_found_and_gives_the_same_relations(gap_case):
    _, images, A, S, W, cam = gap_case
    model = ConvHeadNet().eval()
    hw = A.shape[-1] * A.shape[-2]
    for target in (0, 1):
        raw = _layer_maps(model, images, ("cam", "gradcam", "pcs"), target, normalize=False, upsample=False)
        scale = cam[:, target].abs().amax()
        torch.testing.assert_close(raw["cam"] / scale, cam[:, target] / scale, rtol=0, atol=1e-5)
        for method in ("gradcam", "pcs"):
            torch.testing.assert_close(raw[method] / scale, cam[:, target].clamp(min=0) / hw / scale, rtol=0,
                                       atol=1e-5, msg=lambda m: f"{method}, class {target}: {m}")
