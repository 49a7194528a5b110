"""Issue 13's methods: XGrad-CAM, LayerCAM, Eigen-CAM, EigenGrad-CAM, Score-CAM, SS-CAM, IS-CAM,
Ablation-CAM, SmoothGrad-CAM++ and BagCAMs' weighting ablation.

Three kinds of test per method: a hand oracle on ``TinyGapNet`` (tests/test_methods_oracle.py: at its
``relu`` layer ``R1 = [[2, 0], [0.5, 1.5]]``, ``R2 = [[0, 2], [0.5, 0]]``, ``S0 = 15/8`` and
``dS0/dR_k(m) = W[0, k] / 4``, i.e. ``g1 = 1/2``, ``g2 = -1/4``); the float64 reference of
tests/reference_methods.py on random resnet18 and mobilenet_v2 at two layers; invariances (a batch
equals its singles; Ablation-CAM's closed form on a GAP + linear head). Plus hygiene: the model is
left as it was and no hook stays.

Peer parity with pytorch-grad-cam is not here: the peer is not installed in this environment.
"""
import copy
import warnings
from unittest import mock

import pytest
import torch
import torchvision
from torch import nn

import camkit
import reference_methods as ref
from camkit.methods import perturbation
from test_methods_oracle import TinyGapNet, _input
from untouched import assert_unchanged, snapshot

R1 = torch.tensor([[2.0, 0.0], [0.5, 1.5]], dtype=torch.float64)
R2 = torch.tensor([[0.0, 2.0], [0.5, 0.0]], dtype=torch.float64)
RAW_REL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _raw(model, x, method, layer, options=None, **kwargs):
    exp = camkit.explain(model, x, methods=method, layers=layer, normalize=False, upsample=False,
                         method_options={method: options} if options else None, **kwargs)
    return exp.maps[(method, layer)].detach().to(torch.float64)


# --------------------------------------------------------------------------------------------------
# Hand oracles on TinyGapNet (target: class 0, the top-1).
# --------------------------------------------------------------------------------------------------
HAND = {
    # w = (g1, g2) = (1/2, -1/4) since g is constant per channel: ReLU(R1/2 - R2/4)
    "xgradcam": [[1.0, 0.0], [0.125, 0.75]],
    # only g1 > 0: ReLU(R1 / 2)
    "layercam": [[1.0, 0.0], [0.25, 0.75]],
    # S0^(1) = 2*0 - 0.625 + 0.5 = -1/8, w1 = (15/8 + 1/8)/(15/8) = 16/15;
    # S0^(2) = 2*1 - 0 + 0.5 = 5/2, w2 = (15/8 - 20/8)/(15/8) = -1/3: ReLU(16/15 R1 - 1/3 R2)
    "ablationcam": [[32 / 15, 0.0], [8 / 15 - 1 / 6, 24 / 15]],
}


@pytest.mark.parametrize("method", sorted(HAND))
def test_hand_oracle(method):
    got = _raw(TinyGapNet().eval(), _input(), method, "relu")[0]
    torch.testing.assert_close(got, torch.tensor(HAND[method], dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_eigencam_hand_oracle():
    """X = rows (2, 0), (0, 2), (0.5, 0.5), (1.5, 0); X^T X = [[6.5, 0.25], [0.25, 4.25]], whose top
    eigenvalue is l = (10.75 + sqrt(2.25^2 + 4 * 0.25^2)) / 2 with eigenvector (0.25, l - 6.5)."""
    lam = (10.75 + (2.25 ** 2 + 4 * 0.25 ** 2) ** 0.5) / 2
    v = torch.tensor([0.25, lam - 6.5], dtype=torch.float64)
    v = v / v.norm()
    want = v[0] * R1 + v[1] * R2                      # positive sum already
    got = _raw(TinyGapNet().eval(), _input(), "eigencam", "relu")[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_eigengradcam_hand_oracle():
    """g*A = (R1 / 2, -R2 / 4): rows (1, 0), (0, -1/2), (1/4, -1/8), (3/4, 0). Its Gram matrix is
    [[1 + 1/16 + 9/16, -1/32], [-1/32, 1/4 + 1/64]]; the sign makes the projection's sum positive."""
    gram = torch.tensor([[1 + 1 / 16 + 9 / 16, -1 / 32], [-1 / 32, 1 / 4 + 1 / 64]], dtype=torch.float64)
    a, b, d = gram[0, 0], gram[0, 1], gram[1, 1]
    lam = (a + d + ((a - d) ** 2 + 4 * b ** 2).sqrt()) / 2
    v = torch.stack([b, lam - a])
    v = v / v.norm()
    want = v[0] * R1 / 2 - v[1] * R2 / 4
    want = want if want.sum() > 0 else -want
    got = _raw(TinyGapNet().eval(), _input(), "eigengradcam", "relu")[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _tiny_score_weights(masks_of):
    """Score gains on TinyGapNet from its logits written out: the model reads channel 0 of the input
    at the stride-2 pixels, conv -> relu -> GAP -> fc by hand; ``masks_of(k)`` lists masked inputs."""
    W = torch.tensor([[2.0, -1.0], [-1.0, 3.0]], dtype=torch.float64)

    def p0(x):
        x0 = x[0, ::2, ::2]
        pooled = torch.stack([x0.clamp(min=0).mean(), (1 - x0).clamp(min=0).mean()])
        return torch.softmax(W @ pooled + 0.5, 0)[0]

    base = p0(torch.zeros(3, 4, 4, dtype=torch.float64))
    return torch.stack([sum(p0(m) - base for m in masks_of(k)) / len(masks_of(k)) for k in range(2)])


def _tiny_masks():
    """H_k at 4x4: R_k upsampled by the bilinear rule (align_corners=False) and min-max normalised."""
    return [ref.min_max(ref.upsample_bilinear(r, (4, 4))) for r in (R1, R2)]


def test_scorecam_hand_oracle():
    x = _input()[0].double()
    masks = _tiny_masks()
    w = _tiny_score_weights(lambda k: [x * masks[k]])
    want = (w[0] * R1 + w[1] * R2).clamp(min=0)
    got = _raw(TinyGapNet().eval(), _input(), "scorecam", "relu")[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_iscam_hand_oracle():
    x = _input()[0].double()
    masks = _tiny_masks()
    w = _tiny_score_weights(lambda k: [x * masks[k] * i / 3 for i in (1, 2, 3)])
    want = (w[0] * R1 + w[1] * R2).clamp(min=0)
    got = _raw(TinyGapNet().eval(), _input(), "iscam", "relu", {"num_samples": 3})[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_sscam_hand_oracle_with_its_seeded_noise():
    """The noise is ``std * randn(num_samples, 3, 4, 4)`` from a CPU generator seeded with ``seed``."""
    x = _input()[0].double()
    masks = _tiny_masks()
    noise = 0.5 * torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(7)).double()
    w = _tiny_score_weights(lambda k: [(x + e) * masks[k] for e in noise])
    want = (w[0] * R1 + w[1] * R2).clamp(min=0)
    got = _raw(TinyGapNet().eval(), _input(), "sscam", "relu", {"num_samples": 2, "std": 0.5, "seed": 7})[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_scorecam_peer_form_is_a_softmax_over_channel_logits():
    """pytorch-grad-cam's form: w = softmax_k(f_0(X * H_k)), masks upsampled with align_corners=True
    (at 2 -> 4 the corner-aligned samples sit at 0, 1/3, 2/3, 1 of the way)."""
    x = _input()[0].double()
    W = torch.tensor([[2.0, -1.0], [-1.0, 3.0]], dtype=torch.float64)
    t = torch.tensor([0, 1 / 3, 2 / 3, 1], dtype=torch.float64)
    logits = []
    for r in (R1, R2):
        up = torch.stack([torch.stack([(1 - a) * ((1 - c) * r[0, 0] + c * r[0, 1]) + a * ((1 - c) * r[1, 0] + c * r[1, 1])
                                       for c in t]) for a in t])
        mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
        x0 = (x * mask)[0, ::2, ::2]
        logits.append(W[0] @ torch.stack([x0.clamp(min=0).mean(), (1 - x0).clamp(min=0).mean()]) + 0.5)
    w = torch.softmax(torch.stack(logits), 0)
    got = _raw(TinyGapNet().eval(), _input(), "scorecam", "relu", {"form": "pytorch-grad-cam"})[0]
    torch.testing.assert_close(got, (w[0] * R1 + w[1] * R2).clamp(min=0), rtol=1e-5, atol=1e-7)


def _smoothgrad_plus_plus(A, grads):
    """SmoothGrad-CAM++ from the paper's equations: ``A`` ``(C, h, w)``, ``grads`` a list of ``(C, h, w)``."""
    d1 = sum(grads) / len(grads)
    d2 = sum(g ** 2 for g in grads) / len(grads)
    d3 = sum(g ** 3 for g in grads) / len(grads)
    denominator = 2 * d2 + A.sum((1, 2), keepdim=True) * d3
    alpha = torch.where(denominator != 0, d2 / torch.where(denominator != 0, denominator, 1.0), 0.0)
    weights = (alpha * d1.clamp(min=0)).sum((1, 2))
    return ref.weighted_relu_map(weights, A)


def test_smoothgradcam_plus_plus_hand_oracle_at_the_conv():
    """At ``conv`` (before the ReLU) dS0/dA_k(m) = W[0, k] / 4 * 1[A_k(m) > 0] on the noisy input:
    conv channel 1 reads x0, channel 2 is 1 - x0. The noise is s z_i, s = 0.15 * (9 - (-1)) = 1.5."""
    x = _input()[0].double()
    z = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(5)).double()
    grads = []
    for zi in z:
        x0 = (x + 1.5 * zi)[0, ::2, ::2]
        grads.append(torch.stack([0.5 * (x0 > 0).double(), -0.25 * ((1 - x0) > 0).double()]))
    A = torch.stack([x[0, ::2, ::2], 1 - x[0, ::2, ::2]])
    want, _ = _smoothgrad_plus_plus(A, grads)
    got = _raw(TinyGapNet().eval(), _input(), "smoothgradcam++", "conv", {"num_samples": 3, "seed": 5})[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# BagCAMs' weighting ablation.
# --------------------------------------------------------------------------------------------------
def test_bagcams_weightings_on_a_gap_linear_head():
    """TinyGapNet at relu, class 0: the guided d log(S0)/dR is g / S0 clamped at 0 by the relu's
    guided backward: (1/2 / S0, 0) per channel. "mean": ReLU(g^_1 R1) = (4/15) R1 (no R2 term);
    "bag": t_1 = 1 + mean(g^_1 R1) = 1 + (4/15) * 1, map t_1 (4/15) R1; "gradcam++" with a constant
    g^: alpha = 1 / (2 + sum(R1) g^) = 1 / (2 + 16/15), w = 4 alpha g^."""
    g = 0.5 / (15 / 8)
    wants = {"mean": g * R1, "bag": (1 + g) * g * R1, "gradcam++": 4 * g / (2 + 4 * g) * R1}
    for weighting, want in wants.items():
        got = _raw(TinyGapNet().eval(), _input(), "bagcams", "relu", {"weighting": weighting})[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=weighting)
    default = _raw(TinyGapNet().eval(), _input(), "bagcams", "relu")[0]
    torch.testing.assert_close(default, wants["bag"], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# Float64 references on random resnet18 / mobilenet_v2.
# --------------------------------------------------------------------------------------------------
def _calibrated_mobilenet_v2():
    model = torchvision.models.mobilenet_v2(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    return model.eval()


GRADIENT_CASES = {"resnet18": (lambda: torchvision.models.resnet18(weights=None).eval(), ("layer3", "layer4")),
                  "mobilenet_v2": (_calibrated_mobilenet_v2, ("features.14", "features.18"))}
# Few channels for the perturbation methods (one forward per channel): early layers.
FORWARD_CASES = {"resnet18": (lambda: torchvision.models.resnet18(weights=None).eval(), ("layer1", "layer2")),
                 "mobilenet_v2": (_calibrated_mobilenet_v2, ("features.3", "features.5"))}


@pytest.fixture(scope="module", params=sorted(GRADIENT_CASES))
def gradient_case(request):
    torch.manual_seed(0)
    builder, layers = GRADIENT_CASES[request.param]
    return builder(), layers, torch.randn(2, 3, 64, 64)


@pytest.fixture(scope="module", params=sorted(FORWARD_CASES))
def forward_case(request):
    torch.manual_seed(0)
    builder, layers = FORWARD_CASES[request.param]
    return builder(), layers, torch.randn(1, 3, 32, 32)


def _assert_close_to_terms(got, want, magnitude, what):
    scale = magnitude.amax().clamp(min=1e-30)
    err = (got - want).abs().amax() / scale
    assert err <= RAW_REL, f"{what}: error {err:.3g} of the terms' scale (allowed {RAW_REL})"


@pytest.mark.parametrize("method", ["xgradcam", "layercam", "eigencam", "eigengradcam"])
def test_gradient_methods_match_the_float64_reference(gradient_case, method):
    model, layers, images = gradient_case
    model64 = ref.float64_copy(model)
    for layer in layers:
        got = _raw(model, images, method, layer)
        classes = ref.reference_logits(model, images).argmax(1)
        for b in range(images.shape[0]):
            A, _, (g,) = ref.gradients_of_float64_model(model64, layer, images[b], [int(classes[b])])
            want = {"xgradcam": lambda: ref.xgradcam(A, g), "layercam": lambda: ref.layercam(A, g),
                    "eigencam": lambda: ref.eigen_projection(A), "eigengradcam": lambda: ref.eigen_projection(g * A)}[method]()
            magnitude = (g.abs() * A.abs()).sum(0) if method != "eigencam" else A.abs().sum(0)
            if method == "xgradcam":
                magnitude = ref.term_magnitude(A * (A.abs().sum((1, 2), keepdim=True) * g.abs()).sum((1, 2), keepdim=True)
                                               / A.sum((1, 2), keepdim=True).abs().clamp(min=1e-30))
            _assert_close_to_terms(got[b], want, magnitude, f"{method}@{layer} image {b}")


def test_smoothgradcam_plus_plus_matches_the_float64_reference(gradient_case):
    model, layers, images = gradient_case
    model64 = ref.float64_copy(model)
    z = torch.randn(2, *images.shape[1:], generator=torch.Generator().manual_seed(0))
    for layer in layers:
        got = _raw(model, images, "smoothgradcam++", layer, {"num_samples": 2, "noise_level": 0.1})
        classes = ref.reference_logits(model, images).argmax(1)
        for b in range(images.shape[0]):
            A, _, _ = ref.gradients_of_float64_model(model64, layer, images[b], [])
            s = 0.1 * (images[b].max() - images[b].min())
            grads = [ref.gradients_of_float64_model(model64, layer, images[b] + s * zi, [int(classes[b])])[2][0]
                     for zi in z]
            want, magnitude = _smoothgrad_plus_plus(A, grads)
            _assert_close_to_terms(got[b], want, magnitude, f"smoothgradcam++@{layer} image {b}")


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "iscam"])
def test_forward_methods_match_the_float64_reference(forward_case, method):
    model, layers, images = forward_case
    model64 = ref.float64_copy(model)
    options = {"iscam": {"num_samples": 2}}.get(method)
    size = tuple(images.shape[-2:])
    for layer in layers if method != "iscam" else layers[:1]:   # IS-CAM: Score-CAM's path twice
        got = _raw(model, images, method, layer, options)
        classes = ref.reference_logits(model, images).argmax(1)
        for b in range(images.shape[0]):
            c = int(classes[b])
            A, _, _ = ref.gradients_of_float64_model(model64, layer, images[b], [])
            if method == "ablationcam":
                weights = ref.ablation_weights(model64, layer, images[b], c)
            else:
                steps = (1.0,) if method == "scorecam" else (0.5, 1.0)
                weights = ref.score_gains(model64, A, images[b], c, lambda x, k: [
                    x * s * ref.channel_mask(A[k], size) for s in steps])
            want, magnitude = ref.weighted_relu_map(weights, A)
            _assert_close_to_terms(got[b], want, magnitude, f"{method}@{layer} image {b}")


# --------------------------------------------------------------------------------------------------
# Invariances and hygiene.
# --------------------------------------------------------------------------------------------------
NEW_METHODS = {"xgradcam": None, "layercam": None, "eigencam": None, "eigengradcam": None,
               "scorecam": None, "iscam": {"num_samples": 2}, "sscam": {"num_samples": 2, "std": 0.1},
               "ablationcam": {"batch_size": 5}, "smoothgradcam++": {"num_samples": 2, "batch_size": 3}}


@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval(), torch.randn(3, 3, 32, 32)


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_a_batch_equals_its_single_images(small_resnet, method):
    model, images = small_resnet
    batch = _raw(model, images, method, "layer1", NEW_METHODS[method], target=camkit.TopK(2))
    for b in range(images.shape[0]):
        single = _raw(model, images[b:b + 1], method, "layer1", NEW_METHODS[method], target=camkit.TopK(2))
        torch.testing.assert_close(batch[b], single[0], rtol=1e-4, atol=1e-5 * batch[b].abs().max().item())


def test_ablationcam_closed_form_on_a_gap_linear_head():
    """GAP + linear at the last layer: zeroing channel k removes W[c, k] mean_m(A_k) from S_c, so
    w_k = W[c, k] mean_m(A_k) / S_c and the map is ReLU(sum_k w_k A_k)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 4)).eval()
    x = torch.randn(2, 3, 8, 8)
    got = _raw(model, x, "ablationcam", "1", {"batch_size": 4})
    with torch.no_grad():
        A = model[1](model[0](x)).double()
        logits = model.double()(x.double())
    c = logits.argmax(1)
    W = model[4].weight.detach()
    weights = W[c] * A.mean((2, 3)) / logits.gather(1, c[:, None])
    want = (weights[:, :, None, None] * A).sum(1).clamp(min=0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class FlattensByInputBatch(nn.Module):
    """conv, relu, then a linear head on the flattened map, reshaped by the batch size of the *input*:
    Ablation-CAM's one-image-before-the-layer path cannot broadcast that, so it must fall back."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        batch = x.shape[0]
        return self.fc(self.relu(self.conv(x)).reshape(batch, -1))


def test_ablationcam_falls_back_to_copies_when_the_model_reshapes_by_its_input_batch():
    """Linear head on vec(A): zeroing channel k removes W[c, k-block] . vec(A_k) from S_c (closed form)."""
    torch.manual_seed(4)
    model = FlattensByInputBatch().eval()
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(RuntimeWarning, match="runs the whole model.*flatten"):
        got = _raw(model, x, "ablationcam", "relu", {"batch_size": 3})
    with torch.no_grad():
        A = model.relu(model.conv(x)).double()
        logits = copy.deepcopy(model).double()(x.double())
    c = logits.argmax(1)
    W = model.fc.weight.detach().double().reshape(3, 4, 36)[c]                # (B, C, hw)
    removed = (W * A.flatten(2)).sum(2)                                       # (B, C)
    weights = removed / logits.gather(1, c[:, None])
    want = (weights[:, :, None, None] * A).sum(1).clamp(min=0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["layer4", "layer3.0.conv1"])   # the second: inside a skip connection
def test_ablationcam_runs_the_model_before_the_layer_once_per_image_and_chunk(small_resnet, layer):
    """Every extra forward gets a single image (the layer's output is broadcast to the chunk's copies),
    and the maps equal those of full copies of the image."""
    model, _ = small_resnet
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    channels = dict(model.named_modules())[layer].out_channels if layer.endswith("conv1") else 512
    input_batches = []
    counter = model.register_forward_pre_hook(lambda _m, args: input_batches.append(args[0].shape[0]))
    try:
        fast = _raw(model, images, "ablationcam", layer, {"batch_size": 100})
    finally:
        counter.remove()
    chunks = -(-channels // 100)
    assert input_batches == [3] + [1] * (3 * chunks)      # the engine's forward, then one per image and chunk
    with mock.patch.object(perturbation, "_masked_after_layer", lambda *args: None), \
            pytest.warns(RuntimeWarning, match="runs the whole model"):
        copies = _raw(model, images, "ablationcam", layer, {"batch_size": 100})
    torch.testing.assert_close(fast, copies, rtol=1e-4, atol=1e-4 * copies.abs().max().item())


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_model_is_left_untouched_and_no_hook_stays(small_resnet, method):
    model = copy.deepcopy(small_resnet[0]).train()          # explained in eval mode, restored to train
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        camkit.explain(model, small_resnet[1][:1], methods=method, layers="layer1",
                       method_options={method: NEW_METHODS[method]} if NEW_METHODS[method] else None)
    assert_unchanged(model, before)


def test_perturbation_methods_are_listed_as_needing_forwards():
    assert camkit.list_methods(needs="forward") == ["ablationcam", "iscam", "scorecam", "smoothgradcam++", "sscam"]
    needs = {m.name: m.needs for m in camkit.describe_methods()}
    assert "forward" not in needs["xgradcam"] and "forward" in needs["scorecam"]


BAD_OPTIONS = [
    ("scorecam", {"form": "peer"}, ValueError, "form"),
    ("scorecam", {"batch_size": 0}, ValueError, "batch_size"),
    ("ablationcam", {"batch_size": 2.5}, ValueError, "batch_size"),
    ("iscam", {"num_samples": 0}, ValueError, "num_samples"),
    ("sscam", {"noise_on": "both"}, ValueError, "noise_on"),
    ("eigencam", {"center": "yes"}, ValueError, "center"),
    ("bagcams", {"weighting": "max"}, ValueError, "weighting"),
    ("smoothgradcam++", {"num_samples": -1}, ValueError, "num_samples"),
    ("scorecam", {"steps": 3}, ValueError, "unknown option"),
]


@pytest.mark.parametrize("method, options, error, fragment", BAD_OPTIONS)
def test_bad_options_are_refused_and_leave_the_model_untouched(method, options, error, fragment):
    model = TinyGapNet().eval()
    before = snapshot(model)
    with pytest.raises(error, match=fragment):
        camkit.explain(model, _input(), methods=method, layers="relu", method_options={method: options})
    assert_unchanged(model, before)


def test_callable_target_is_refused_by_the_perturbation_methods():
    model = TinyGapNet().eval()
    before = snapshot(model)
    with pytest.raises(ValueError, match="class targets"):
        camkit.explain(model, _input(), methods="scorecam", layers="relu", target=lambda logits: logits[:, 0])
    assert_unchanged(model, before)


class FailsOnBigBatches(TinyGapNet):
    """TinyGapNet whose head refuses batches of more than one image (the perturbed chunks)."""

    def forward(self, x):
        features = torch.flatten(self.pool(self.relu(self.conv(x))), 1)
        if features.shape[0] > 1:
            raise RuntimeError("no batches here")
        return self.fc(features)


@pytest.mark.parametrize("method", ["ablationcam", "smoothgradcam++"])
def test_a_failing_perturbed_forward_leaves_no_hook(method):
    """The layer hook of Ablation-CAM (and SmoothGrad-CAM++'s leaf hook) is attached when the
    perturbed forward fails: it must still be removed, and the train flag restored."""
    model = FailsOnBigBatches().train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="no batches here"):
        camkit.explain(model, _input(), methods=method, layers="relu",
                       method_options={method: {"batch_size": 2, "num_samples": 2} if method != "ablationcam"
                                       else {"batch_size": 2}})
    assert_unchanged(model, before)
