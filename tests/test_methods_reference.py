"""The fast path (``camkit.explain``, float32, batched) against the slow float64 reference.

Models: random torchvision resnet18 and mobilenet_v2 (``weights=None``, seeded, eval), two layers
each, every method, raw maps (``normalize=False, upsample=False``) and normalised maps, with top-1,
top-k, int, sequence, tensor and callable targets. The reference (``tests/reference_methods.py``)
runs one image and one class at a time on a float64 copy of the model.

mobilenet_v2's random init makes activations vanish (logits ~1e-9), so its BatchNorm running
statistics are first calibrated on one random batch: the network stays random, but its activations
and logits are O(1) and the comparison measures the methods, not float32 underflow.

Tolerances. The engine runs in float32 (eps = 1.19e-7). Each map is a sum over C = 160..1280 channel
terms of products of activations and gradients that went through up to ~50 layers of float32 forward
and backward, so its rounding error is proportional to the size of the *terms*, not of their
(possibly cancelling) sum: a map for a negative-logit class can be 10x smaller than its terms. So raw
maps are compared against ``scale = max_m sum_k |term_k(m)|`` (``reference_methods.term_magnitude``).
Measured (engine float32 vs reference float64, every case below): resnet18 <= 6.7e-7 of that scale,
mobilenet_v2 <= 8.4e-6; running the *reference itself* in float32 gives the same 8.2e-6 on
mobilenet_v2, so that is float32's own error on this (BN-calibrated, worse conditioned) network.
Normalised maps in [0, 1] differed by <= 9.2e-6 (resnet18) and <= 2.5e-5 (mobilenet_v2).
Allowed: ``RAW_REL = 5e-5`` of the scale for raw maps (6x headroom) and ``NORM_ABS = 1e-4`` for
normalised maps (4x), widened by the min-max amplification ``4 * RAW_REL * scale / range`` when a
map's range is small. Formula slips are far larger: Grad-CAM++ with alpha fixed at 1/2, BagCAMs
unguided or with the ReLU after the channel sum, Grad-CAM vs PCS at layer3 differ by 6e-4 .. 1 on
normalised maps; BagCAMs without the log (the 1/S_c factor) differs by a factor S_c on raw maps,
which is why the raw comparisons matter.
"""
import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

import camkit
import reference_methods as ref

RAW_REL = 5e-5
NORM_ABS = 1e-4
METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")
GRADIENT_METHODS = ("gradcam", "gradcam++", "pcs", "bagcams")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests make many small CPU calls; on a shared 2-core machine one intra-op thread avoids
    spin contention (~10x faster here). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _calibrated_mobilenet_v2():
    model = torchvision.models.mobilenet_v2(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 128, 128))
    return model.eval()


MODELS = {
    # name: (builder, (intermediate layer, last layer), head module name, input side)
    "resnet18": (lambda: torchvision.models.resnet18(weights=None).eval(), ("layer3", "layer4"), "fc", 80),
    "mobilenet_v2": (_calibrated_mobilenet_v2, ("features.14", "features.18"), "classifier.1", 128),
}

# Reference columns per image: top-1, top-2, top-3, the int target, the sequence target, the callable.
TOP3, INT, SEQ, CALLABLE = slice(0, 3), 3, 4, 5


class Case:
    """One seeded model, a (2, 3, S, S) batch, chosen targets and the reference maps."""

    def __init__(self, name):
        torch.manual_seed(0)
        builder, self.layers, head_name, side = MODELS[name]
        self.name = name
        self.model = builder()
        self.images = torch.randn(2, 3, side, side)
        self.head_weight = dict(self.model.named_modules())[head_name].weight
        self.logits64 = ref.reference_logits(self.model, self.images)
        ranked = self.logits64.argsort(dim=1, descending=True)
        top = self.logits64.topk(4, dim=1).values
        # Top-1 and top-3 must be unambiguous in float32.
        assert (top[:, :3] - top[:, 1:4]).min() > 1e-4, "pick another seed: near-tied logits"
        self.top3 = ranked[:, :3]
        # An int target broadcast over the batch: the class with the lowest summed logit, whose logit
        # is negative for both images, so BagCAMs' log(S_c) is exercised with S_c < 0.
        self.int_target = int(self.logits64.sum(0).argmin())
        # A sequence target: each image's 10th-ranked class (positive logit, not top-k).
        self.seq_target = [int(ranked[0, 9]), int(ranked[1, 9])]
        assert (self.logits64[[0, 1], self.seq_target] > 0).all()
        top1_of_image0, low = int(self.top3[0, 0]), self.int_target

        def score(logits):  # row-wise; positive because the `low` logits are negative
            return logits[:, top1_of_image0] - 0.5 * logits[:, low]

        self.score = score
        columns = [self.top3[b].tolist() + [self.int_target, self.seq_target[b], score] for b in range(2)]
        self.raw, self.magnitude = {}, {}
        for layer in self.layers:
            self.raw[layer], self.magnitude[layer] = ref.reference_raw_maps(
                self.model, self.images, layer, columns, self.methods_at(layer),
                head_weight=self.head_weight, with_magnitude=True)
        # CAM with negative weights clamped, top-1, last layer (needs only the activation).
        last = self.layers[-1]
        model64 = ref.float64_copy(self.model)
        self.cam_nwc, self.cam_nwc_magnitude = [], []
        for b in range(2):
            A, _, _ = ref.gradients_of_float64_model(model64, last, self.images[b], [])
            terms = ref.cam_terms(A, self.head_weight.detach().double()[int(self.top3[b, 0])], True)
            self.cam_nwc.append(terms.sum(0))
            self.cam_nwc_magnitude.append(ref.term_magnitude(terms))
        self.cam_nwc = torch.stack(self.cam_nwc)
        self.cam_nwc_magnitude = torch.stack(self.cam_nwc_magnitude)

    def methods_at(self, layer):
        return METHODS if layer == self.layers[-1] else GRADIENT_METHODS

    def explain(self, methods=METHODS, **kwargs):
        """Run the engine at both layers in one call. CAM has no head at the intermediate layer: the
        engine warns and skips it there (checked in test_cam_is_skipped_where_there_is_no_head)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", camkit.CAMHeadWarning)
            warnings.filterwarnings("ignore", message=".*target logit.*")  # negative-logit notice
            exp = camkit.explain(self.model, self.images, methods=methods, layers=self.layers, **kwargs)
        return exp

    def check(self, exp, column, normalised, what, methods=METHODS):
        for layer in self.layers:
            for method in methods:
                if method not in self.methods_at(layer):
                    continue
                raw = self.raw[layer][method][:, column]
                magnitude = self.magnitude[layer][method][:, column]
                got = exp.maps[(method, layer)]
                label = f"{self.name} {method}@{layer} {what}"
                if normalised:
                    assert_normalised_close(got, raw, magnitude, tuple(self.images.shape[-2:]), label)
                else:
                    assert_raw_close(got, raw, magnitude, label)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    return Case(request.param)


def assert_raw_close(got, want, magnitude, what):
    """``|got - want| <= RAW_REL * max_m sum_k |term_k(m)|``, map by map (the last two dims)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got = got.detach().to(torch.float64)
    scale = magnitude.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-30)
    err = ((got - want).abs() / scale).amax()
    assert err <= RAW_REL, f"{what}: max error {err:.3g} of the terms' scale (allowed {RAW_REL})"


def assert_normalised_close(got, raw, magnitude, size, what):
    """Normalised maps: ``NORM_ABS``, widened where min-max amplifies the raw rounding error.

    If two raw maps differ by at most ``e`` everywhere, their min-max normalisations differ by at
    most ``4 e / range``; with ``e = RAW_REL * max magnitude`` that is the second term below. For
    these models it is usually far below ``NORM_ABS``.
    """
    want = ref.postprocess_batch(raw, size)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.min() >= 0 and got.max() <= 1, f"{what}: normalised map outside [0, 1]"
    upsampled = ref.postprocess_batch(raw, size, normalize=False)
    value_range = (upsampled.amax(dim=(-2, -1)) - upsampled.amin(dim=(-2, -1))).clamp(min=1e-30)
    tolerance = NORM_ABS + 4 * RAW_REL * magnitude.amax(dim=(-2, -1)) / value_range
    err = (got.detach().to(torch.float64) - want).abs().amax(dim=(-2, -1))
    assert (err <= tolerance).all(), f"{what}: max abs error {err.max():.3g} (allowed {tolerance.min():.3g}..)"


# --------------------------------------------------------------------------------------------------
# Self-checks of the reference (it must be right before it judges anything).
# --------------------------------------------------------------------------------------------------
def test_reference_split_forward_and_gradient_are_exact():
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    model64 = ref.float64_copy(model)
    A, logits = ref.split_forward(model64, "layer3", x)
    torch.testing.assert_close(logits, model64(x)[0], rtol=0, atol=0)
    # Manual: keep the layer3 output of an ordinary forward and differentiate the logit w.r.t. it.
    # (float64_copy freezes the parameters, so let the input carry the graph.)
    kept = []
    handle = model64.layer3.register_forward_hook(lambda m, i, o: kept.append(o))
    out = model64(x.clone().requires_grad_(True))
    handle.remove()
    (g_manual,) = torch.autograd.grad(out[0, 5], kept[0])
    _, _, (g_ref,) = ref.activation_logits_gradients(model, "layer3", x[0], [5])
    torch.testing.assert_close(g_ref, g_manual[0], rtol=0, atol=0)
    # Grad-CAM written inline from the definition.
    weights = g_manual[0].mean(dim=(1, 2))
    manual = torch.relu((weights[:, None, None] * kept[0][0]).sum(0))
    torch.testing.assert_close(ref.gradcam(A[0].detach(), g_ref), manual.detach(), rtol=1e-12, atol=1e-14)


def test_reference_guided_gradient_matches_hand_rule():
    """Guided backward through one ReLU: clamp(grad, 0) * 1[x > 0]; ReLU6 also needs x < 6."""
    x = torch.tensor([-1.0, 0.5, 2.0, 7.0], dtype=torch.float64, requires_grad=True)
    grad_out = torch.tensor([3.0, -2.0, 4.0, 5.0], dtype=torch.float64)
    (g,) = torch.autograd.grad(ref.GuidedReLU()(x), x, grad_out)
    assert g.tolist() == [0.0, 0.0, 4.0, 5.0]
    (g6,) = torch.autograd.grad(ref.GuidedReLU(6.0)(x), x, grad_out)
    assert g6.tolist() == [0.0, 0.0, 4.0, 0.0]


def test_reference_upsampling_matches_torch_bilinear():
    raw = torch.randn(3, 5, dtype=torch.float64)
    for size in [(7, 12), (2, 3), (96, 96), (3, 5)]:
        torch_up = nn.functional.interpolate(raw[None, None], size=size, mode="bilinear",
                                             align_corners=False)[0, 0]
        torch.testing.assert_close(ref.upsample_bilinear(raw, size), torch_up, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------------------------------
# Engine vs reference.
# --------------------------------------------------------------------------------------------------
def test_logits_and_top1_targets(case):
    exp = case.explain(methods="gradcam")
    torch.testing.assert_close(exp.logits.to(torch.float64), case.logits64, rtol=1e-4, atol=1e-5)
    assert exp.targets.tolist() == case.top3[:, 0].tolist()
    assert list(exp.layers) == list(case.layers)


def test_top1_raw_maps(case):
    case.check(case.explain(normalize=False, upsample=False), 0, False, "top-1 raw")


def test_top1_normalised_maps(case):
    exp = case.explain()
    for key, maps in exp.maps.items():
        assert maps.shape == (2, *case.images.shape[-2:]), key
    case.check(exp, 0, True, "top-1 normalised")


def test_topk_maps_equal_per_class_references(case):
    raw = case.explain(target=camkit.TopK(3), normalize=False, upsample=False)
    assert raw.targets.tolist() == case.top3.tolist()
    case.check(raw, TOP3, False, "top-3 raw")
    case.check(case.explain(target=camkit.TopK(3)), TOP3, True, "top-3 normalised")


def test_int_target_broadcasts_and_handles_negative_logit(case):
    assert (case.logits64[:, case.int_target] < 0).all()  # by construction
    raw = case.explain(target=case.int_target, normalize=False, upsample=False)
    assert raw.targets.tolist() == [case.int_target] * 2
    assert raw.negative_target_logit.tolist() == [True, True]
    case.check(raw, INT, False, f"int target {case.int_target} (negative logit)")
    case.check(case.explain(target=case.int_target), INT, True, f"int target {case.int_target}")


@pytest.mark.parametrize("kind", ["list", "tensor"])
def test_sequence_target(case, kind):
    target = case.seq_target if kind == "list" else torch.tensor(case.seq_target)
    raw = case.explain(target=target, normalize=False, upsample=False)
    assert raw.targets.tolist() == case.seq_target
    case.check(raw, SEQ, False, f"{kind} target {case.seq_target}")
    case.check(case.explain(target=target), SEQ, True, f"{kind} target {case.seq_target}")


def test_callable_target(case):
    """A callable score ``logits -> (B,)``: the gradient methods differentiate that score."""
    assert (case.score(case.logits64) > 0).all()
    raw = case.explain(methods=GRADIENT_METHODS, target=case.score, normalize=False, upsample=False)
    case.check(raw, CALLABLE, False, "callable", methods=GRADIENT_METHODS)


def test_cam_with_negative_weights_clamped_matches_reference(case):
    last = case.layers[-1]
    exp = camkit.explain(case.model, case.images, methods="cam", layers=last, normalize=False,
                         upsample=False, method_options={"cam": {"clamp_negative_weights": True}})
    assert_raw_close(exp.maps[("cam", last)], case.cam_nwc, case.cam_nwc_magnitude, f"{case.name} cam-nwc@{last}")


def test_cam_is_skipped_where_there_is_no_head(case):
    """At the intermediate layer the head's input width differs, so CAM is undefined there."""
    with pytest.warns(camkit.CAMHeadWarning, match="head="):
        exp = camkit.explain(case.model, case.images, methods=("cam", "gradcam"), layers=case.layers)
    assert ("cam", case.layers[0]) not in exp.maps
    assert ("cam", case.layers[1]) in exp.maps and ("gradcam", case.layers[0]) in exp.maps


def test_float64_engine_matches_reference_to_rounding(case):
    """The same comparison with the engine run on a float64 copy: no float32 slack left, so even
    slips that hide in the float32 tolerance (e.g. a missing log in BagCAMs on normalised maps) would
    show. Measured: <= 1.2e-15 of the terms' scale raw, <= 5.3e-15 normalised; allowed 1e-12."""
    model64 = copy.deepcopy(case.model).double()
    images64 = case.images.double()
    for target, column, label, normalised in [(camkit.TopK(3), TOP3, "top-3", False),
                                              (case.int_target, INT, "int target", True)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", camkit.CAMHeadWarning)
            warnings.filterwarnings("ignore", message=".*target logit.*")
            exp = camkit.explain(model64, images64, methods=METHODS, layers=case.layers, target=target,
                                 normalize=normalised, upsample=normalised)
        for layer in case.layers:
            for method in case.methods_at(layer):
                got = exp.maps[(method, layer)]
                assert got.dtype == torch.float64
                raw = case.raw[layer][method][:, column]
                what = f"{case.name} float64 {method}@{layer} {label} normalised={normalised}"
                if normalised:
                    err = (got - ref.postprocess_batch(raw, tuple(case.images.shape[-2:]))).abs().max()
                else:
                    scale = case.magnitude[layer][method][:, column].amax(dim=(-2, -1), keepdim=True)
                    err = ((got - raw).abs() / scale).max()
                assert err <= 1e-12, f"{what}: error {err:.3g}"


def test_module_called_twice_name_at_k():
    """torchvision's BasicBlock calls its one ``relu`` module twice: ``layer4.1.relu@0`` is the
    (in-place) ReLU after bn1 and ``layer4.1.relu@1`` (= ``layer4.1.relu``, the last call by default)
    is the block output, i.e. the same tensor as ``layer4``. BagCAMs' guided backward from call 0
    must also pass through call 1 of the same module, which is downstream."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    images = torch.randn(2, 3, 64, 64)
    maps, targets = {}, None
    for layer in ("layer4.1.relu@0", "layer4.1.relu", "layer4"):  # one layer per call (see below)
        exp = camkit.explain(model, images, methods=GRADIENT_METHODS, layers=layer, normalize=False, upsample=False)
        maps.update(exp.maps)
        targets = exp.targets.reshape(2, 1)
    want = {call: ref.reference_raw_maps(model, images, "layer4.1.relu", targets, GRADIENT_METHODS,
                                         with_magnitude=True, call=call) for call in (0, 1)}
    for method in GRADIENT_METHODS:
        for layer, call in (("layer4.1.relu@0", 0), ("layer4.1.relu", 1), ("layer4", 1)):
            raw, magnitude = want[call][0][method][:, 0], want[call][1][method][:, 0]
            assert_raw_close(maps[(method, layer)], raw, magnitude, f"{method}@{layer}")


class ReusedReLUNet(nn.Module):
    """conv1 -> relu -> conv2 -> relu (the same ``nn.ReLU`` module, called twice) -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
        self.relu, self.fc = nn.ReLU(), nn.Linear(8, 3)
        with torch.no_grad():
            self.fc.bias += 1.0  # positive logits

    def forward(self, x):
        y = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(y.mean(dim=(2, 3)))


class TwoReLUNet(nn.Module):
    """conv1 -> relu1 -> conv2 -> relu2 -> GAP -> fc; every module runs once."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 1), nn.ReLU()
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.fc.bias += 1.0  # positive logits

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).mean(dim=(2, 3)))


# (model, layers requested together, {engine layer name: (module name, call)} for the reference)
TOGETHER = {
    "two-relus": (TwoReLUNet, ("relu1", "relu2"), {"relu1": ("relu1", None), "relu2": ("relu2", None)}),
    "two-relus+conv": (TwoReLUNet, ("relu1", "conv2"), {"relu1": ("relu1", None), "conv2": ("conv2", None)}),
    "reused-relu": (ReusedReLUNet, ("relu@0", "relu"), {"relu@0": ("relu", 0), "relu": ("relu", 1)}),
}


@pytest.mark.parametrize("name", ["two-relus", "two-relus+conv", "reused-relu"])
def test_maps_do_not_depend_on_the_other_layers_requested(name):
    """Every layer's maps must equal its reference whatever else is captured in the same call. In
    particular BagCAMs' guided backward from an earlier layer must clamp at a ReLU module downstream
    even when that ReLU's output is itself a requested layer (or another call of the same module)."""
    model_cls, layers, reference_points = TOGETHER[name]
    model = model_cls().eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 4)
    exp = camkit.explain(model, x, methods=GRADIENT_METHODS, layers=layers, normalize=False, upsample=False)
    targets = exp.targets.reshape(2, 1)
    for layer, (module_name, call) in reference_points.items():
        raw, magnitude = ref.reference_raw_maps(model, x, module_name, targets, GRADIENT_METHODS,
                                                with_magnitude=True, call=call)
        for method in GRADIENT_METHODS:
            assert_raw_close(exp.maps[(method, layer)], raw[method][:, 0], magnitude[method][:, 0],
                             f"{method}@{layer} (requested with {layers})")


def test_two_dimensional_target_tensor_equals_per_class_references(case):
    """A ``(B, T)`` tensor of classes gives ``(B, T, h, w)`` maps, one per listed class."""
    columns = torch.stack([case.top3[:, 2], torch.full((2,), case.int_target), torch.tensor(case.seq_target)], 1)
    raw = case.explain(target=columns, normalize=False, upsample=False)
    assert raw.targets.tolist() == columns.tolist()
    for layer in case.layers:
        for method in case.methods_at(layer):
            got = raw.maps[(method, layer)]
            for t, column in enumerate((2, INT, SEQ)):
                assert_raw_close(got[:, t], case.raw[layer][method][:, column],
                                 case.magnitude[layer][method][:, column], f"{case.name} {method}@{layer} (B, T)[{t}]")
