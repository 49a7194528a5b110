"""The public surface of camkit.explain: input forms, output adapters, shapes, layer choice and errors.

Numbers are checked against other routes to the same quantity (the preprocessed tensor path, a
plain model, an explicit layer, per-class int targets); errors must name what was wrong.
"""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import camkit

pytestmark = pytest.mark.filterwarnings("ignore::camkit.CAMHeadWarning")

METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")


class SmallNet(nn.Module):
    """conv(3->4) -> ReLU -> conv(4->6) -> ReLU -> GAP -> Linear(6->5)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class DictOutput(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"aux": torch.zeros(()), "logits": self.net(x)}


class TupleOutput(DictOutput):
    def forward(self, x):
        return self.net(x), torch.zeros(())


@pytest.fixture
def net():
    return SmallNet().eval()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, 12, 12)


def _same(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=lambda m: f"{key}: {m}")


# ----------------------------------------------------------------------------------------- inputs
def _photo(seed=0, size=(20, 30)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size + (3,), dtype=np.uint8)


def test_pil_array_path_and_list_inputs_equal_the_preprocessed_tensor(net, tmp_path):
    preprocess = camkit.Preprocess(16)
    arrays = [_photo(0), _photo(1)]
    paths = []
    for k, array in enumerate(arrays):
        paths.append(tmp_path / f"img{k}.png")
        Image.fromarray(array).save(paths[-1])
    tensor = torch.stack([preprocess(a) for a in arrays])
    explainer = camkit.Explainer(net, methods=METHODS, layers="relu2", preprocess=preprocess)
    want = explainer(tensor).maps
    _same(explainer(arrays).maps, want)
    _same(explainer([Image.fromarray(a) for a in arrays]).maps, want)
    _same(explainer([str(p) for p in paths]).maps, want)
    single = explainer(paths[0])
    assert single.maps[("gradcam", "relu2")].shape == (1, 16, 16)
    torch.testing.assert_close(single.maps[("gradcam", "relu2")][0], want[("gradcam", "relu2")][0])


def test_unbatched_tensor_is_a_batch_of_one(net, x):
    one = camkit.explain(net, x[0], methods=METHODS, layers="relu2")
    batch = camkit.explain(net, x[:1], methods=METHODS, layers="relu2")
    _same(one.maps, batch.maps)
    assert one.logits.shape == (1, 5) and one.targets.shape == (1,)


@pytest.mark.parametrize("bad, error, words", [
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN"),
    (torch.full((1, 3, 8, 8), float("inf")), ValueError, "infinite"),
    (torch.zeros(8, 8), ValueError, "(B, C, H, W)"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.long), TypeError, "floating point"),
    (np.zeros((8, 8, 3)), TypeError, "uint8"),
    ("/no/such/image.png", FileNotFoundError, "/no/such/image.png"),
    (torch.zeros(1, 4, 8, 8), RuntimeError, "(1, 4, 8, 8)"),
])
def test_bad_images_raise_a_clear_error(net, bad, error, words):
    with pytest.raises(error) as info:
        camkit.explain(net, bad, methods=METHODS, layers="relu2")
    assert words in str(info.value)


# ------------------------------------------------------------------------------------------ output
def test_dict_and_tuple_outputs_need_an_adapter_and_then_equal_the_plain_model(net, x):
    want = camkit.explain(net, x, methods=METHODS, layers="relu2").maps
    for wrapper, key, words in ((DictOutput(net), "logits", "output=KEY"), (TupleOutput(net), 0, "output=INDEX")):
        with pytest.raises(TypeError, match=words):
            camkit.explain(wrapper, x, methods="gradcam", layers="net.relu2")
        got = camkit.explain(wrapper, x, methods=METHODS, layers="net.relu2", output=key).maps
        _same({(m, "relu2"): v for (m, _), v in got.items()}, want)
        by_callable = camkit.explain(wrapper, x, methods=METHODS, layers="net.relu2",
                                     output=lambda out: out[key]).maps
        _same(by_callable, got)


def test_logits_of_the_wrong_shape_are_refused(net, x):
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).reshape(-1)

    with pytest.raises((TypeError, ValueError), match=r"\(B, K\)"):
        camkit.explain(Flat(), x, methods="gradcam", layers="net.relu2")


# ------------------------------------------------------------------------------------------ shapes
def test_shapes_and_ranges(net, x):
    exp = camkit.explain(net, x, methods=METHODS, layers=("relu1", "relu2"))
    assert exp.logits.shape == (2, 5) and exp.targets.dtype == torch.long
    assert torch.equal(exp.targets, exp.logits.argmax(1))
    assert exp.methods == list(METHODS) and exp.layers == ["relu1", "relu2"]
    for (method, layer), m in exp.maps.items():
        if method == "cam" and layer == "relu1":
            raise AssertionError("CAM has no head at relu1 (4 channels) and must be skipped")
        assert m.shape == (2, 12, 12) and m.dtype == torch.float32
        assert float(m.min()) >= 0 and float(m.max()) <= 1
    assert ("cam", "relu2") in exp.maps
    assert any("relu1" in note for note in exp.notes)
    raw = camkit.explain(net, x, methods="gradcam", layers=("relu1", "relu2"), upsample=False, normalize=False)
    assert raw.maps[("gradcam", "relu1")].shape == (2, 12, 12)
    assert raw.maps[("gradcam", "relu2")].shape == (2, 6, 6)


def test_cam_skipped_with_a_warning_where_the_head_does_not_fit(net, x):
    with pytest.warns(camkit.CAMHeadWarning, match="relu1"):
        exp = camkit.explain(net, x, methods="cam", layers=("relu1", "relu2"))
    assert list(exp.maps) == [("cam", "relu2")] and "relu1" in exp.notes[0]


def test_topk_equals_per_class_int_targets(net, x):
    exp = camkit.explain(net, x, methods=METHODS, layers="relu2", target=camkit.TopK(3), normalize=False)
    order = exp.logits.argsort(dim=1, descending=True)[:, :3]
    assert exp.targets.shape == (2, 3) and torch.equal(exp.targets, order)
    for rank in range(3):
        single = camkit.explain(net, x, methods=METHODS, layers="relu2", target=order[:, rank].tolist(),
                                normalize=False)
        for key, maps in exp.maps.items():
            assert maps.shape == (2, 3, 12, 12)
            torch.testing.assert_close(maps[:, rank], single.maps[key], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------- layer choice
def test_layers_none_picks_the_last_spatial_layer_and_says_so(net, x):
    auto = camkit.explain(net, x, methods=METHODS)
    assert auto.layers == ["relu2"]
    _same(auto.maps, camkit.explain(net, x, methods=METHODS, layers="relu2").maps)
    assert camkit.list_layers(net, x)[-1] == ("relu2", (1, 6, 6, 6))


def test_layers_given_as_modules_equal_names(net, x):
    by_module = camkit.explain(net, x, methods=METHODS, layers=[net.relu1, net.relu2])
    by_name = camkit.explain(net, x, methods=METHODS, layers=["relu1", "relu2"])
    _same(by_module.maps, by_name.maps)


@pytest.mark.parametrize("layers, words", [
    ("relu3", "relu2"),            # a close match is suggested
    ("fc", "(B, C, h, w)"),        # not spatial
    ([], "empty"),
    (("relu2", "relu2"), "more than once"),
    ("relu2@5", "out of range"),
])
def test_bad_layers_raise_layer_error(net, x, layers, words):
    with pytest.raises(camkit.LayerError) as info:
        camkit.explain(net, x, methods="gradcam", layers=layers)
    assert words in str(info.value)


def test_cam_without_a_linear_head_raises(x):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with pytest.raises(camkit.HeadNotFoundError, match="gradcam"):
        camkit.explain(model, x, methods="cam", layers="1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert camkit.explain(model, x, methods="gradcam", layers="1").maps[("gradcam", "1")].shape == (2, 12, 12)


def test_unknown_method_lists_the_known_ones(net, x):
    with pytest.raises(ValueError) as info:
        camkit.explain(net, x, methods="gradcam+", layers="relu2")
    assert "gradcam++" in str(info.value)


def test_methods_are_registered_with_descriptions():
    assert set(METHODS) | {"causal"} <= set(camkit.list_methods())
    described = {method.name: method for method in camkit.describe_methods()}
    assert all(described[name].description and described[name].reference for name in METHODS)


class SharedActivation(nn.Module):
    """One ReLU module reused after each of three convs; the last call feeds GAP + linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.convs = nn.ModuleList([nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1) for i in range(3)])
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        for conv in self.convs:
            x = self.act(conv(x))
        return self.fc(x.mean(dim=(2, 3)))


def _records_grad_mode(model):
    """Hooks noting, per forward, whether each conv's output was recorded by autograd."""
    seen = []
    handles = [conv.register_forward_hook(lambda m, i, out: seen.append(out.requires_grad))
               for conv in model.convs]
    return seen, handles


def test_last_call_capture_records_autograd_only_from_the_last_call(x):
    """Once the calls per forward are known (the auto-layer probe, or an earlier call of the same
    Explainer), a module captured at its last call starts autograd there, not at its first call."""
    model = SharedActivation().eval()
    seen, handles = _records_grad_mode(model)
    try:
        explainer = camkit.Explainer(model, methods=METHODS, layers="act")
        first = explainer(x, normalize=False)
        assert seen == [False, True, True]          # counts unknown: every call is a candidate
        seen.clear()
        again = explainer(x, normalize=False)
        assert seen == [False, False, False]        # only act's last call starts the graph
        seen.clear()
        auto = camkit.explain(model, x, methods=METHODS, normalize=False)
        assert seen[-3:] == [False, False, False] and auto.layers == ["act"]
    finally:
        for handle in handles:
            handle.remove()
    explicit = camkit.explain(model, x, methods=METHODS, layers="act@2", normalize=False)
    for result in (first, again, auto):
        _same({(m, "act@2"): v for (m, _), v in result.maps.items()}, explicit.maps)


def test_a_forward_whose_call_count_changes_is_captured_again(x):
    class Repeats(SharedActivation):
        repeats = 3

        def forward(self, x):
            for conv in self.convs[:self.repeats]:
                x = self.act(conv(x))
            return self.fc(x.mean(dim=(2, 3)))

    model = Repeats().eval()
    explainer = camkit.Explainer(model, methods=METHODS, layers="act")
    explainer(x)
    model.repeats = 2                               # now "act" runs twice: its last call is the second
    got = explainer(x, normalize=False)
    want = camkit.explain(model, x, methods=METHODS, layers="act@1", normalize=False)
    _same({(m, "act@1"): v for (m, _), v in got.maps.items()}, want.maps)


def test_bagcams_without_guided_modules_says_so(x):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 3), nn.GELU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    exp = camkit.explain(model, x, methods="bagcams", layers="1")
    assert any("not guided" in note for note in exp.notes)
    guided = camkit.explain(SmallNet().eval(), x, methods="bagcams", layers="relu1")
    assert not any("not guided" in note for note in guided.notes)


def test_method_options_accept_aliases_and_refuse_unknown_methods(net, x):
    by_alias = camkit.explain(net, x, methods="pcs", layers="relu2", method_options={"hirescam": {}})
    assert ("pcs", "relu2") in by_alias.maps
    with pytest.raises(ValueError, match="camm"):
        camkit.explain(net, x, methods="cam", layers="relu2", method_options={"camm": {"clamp_negative_weights": True}})


def test_list_layers_takes_a_pil_image_and_layers_must_be_names_or_modules(net, x, tmp_path):
    names = [name for name, _ in camkit.list_layers(net, Image.fromarray(_photo(3)))]
    assert names == ["conv1", "relu1", "conv2", "relu2"]
    with pytest.raises(camkit.LayerError, match="module name"):
        camkit.explain(net, x, methods="gradcam", layers=4)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        camkit.explain(net, str(not_an_image), methods="gradcam", layers="relu2")


def test_head_by_module_name(net, x):
    by_name = camkit.explain(net, x, methods="cam", layers="relu2", head="fc", normalize=False)
    found = camkit.explain(net, x, methods="cam", layers="relu2", normalize=False)
    _same(by_name.maps, found.maps)
    with pytest.raises(camkit.HeadNotFoundError, match="close matches: fc"):
        camkit.Explainer(net, head="fcc")
    with pytest.raises(camkit.HeadNotFoundError, match="ReLU"):
        camkit.Explainer(net, head="relu2")


def test_list_of_tensors_and_single_value_normalisation(net, x):
    listed = camkit.explain(net, [x[0], x[1]], methods=METHODS, layers="relu2")
    _same(listed.maps, camkit.explain(net, x, methods=METHODS, layers="relu2").maps)
    with pytest.raises(ValueError, match="one shape"):
        camkit.explain(net, [x[0], x[0, :, :8]], methods="gradcam", layers="relu2")
    assert camkit.Preprocess(mean=(0.5,), std=0.5).mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="1 or 3"):
        camkit.Preprocess(mean=(0.5, 0.5))


def test_negative_scores_are_flagged_for_callable_targets_too(net, x):
    with pytest.warns(RuntimeWarning, match="<= 0"):
        exp = camkit.explain(net, x, methods="bagcams", layers="relu2", target=lambda logits: -logits.exp()[:, 0])
    assert exp.negative_target_logit.tolist() == [True, True] and exp.targets is None
    assert any("<= 0" in note for note in exp.notes)


# ------------------------------------------------------------------ the standard set (methods=None)
def test_methods_none_runs_the_standard_set(net, x):
    from camkit.methods import STANDARD_METHODS

    standard = camkit.explain(net, x, methods=None, layers="relu2")
    explicit = camkit.explain(net, x, methods=STANDARD_METHODS, layers="relu2")
    assert standard.methods == list(STANDARD_METHODS)
    assert not any("CAM skipped" in note for note in standard.notes)
    _same(standard.maps, explicit.maps)


def test_methods_none_skips_cam_where_the_head_is_not_one_linear_layer():
    """torchvision's MobileNetV3 head is Linear-Hardswish-Dropout-Linear: CAM has no (K, C) matrix.
    From the standard set it is skipped with a warning and a note; named explicitly it raises."""
    import torchvision
    from camkit.methods import STANDARD_METHODS

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=5).eval()
    images = torch.randn(2, 3, 64, 64)
    others = [m for m in STANDARD_METHODS if m != "cam"]
    with pytest.warns(camkit.CAMHeadWarning, match="CAM skipped"):
        exp = camkit.explain(model, images, methods=None)
    assert exp.methods == others and sorted(m for m, _ in exp.maps) == sorted(others)
    assert any("CAM skipped" in note for note in exp.notes)
    _same(exp.maps, camkit.explain(model, images, methods=others).maps)
    with pytest.raises(camkit.HeadNotFoundError, match="head="):
        camkit.explain(model, images, methods=STANDARD_METHODS)


def test_methods_none_skips_cam_for_a_callable_target(net, x):
    score = lambda logits: logits[:, 1] - logits[:, 0]  # noqa: E731
    with pytest.warns(camkit.CAMHeadWarning, match="callable score"):
        exp = camkit.explain(net, x, methods=None, layers="relu2", target=score)
    assert "cam" not in exp.methods and ("gradcam", "relu2") in exp.maps
    with pytest.raises(ValueError, match="callable score"):
        camkit.Explainer(net, methods=None, layers="relu2")(x, target=score, methods=("cam", "gradcam"))


# ------------------------------------------------------------------ output forms and target forms
def test_dataclass_and_named_tuple_outputs_by_field_name(net, x):
    import dataclasses
    from collections import namedtuple

    @dataclasses.dataclass
    class Result:
        logits: torch.Tensor

    Named = namedtuple("Named", ["aux", "logits"])

    class Returns(nn.Module):
        def __init__(self, wrap):
            super().__init__()
            self.net, self.wrap = net, wrap

        def forward(self, images):
            return self.wrap(self.net(images))

    want = camkit.explain(net, x, methods=METHODS, layers="relu2").maps
    for wrap in (Result, lambda logits: Named(torch.zeros(()), logits)):
        got = camkit.explain(Returns(wrap), x, methods=METHODS, layers="net.relu2", output="logits").maps
        _same({(m, "relu2"): v for (m, _), v in got.items()}, want)


def test_numpy_integers_are_class_indices_and_top_k(net, x):
    want = camkit.explain(net, x, methods="gradcam", layers="relu2", target=camkit.TopK(2)).maps
    _same(camkit.explain(net, x, methods="gradcam", layers="relu2", target=camkit.TopK(np.int64(2))).maps, want)
    by_list = camkit.explain(net, x, methods="gradcam", layers="relu2", target=[3, 1]).maps
    _same(camkit.explain(net, x, methods="gradcam", layers="relu2", target=np.array([3, 1])).maps, by_list)
