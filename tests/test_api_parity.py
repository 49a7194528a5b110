"""The Python API matches the CLI: class-name targets, methods="all", list_methods details, short
reprs, notebook PNGs, figures of every image, and fit_context on camkit's own uint8 datasets."""
import numpy as np
import pytest
import torch
from torch import nn

import camkit

NAMES = ["cat", "dog", "Tabby", "fish"]


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).eval()


def images(count=2):
    return torch.randn(count, 3, 16, 24, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("target, expected", [("tabby", [2, 2]), ("TABBY ", [2, 2]), (["dog", "fish"], [1, 3]),
                                              (("cat", "Tabby"), [0, 2])])
def test_class_name_targets_give_the_same_maps_as_their_indices(target, expected):
    model = tiny_model()
    by_name = camkit.explain(model, images(), layers="3", target=target, class_names=NAMES)
    by_index = camkit.explain(model, images(), layers="3", target=expected)
    assert by_name.targets.tolist() == expected
    torch.testing.assert_close(by_name["gradcam"], by_index["gradcam"], rtol=0, atol=0)


@pytest.mark.parametrize("target, class_names, error, fragment", [
    ("tabbi", NAMES, ValueError, "close matches: 'tabby'"),
    ("zebra", NAMES, ValueError, "no close match"),
    (["dog", "cta"], NAMES, ValueError, "unknown class name 'cta'"),
    ("tabby", None, TypeError, "pass class_names="),
    (["dog", "cat", "fish"], NAMES, ValueError, "the batch has 2 images"),
])
def test_bad_class_name_targets_are_refused_before_any_hook(target, class_names, error, fragment):
    model = tiny_model()
    with pytest.raises(error, match=fragment.replace("(", r"\(")):
        camkit.explain(model, images(), layers="3", target=target, class_names=class_names)
    assert not any(m._forward_hooks for m in model.modules())


def test_methods_all_is_every_registered_one_pass_method_with_the_standard_set_first():
    exp = camkit.explain(tiny_model(), images(), methods="all", layers="3")
    # the perturbation methods (one extra forward per channel) and FAM's model map run only when named
    named_only = set(camkit.list_methods(needs="forward")) | set(camkit.list_methods(needs="foreground"))
    registered = [m for m in camkit.list_methods() if m not in named_only]
    assert "scorecam" not in registered and "fam" not in registered and "xgradcam" in registered
    assert sorted(exp.methods) == registered
    assert exp.methods[:5] == ["cam", "gradcam", "gradcam++", "pcs", "bagcams"]
    with camkit.Explainer(tiny_model(), layers="3") as explainer:
        assert sorted(explainer(images(), methods="ALL").methods) == registered


def test_methods_all_skips_cam_where_no_head_fits_like_the_standard_set():
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4))
    with pytest.warns(camkit.CAMHeadWarning):
        exp = camkit.explain(model, images(), methods="all", layers="1")
    assert "cam" not in exp.methods and "gradcam" in exp.methods


def test_list_methods_details_name_aliases_and_needs():
    details = {entry["name"]: entry for entry in camkit.list_methods(details=True)}
    assert sorted(details) == camkit.list_methods()
    assert details["pcs"]["aliases"] == ["hirescam"]
    assert details["gradcam"]["aliases"] == ["grad-cam"]
    assert details["cam"]["needs"] == ["head"]
    assert details["bagcams"]["needs"] == ["guided_gradients"]
    assert details["cam"]["options"] == ["clamp_negative_weights"]


def test_explanation_repr_is_short_and_names_the_targets():
    exp = camkit.explain(tiny_model(), images(), methods=("gradcam", "pcs"), layers=("3", "0"),
                         target=["dog", "fish"], class_names=NAMES)
    text = repr(exp)
    assert len(text) < 400 and "tensor(" not in text
    assert "images=(2, 3, 16, 24)" in text and "maps=4 x (2, 16, 24)" in text
    assert "methods=['gradcam', 'pcs']" in text and "layers=['3', '0']" in text
    assert "1 'dog'" in text and "3 'fish'" in text


def test_repr_png_is_a_png_of_the_figure():
    exp = camkit.explain(tiny_model(), images(), layers="3")
    assert exp._repr_png_().startswith(b"\x89PNG\r\n\x1a\n")


def _image_rows(figure):
    """Rows of image panels (axes with an image), the colourbar excluded."""
    panels = [ax for ax in figure.axes if ax.images]
    return sorted({round(ax.get_position().y0, 3) for ax in panels}), panels


@pytest.mark.parametrize("index, rows", [(None, 3), (1, 1)])
def test_figure_draws_every_image_one_row_each_or_the_index(index, rows):
    exp = camkit.explain(tiny_model(), images(3), methods=("gradcam", "pcs"), layers="3")
    figure = exp.figure(index=index)
    figure.canvas.draw()
    row_positions, panels = _image_rows(figure)
    assert len(row_positions) == rows
    assert len(panels) == rows * (1 + 2)


def test_save_writes_every_image(tmp_path):
    exp = camkit.explain(tiny_model(), images(3), layers="3")
    exp.save(tmp_path / "all.png")
    exp.save(tmp_path / "one.png", index=0)
    from PIL import Image
    tall, short = Image.open(tmp_path / "all.png"), Image.open(tmp_path / "one.png")
    assert tall.height > 2 * short.height


def test_overlay_panels_keep_the_photo_aspect_ratio():
    exp = camkit.explain(tiny_model(), images(1), layers="3")       # 16 x 24 input
    figure = exp.figure()
    figure.canvas.draw()
    for ax in figure.axes:
        if ax.images:
            box = ax.get_window_extent()
            assert box.width / box.height == pytest.approx(24 / 16, rel=0.05)


def test_fit_context_accepts_camkits_uint8_synthetic_dataset_as_it_comes():
    dataset = camkit.data.make_synthetic(num_images=8, image_size=16, num_classes=4, seed=0)
    assert dataset[0]["image"].dtype == torch.uint8
    model = tiny_model()
    context = camkit.fit_context(model, "3", dataset, epochs=1, batch_size=4)
    by_hand = [( (batch["image"].float() / 255 - torch.tensor(camkit.IMAGENET_MEAN).view(1, 3, 1, 1))
                 / torch.tensor(camkit.IMAGENET_STD).view(1, 3, 1, 1), batch["label"])
               for batch in torch.utils.data.DataLoader(dataset, batch_size=4)]
    reference = camkit.fit_context(model, "3", by_hand, epochs=1)
    tensors = {name: value for name, value in reference.state_dict().items() if isinstance(value, torch.Tensor)}
    assert tensors
    for name, value in tensors.items():
        torch.testing.assert_close(context.state_dict()[name], value)
    exp = camkit.explain(model, images(), methods="causal", layers="3", context=context)
    assert exp["causal"].shape == (2, 16, 24)


def test_loaded_model_repr_is_one_short_line():
    loaded = camkit.LoadedModel(tiny_model(), camkit.Preprocess(32), [f"class {i}" for i in range(1000)], "tiny")
    text = repr(loaded)
    assert "\n" not in text and len(text) < 300
    assert "1000 ('class 0', 'class 1', 'class 2', ...)" in text and "spec='tiny'" in text


def test_figure_rows_are_image_by_layer_and_a_skipped_cam_is_an_aligned_na_panel():
    with pytest.warns(camkit.CAMHeadWarning):
        exp = camkit.explain(tiny_model(), images(2), methods=None, layers=("3", "1"))
    assert ("cam", "1") not in exp.maps and ("cam", "3") in exp.maps
    figure = exp.figure(layer_labels={"3": "last block"})
    figure.canvas.draw()
    row_positions, panels = _image_rows(figure)
    assert len(row_positions) == 2 * 2                          # 2 images x 2 layers
    assert len(panels) == 4 * (1 + 5)                           # photo + the five standard methods, every row
    na = [ax for ax in panels if any(text.get_text() == "n/a" for text in ax.texts)]
    assert len(na) == 2                                         # CAM at layer "1", one per image
    assert {ax.get_ylabel() for ax in panels if ax.get_ylabel()} == {"last block", "1"}


def test_a_layer_has_one_display_name_across_commands():
    """load_model's suggested layers (benchmark, evaluate) name EfficientNet-Lite0's head as explain does."""
    pytest.importorskip("efficientnet_lite_pytorch")
    loaded = camkit.load_model("efficientnet-lite0")
    exp = camkit.explain(loaded.model, torch.zeros(1, 3, 64, 64), methods="gradcam", layers=None)
    assert exp.layers == ["_swish"] and loaded.layers[-1] == "_swish"
