"""Bad arguments to camkit.explain, camkit.Explainer and camkit.list_layers: a clear error, no trace.

Every row is ``(arguments, error type, message fragment)``. After each error the model and the input
are checked against their snapshot (:mod:`untouched`: hooks of every module and the global ones,
state_dict bit for bit, training flags, ``requires_grad``, ``.grad`` and parameter tensor hooks; the
input's values, version, ``requires_grad``, ``.grad`` and hooks), and the grad mode. Rows marked
``EARLY`` must fail before the model runs at all (so before any hook is attached): a counting
forward pre-hook on the model, registered before the snapshot, sees no call.
"""
import dataclasses
import warnings
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

import camkit
from untouched import assert_tensor_unchanged, assert_unchanged, snapshot, tensor_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

EARLY, LATE = True, False     # must fail before any forward / may fail after the forward


class BNNet(nn.Module):
    """conv-BN-ReLU (stem, 8x16x16) -> conv-ReLU (block, 16x8x8) -> GAP -> dropout -> Linear(16, 5)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 5)
        with torch.no_grad():
            self.stem[1].running_mean.uniform_(-0.2, 0.2)

    def forward(self, x):
        return self.fc(self.drop(self.block(self.stem(x)).mean(dim=(2, 3))))


@dataclasses.dataclass
class Output:
    scores: torch.Tensor
    aux: torch.Tensor


Pair = namedtuple("Pair", ["scores", "aux"])


class Wrapped(BNNet):
    """BNNet with its logits returned as a dict, a tuple, a dataclass or a named tuple."""

    def __init__(self, form):
        super().__init__()
        self.form = form

    def forward(self, x):
        logits, aux = super().forward(x), torch.zeros(())
        return {"dict": lambda: {"scores": logits, "aux": aux}, "tuple": lambda: (logits, aux),
                "dataclass": lambda: Output(logits, aux), "namedtuple": lambda: Pair(logits, aux)}[self.form]()


def _prepared(model):
    """Mixed training flags, a frozen conv and an existing ``.grad``, so a stray change would show."""
    model.train()
    model.stem[1].eval()
    model.stem[0].weight.requires_grad_(False)
    model.fc.bias.grad = torch.arange(5.0)
    return model


def _images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 16, 16)


def _photo():
    return np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def explain(images=None, **kwargs):
    """``camkit.explain(model, images, **kwargs)`` with ``layers="block"`` unless given; ``images``
    replaces the test's images."""
    kwargs.setdefault("layers", "block")
    return lambda model, given: camkit.explain(model, given if images is None else images, **kwargs)


def explainer(call=None, **options):
    """``camkit.Explainer(model, **options)``, then called on the images with ``call`` when given."""
    options.setdefault("layers", "block")

    def run(model, images):
        made = camkit.Explainer(model, **options)
        if call is not None:
            made(images, **call)
    return run


def list_layers(image=None, model=None):
    return lambda m, images: camkit.list_layers(m if model is None else model, images if image is None else image)


def _different_sizes(image):
    _different_sizes.calls = getattr(_different_sizes, "calls", 0) + 1
    return torch.zeros(3, 8, 8 + _different_sizes.calls % 2)


CASES = {
    # -- images
    "4-channel batch of 2, auto layer": (explain(images=torch.zeros(2, 4, 16, 16), layers=None),
                                         RuntimeError, "(2, 4, 16, 16)", LATE),
    "4-channel batch of 2, named layer": (explain(images=torch.zeros(2, 4, 16, 16)),
                                          RuntimeError, "(2, 4, 16, 16)", LATE),
    "empty batch": (explain(images=torch.zeros(0, 3, 16, 16)), ValueError, "at least one image", EARLY),
    "NaN image": (explain(images=torch.full((2, 3, 16, 16), float("nan"))), ValueError, "NaN", EARLY),
    "2-D tensor": (explain(images=torch.zeros(16, 16)), ValueError, "(B, C, H, W)", EARLY),
    "preprocess not callable": (explainer(preprocess=224), TypeError, "preprocess must be a callable", EARLY),
    "preprocess returns an array": (explainer(preprocess=lambda image: np.zeros((3, 8, 8), np.float32),
                                              call={}), TypeError, "preprocess returned ndarray",
                                    EARLY),
    "preprocess returns (H, W, 3)": (explainer(preprocess=lambda image: torch.zeros(8, 8, 3, dtype=torch.uint8),
                                               call={}), TypeError, "(C, H, W) float", EARLY),
    "preprocess returns two sizes": (explainer(preprocess=_different_sizes, call={}),
                                     ValueError, "different shapes", EARLY),
    # -- methods
    "methods an int": (explain(methods=123), TypeError, "method name, a list of names, or None", EARLY),
    "methods a set": (explain(methods={"gradcam"}), TypeError, "got set", EARLY),
    "methods holds None": (explain(methods=["gradcam", None]), TypeError, "named by strings", EARLY),
    "methods a comma string": (explain(methods="gradcam,pcs"), ValueError, "['gradcam', 'pcs']", EARLY),
    "methods empty": (explain(methods=[]), ValueError, "empty", EARLY),
    "call methods empty": (explainer(call=dict(methods=[])), ValueError, "empty", EARLY),
    "methods misspelt": (explain(methods="gradcam+"), ValueError, "gradcam++", EARLY),
    "methods twice by an alias": (explain(methods=("pcs", "hirescam")), ValueError, "twice", EARLY),
    # -- layers
    "layer an int": (explain(layers=4), camkit.LayerError, "module name", EARLY),
    "layers hold None": (explain(layers=("stem", None)), camkit.LayerError, "layers must be", EARLY),
    "layer call index not a number": (explain(layers="stem@x"), camkit.LayerError, "call index", EARLY),
    "layer misspelt": (explain(layers="blok"), camkit.LayerError, "block", LATE),  # lists layers: a probe
    "layer call index out of range": (explain(layers="stem@5"), camkit.LayerError, "out of range", LATE),
    "layer not spatial": (explain(layers="fc"), camkit.LayerError, "(B, C, h, w)", LATE),
    "last-stages:0": (explain(layers="last-stages:0"), camkit.LayerError, "positive integer", EARLY),
    "last-stages:two": (explain(layers="last-stages:two"), camkit.LayerError, "'last-stages:2'", EARLY),
    "stage:x": (explain(layers="stage:x"), camkit.LayerError, "'stage:-2'", EARLY),
    "stage:-3 of two stages": (explain(layers="stage:-3"), camkit.LayerError, "2 spatial resolution(s)", LATE),
    # -- preset and fuse
    "preset unknown": (explain(preset="best", layers=None), ValueError, "'recommended', 'classic'", EARLY),
    "preset not a string": (explain(preset=1, layers=None), ValueError, "unknown preset 1", EARLY),
    "preset with layers": (explain(preset="recommended"), ValueError, "layers='block', not both", EARLY),
    "preset with methods": (explain(preset="recommended", methods="pcs", layers=None), ValueError,
                            "methods='pcs', not both", EARLY),
    "preset with fuse": (explain(preset="classic", fuse="mean", layers=None), ValueError, "fuse='mean'", EARLY),
    "fuse unknown rule": (explainer(fuse="sum"), ValueError, "'max', 'mean', 'layercam'", EARLY),
    "fuse without upsample": (explain(fuse="max", upsample=False), ValueError, "upsample=True", EARLY),
    # -- target
    "target (B, 0)": (explain(target=torch.zeros(2, 0, dtype=torch.long)), ValueError, "no class to explain", EARLY),
    "target empty list": (explain(target=[]), ValueError, "no class to explain", EARLY),
    "target float": (explain(target=2.0), TypeError, "float", EARLY),
    "target bool": (explain(target=True), TypeError, "bool", EARLY),
    "target str": (explain(target="cat"), TypeError, "class names are unknown", EARLY),
    "target bool tensor": (explain(target=torch.tensor([True, False])), TypeError, "integers", EARLY),
    "target float tensor": (explain(target=torch.tensor([0.0, 1.0])), TypeError, "integers", EARLY),
    "target negative": (explain(target=-1), IndexError, "negative", EARLY),
    "target negative in a list": (explain(target=[0, -3]), IndexError, "-3", EARLY),
    "target ragged list": (explain(target=[[0, 1], [2]]), TypeError, "cannot read target", EARLY),
    "target wrong batch size": (explain(target=[0, 1, 2]), ValueError, "batch has 2 images", EARLY),
    "target 3-D": (explain(target=torch.zeros(2, 1, 1, dtype=torch.long)), ValueError, "(2, T)", EARLY),
    "TopK(True)": (lambda model, images: explain(target=camkit.TopK(True))(model, images), ValueError,
                   "positive int", EARLY),
    "TopK(-2)": (lambda model, images: explain(target=camkit.TopK(-2))(model, images), ValueError,
                 "positive int", EARLY),
    "TopK(2.0)": (lambda model, images: explain(target=camkit.TopK(2.0))(model, images), ValueError,
                  "positive int", EARLY),
    "TopK(k > classes)": (explain(target=camkit.TopK(6)), ValueError, "k <= 5", LATE),
    "target class out of range": (explain(target=99), IndexError, "0..4", LATE),
    "callable target of the wrong shape": (explain(target=lambda logits: logits), ValueError, "(B,)", LATE),
    "cam with a callable target": (explain(methods="cam", target=lambda logits: logits[:, 0]), ValueError,
                                   "callable score", LATE),
    # -- output
    "output a float": (explainer(output=1.5), TypeError, "output must be None", EARLY),
    "output a bool": (explainer(output=True), TypeError, "output must be None", EARLY),
    "output key on a tensor output": (explain(output="logits"), TypeError, "drop output=", LATE),
    "output index on a tensor output": (explain(output=0), TypeError, "drop output=", LATE),
    "dict output without adapter": ("dict", explain(), TypeError, "output=KEY", LATE),
    "dict output, key missing": ("dict", explain(output="logits"), ValueError, "['scores', 'aux']", LATE),
    "tuple output, index out of range": ("tuple", explain(output=5), ValueError, "indices 0..1", LATE),
    "tuple output, key": ("tuple", explain(output="scores"), TypeError, "tuple model output", LATE),
    "dataclass output without adapter": ("dataclass", explain(), TypeError, "output=FIELD", LATE),
    "namedtuple output without adapter": ("namedtuple", explain(), TypeError, "output=FIELD", LATE),
    "dataclass output, field missing": ("dataclass", explain(output="logits"), ValueError,
                                        "['scores', 'aux']", LATE),
    "dataclass output, index": ("dataclass", explain(output=0), TypeError, "an index", LATE),
    "namedtuple output, field missing": ("namedtuple", explain(output="logits"), ValueError, "fields", LATE),
    "output callable of the wrong shape": (explain(output=lambda out: out.sum(dim=1)), ValueError,
                                           "from the output= callable", LATE),
    "output callable returning no logits": (explain(output=lambda out: out[:, :0]), ValueError, "K >= 1", LATE),
    # -- head
    "head an int": (explainer(head=5), TypeError, "head must be None", EARLY),
    "head a 3x3 conv": (explainer(head=nn.Conv2d(16, 5, 3)), camkit.HeadNotFoundError, "1x1", EARLY),
    "head a 1-D tensor": (explainer(head=torch.zeros(5)), camkit.HeadNotFoundError, "(K, C)", EARLY),
    "head name misspelt": (explainer(head="fcc"), camkit.HeadNotFoundError, "close matches: fc", EARLY),
    "head tensor of the wrong shape": (explain(methods="cam", head=torch.zeros(5, 7)), camkit.HeadNotFoundError,
                                       "expected (5, 16)", LATE),
    # -- method_options
    "method_options a list": (explainer(method_options=[("cam", {})]), TypeError, "must be a dict", EARLY),
    "method_options value not a dict": (explainer(method_options={"cam": True}), TypeError, "dict of options",
                                        EARLY),
    "method_options unknown option": (explainer(method_options={"cam": {"clamp": True}}), ValueError,
                                      "clamp_negative_weights", EARLY),
    "method_options option for an option-less method": (explainer(method_options={"gradcam": {"x": 1}}),
                                                        ValueError, "no options", EARLY),
    "method_options unknown method": (explainer(method_options={"camm": {}}), ValueError, "camm", EARLY),
    "method_options twice by an alias": (explainer(method_options={"pcs": {}, "hirescam": {}}), ValueError,
                                         "twice", EARLY),
    # -- other Explainer arguments
    "model not a module": (lambda model, images: camkit.Explainer("resnet18"), TypeError, "nn.Module", EARLY),
    "guided_modules a string": (explainer(guided_modules="relu"), TypeError, "guided_modules", EARLY),
    # -- list_layers
    "list_layers model not a module": (list_layers(model="resnet18"), TypeError, "nn.Module", EARLY),
    "list_layers 2-D tensor": (list_layers(torch.zeros(16, 16)), ValueError, "(B, C, H, W)", EARLY),
    "list_layers empty batch": (list_layers(torch.zeros(0, 3, 16, 16)), ValueError, "at least one image", EARLY),
    "list_layers 4-channel batch of 2": (list_layers(torch.zeros(2, 4, 16, 16)), RuntimeError,
                                         "(2, 4, 16, 16)", LATE),
}


def _case(name):
    row = CASES[name]
    return ("plain",) + row if len(row) == 4 else row


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_bad_argument_raises_a_clear_error_and_changes_nothing(name):
    form, call, error, words, early = _case(name)
    model = _prepared(BNNet() if form == "plain" else Wrapped(form))
    images = _images()
    forwards = []
    counter = model.register_forward_pre_hook(lambda module, inputs: forwards.append(None))
    try:
        before, images_before = snapshot(model), tensor_snapshot(images)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", camkit.CAMHeadWarning)
            with pytest.raises(error) as info:
                call(model, [_photo(), _photo()] if "preprocess" in name else images)
        assert words in str(info.value), f"the message does not say {words!r}: {info.value}"
        assert_unchanged(model, before)
        assert_tensor_unchanged(images, images_before)
        assert torch.is_grad_enabled()
        if early:
            assert not forwards, f"the model ran {len(forwards)} time(s) before the error"
    finally:
        counter.remove()
