"""Figure labels that say why a layer was chosen (issue 18: "last conv block (_swish)", not "_swish")."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

import camkit  # noqa: E402
from camkit.layers import _ordinal  # noqa: E402
from camkit.viz import explanation_grid  # noqa: E402


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval(), torch.randn(1, 3, 64, 64)


@pytest.mark.parametrize("rank, end, want", [
    (1, "deepest", "deepest"), (2, "deepest", "2nd deepest"), (3, "deepest", "3rd deepest"),
    (4, "deepest", "4th deepest"), (11, "deepest", "11th deepest"), (12, "shallowest", "12th shallowest"),
    (13, "deepest", "13th deepest"), (21, "deepest", "21st deepest"), (22, "deepest", "22nd deepest"),
    (23, "deepest", "23rd deepest"), (2, "shallowest", "2nd shallowest")])
def test_ordinals(rank, end, want):
    assert _ordinal(rank, end) == want


@pytest.mark.parametrize("layers, want", [
    (None, {"layer4": "last spatial layer (layer4)"}),
    ("stage:-1", {"layer4": "deepest stage (layer4)"}),
    ("stage:-2", {"layer3": "2nd deepest stage (layer3)"}),
    ("last-stages:3", {"layer2": "3rd deepest stage (layer2)", "layer3": "2nd deepest stage (layer3)",
                       "layer4": "deepest stage (layer4)"}),
    ("layer3", {}),                      # a layer the user named is labelled by its name
    (["layer2", "layer4"], {}),
])
def test_an_explanation_says_why_each_layer_was_chosen(resnet, layers, want):
    model, x = resnet
    assert camkit.explain(model, x, methods="gradcam", layers=layers).layer_labels == want


def test_the_shallowest_stage_is_counted_from_the_shallow_end(resnet):
    model, x = resnet
    exp = camkit.explain(model, x, layers="stage:1")
    (key,) = exp.layers
    assert exp.layer_labels == {key: f"2nd shallowest stage ({key})"}


def test_the_figure_rows_carry_the_label_and_a_given_label_wins(resnet):
    model, x = resnet
    exp = camkit.explain(model, x, layers="last-stages:2")
    figure = explanation_grid(exp)
    ylabels = [ax.get_ylabel() for ax in figure.axes[:-1] if ax.get_ylabel()]   # [-1]: the colourbar
    assert ylabels == ["2nd deepest stage (layer3)", "deepest stage (layer4)"]
    figure = explanation_grid(exp, layer_labels={"layer4": "my label"})
    assert [ax.get_ylabel() for ax in figure.axes[:-1] if ax.get_ylabel()] == ["2nd deepest stage (layer3)", "my label"]


def test_aug_smooth_keeps_the_labels(resnet):
    model, x = resnet
    exp = camkit.explain(model, x, layers="stage:-2", aug_smooth=True)
    assert exp.layer_labels == {"layer3": "2nd deepest stage (layer3)"}
