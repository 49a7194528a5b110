"""The engine leaves the user's model and input exactly as it found them, even when a call fails.

Checked after every call: every module's hook dicts (forward, pre-forward, backward, state-dict, ...)
and the global module hooks hold exactly the same entries; training flags, plain attributes (e.g.
``inplace``) and the module tree are unchanged; no module got an instance-level ``forward``; every
parameter keeps ``requires_grad``, its ``.grad`` (None stays None; an existing ``.grad`` is the same
tensor with the same values) and its tensor hooks; the state_dict is bit-identical; the grad mode is
restored; the input tensor keeps its values, ``requires_grad`` and ``.grad``.
"""
import warnings

import pytest
import torch
import torchvision
from torch import nn

import camkit
import reference_methods as ref
from untouched import assert_unchanged, snapshot

METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")


pytestmark = pytest.mark.usefixtures("one_thread")


class SmallNet(nn.Module):
    """conv-BN-ReLU(in place) x2 -> GAP -> dropout -> linear; layers ``stem`` (8x16x16), ``block``
    (16x8x8) and ``block.0`` (a conv whose output BN and an in-place ReLU follow)."""

    def __init__(self, inplace=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace))
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                   nn.ReLU(inplace=inplace))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.pool(self.block(self.stem(x))), 1)))


def make_model(inplace=True):
    torch.manual_seed(0)
    model = SmallNet(inplace=inplace)
    with torch.no_grad():  # non-trivial BN statistics, so a stray update would show
        for bn in (model.stem[1], model.block[1]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
    return model


def _images(requires_grad=False):
    torch.manual_seed(1)
    return torch.randn(2, 3, 16, 16).requires_grad_(requires_grad)


def _explain(model, images, **kwargs):
    kwargs.setdefault("methods", METHODS)
    kwargs.setdefault("layers", ("stem", "block"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", camkit.CAMHeadWarning)
        warnings.filterwarnings("ignore", message=".*target logit.*")  # BagCAMs' negative-logit notice
        return camkit.explain(model, images, **kwargs)


def _prepared_model():
    """Mixed training flags, one frozen conv, existing .grad on some parameters."""
    model = make_model()
    model.train()
    model.block[1].eval()
    model.stem[0].weight.requires_grad_(False)
    model.block[0].weight.grad = torch.full_like(model.block[0].weight, 0.25)
    model.fc.bias.grad = torch.arange(5.0)
    return model


@pytest.mark.parametrize("target", [None, 3, "topk", "callable"])
def test_successful_call_leaves_model_and_input_untouched(target):
    model = _prepared_model()
    images = _images()
    images_before = images.clone()
    version_before = images._version
    before = snapshot(model)
    grad_mode = torch.is_grad_enabled()
    target = {"topk": camkit.TopK(2), "callable": (lambda logits: logits[:, 1] - logits[:, 2])}.get(target, target)
    methods = METHODS if not callable(target) else ("gradcam", "gradcam++", "pcs")
    exp = _explain(model, images, target=target, methods=methods)
    assert len(exp.maps) > 0
    assert_unchanged(model, before)
    assert torch.is_grad_enabled() == grad_mode
    assert torch.equal(images, images_before) and images._version == version_before, "input mutated"
    assert not images.requires_grad and images.grad is None


def test_input_that_requires_grad_gets_no_grad():
    model = make_model().eval()
    images = _images(requires_grad=True)
    _explain(model, images)
    assert images.requires_grad and images.grad is None


def _raising(logits):
    raise RuntimeError("boom from the user's target function")


BAD_CALLS = {
    "class index out of range": dict(target=10 ** 6),
    "negative class index": dict(target=-7),
    "wrong number of targets": dict(target=[0, 1, 2]),
    "callable target raises": dict(target=_raising, methods=("gradcam",)),
    "callable returns the wrong shape": dict(target=lambda logits: logits, methods=("gradcam",)),
    "unknown layer": dict(layers=("stem", "no_such_layer")),
    "unknown method": dict(methods=("gradcam", "no_such_method")),
}


@pytest.mark.parametrize("bad", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_failed_call_leaves_no_trace(bad):
    model = _prepared_model()
    images = _images()
    images_before = images.clone()
    before = snapshot(model)
    with pytest.raises(Exception) as info:
        _explain(model, images, **BAD_CALLS[bad])
    assert str(info.value), "errors must say what was wrong"
    assert_unchanged(model, before)
    assert torch.is_grad_enabled()
    assert torch.equal(images, images_before)


def test_explainer_hooks_exist_only_during_a_call():
    model = _prepared_model()
    before = snapshot(model)
    explainer = camkit.Explainer(model, methods=METHODS, layers=("stem", "block"))
    assert_unchanged(model, before)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", camkit.CAMHeadWarning)
        with explainer as ex:
            ex(_images())
            assert_unchanged(model, before)
            with pytest.raises(Exception):
                ex(_images(), target=10 ** 6)
            assert_unchanged(model, before)
            ex(_images(), target=1)
    assert_unchanged(model, before)


def _maps(model, images, layers=("stem", "block"), **kwargs):
    exp = _explain(model, images, layers=layers, normalize=False, upsample=False, **kwargs)
    return exp.maps


def _assert_same_maps(got, want, what):
    assert set(got) == set(want), what
    for key in want:
        scale = want[key].abs().max().clamp(min=1e-30)
        torch.testing.assert_close(got[key] / scale, want[key] / scale, rtol=0, atol=1e-5,
                                   msg=lambda m: f"{what} {key}: {m}")


def test_frozen_parameters_give_the_same_maps():
    model = make_model().eval()
    want = _maps(model, _images())
    model.requires_grad_(False)
    got = _maps(model, _images())
    assert not any(p.requires_grad for p in model.parameters())
    _assert_same_maps(got, want, "frozen")


def test_in_place_relu_after_the_hooked_layer():
    """``block.0`` (a conv) is followed by BN and an in-place ReLU; ``stem`` ends in an in-place ReLU
    that the next conv reads; ``stem.2`` is the in-place ReLU itself and ``block.1`` a BN whose
    output an in-place ReLU overwrites. In-place and out-of-place models must give the same maps,
    equal to the float64 reference (which never lets downstream ops touch the captured tensor)."""
    inplace, plain = make_model(inplace=True).eval(), make_model(inplace=False).eval()
    layers = ("stem", "block.0", "stem.2", "block.1")
    methods = ("gradcam", "gradcam++", "pcs", "bagcams")
    images = _images()
    got = _maps(inplace, images, layers=layers, methods=methods, target=2)
    _assert_same_maps(got, _maps(plain, images, layers=layers, methods=methods, target=2), "in-place vs not")
    for layer in layers:
        want = ref.reference_raw_maps(plain, images, layer, [[2], [2]], methods)
        for method in methods:
            _assert_same_maps({0: got[(method, layer)]}, {0: want[method][:, 0].float()}, f"reference {method}@{layer}")


def test_resnet_in_place_residual_add_after_the_hooked_layer():
    """torchvision's BasicBlock does ``out = bn2(out); out += identity; out = relu(out)`` in place,
    so the captured ``layer3.1.bn2`` output is modified right after the hook."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    images = torch.randn(1, 3, 32, 32)
    methods = ("gradcam", "gradcam++", "pcs", "bagcams")
    got = _maps(model, images, layers=("layer3.1.bn2",), methods=methods)
    target = int(model(images).argmax())
    want = ref.reference_raw_maps(model, images, "layer3.1.bn2", [[target]], methods)
    for method in methods:
        _assert_same_maps({0: got[(method, "layer3.1.bn2")]}, {0: want[method][:, 0].float()}, method)


def test_works_under_no_grad():
    model = make_model().eval()
    want = _maps(model, _images())
    before = snapshot(model)
    with torch.no_grad():
        got = _maps(model, _images())
        assert not torch.is_grad_enabled()
    _assert_same_maps(got, want, "no_grad")
    assert_unchanged(model, before)


def test_inference_mode_raises_a_clear_error():
    model = make_model().eval()
    before = snapshot(model)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="(?i)inference"):
            _explain(model, _images())
    assert_unchanged(model, before)


@pytest.mark.parametrize("methods,backwards", [(("cam", "gradcam", "gradcam++", "pcs"), 1), (METHODS, 2)])
def test_one_forward_and_one_backward_per_call(methods, backwards):
    """Issue 2, "Passes": one forward and one backward to all layers; a second (guided) backward
    only when BagCAMs is requested. Counted from the model's side: a forward hook on the root
    module counts forwards and puts a tensor hook on the logits, which fires once per backward."""
    model = make_model().eval()
    forwards, backward_passes = [], []

    def count(_module, _inputs, output):
        forwards.append(None)
        if output.requires_grad:
            output.register_hook(lambda grad: backward_passes.append(None))

    handle = model.register_forward_hook(count)
    try:
        _explain(model, _images(), methods=methods, layers=("stem", "block"), target=camkit.TopK(2))
    finally:
        handle.remove()
    assert len(forwards) == 1, f"{len(forwards)} forward passes"
    assert len(backward_passes) == backwards, f"{len(backward_passes)} backward passes for {methods}"


def test_train_mode_model_is_explained_deterministically_in_eval_mode():
    """Dropout and BN in a train-mode model: the engine runs it in eval mode (its default), so two
    calls agree with each other and with the same model put in eval mode by the user."""
    model = make_model()
    model.drop.p = 0.9
    model.train()
    first, second = _maps(model, _images()), _maps(model, _images())
    assert model.training and model.drop.training
    want = _maps(make_model().eval(), _images())
    _assert_same_maps(first, want, "train-mode model, first call")
    _assert_same_maps(second, want, "train-mode model, second call")


def test_explainer_reuse_and_module_layers_equal_explain():
    model = make_model().eval()
    images = _images()
    want = _maps(model, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", camkit.CAMHeadWarning)
        explainer = camkit.Explainer(model, methods=METHODS, layers=("stem", "block"))
        for _ in range(2):
            _assert_same_maps(explainer(images, normalize=False, upsample=False).maps, want, "Explainer")
        by_module = camkit.explain(model, images, methods=METHODS, layers=(model.stem, model.block),
                                   normalize=False, upsample=False)
    assert list(by_module.layers) == ["stem", "block"]
    _assert_same_maps(by_module.maps, want, "layers given as modules")

