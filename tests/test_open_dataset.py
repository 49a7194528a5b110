"""``open_dataset``: the one ``--data`` grammar (synthetic options, annotated folder, wsolevaluation root)."""
import numpy as np
import pytest
import torch

from camkit.data.open import num_classes_of, open_dataset, parse_options
from camkit.data.synthetic import LEARNABLE, export_wsol, make_synthetic

NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_synthetic_options_reach_make_synthetic_over_the_learnable_defaults():
    train = open_dataset("synthetic:num_images=6,image_size=24,num_classes=3,habitat_p=0.9", split="train")
    expected = make_synthetic(num_images=6, image_size=24, num_classes=3, habitat_p=0.9,
                              part_radius=LEARNABLE["part_radius"], scale_range=LEARNABLE["scale_range"])
    assert torch.equal(train.images, expected.images) and train.num_classes == 3


def test_bare_synthetic_is_the_learnable_benchmark_setting():
    settings = open_dataset("synthetic:num_images=2", split="train").settings
    assert {k: settings[k] for k in LEARNABLE} == {**LEARNABLE, "scale_range": settings["scale_range"]}
    assert tuple(settings["scale_range"]) == LEARNABLE["scale_range"] and settings["num_classes"] == 24


def test_synthetic_test_split_is_the_next_seed_with_uniform_context_and_at_most_1000_images():
    test = open_dataset("synthetic:num_images=5000,image_size=16,seed=4", split="test")
    expected = make_synthetic(num_images=1000, seed=5, context="uniform", **dict(LEARNABLE, image_size=16))
    assert len(test) == 1000 and torch.equal(test.images, expected.images)
    swapped = open_dataset("synthetic:num_images=4,image_size=16,context='swapped'", split="test")
    assert swapped.settings["context"] == "swapped"


def test_synthetic_tuple_values_survive_the_comma_grammar():
    data = open_dataset("synthetic:num_images=3,image_size=32,scale_range=0.2,0.25", split="train")
    assert tuple(data.settings["scale_range"]) == (0.2, 0.25)


def test_normalized_synthetic_items_are_the_evaluation_form():
    raw = open_dataset("synthetic:num_images=3,image_size=20", split="test")
    view = open_dataset("synthetic:num_images=3,image_size=20", split="test", normalize=NORM)
    item, source = view[1], raw[1]
    expected = (source["image"].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(item["image"], expected)
    assert item["boxes"].tolist() == [source["box"].tolist()]
    assert torch.equal(item["mask"], source["mask"].to(torch.uint8)) and view.class_names == raw.class_names


def test_wsol_root_defaults_to_its_split_metadata_and_takes_another(tmp_path):
    data = make_synthetic(num_images=4, image_size=32, seed=3)
    export_wsol(data, tmp_path, split="test")
    boxes = open_dataset(str(tmp_path), split="test", image_size=64, normalize=NORM)
    assert len(boxes) == 4 and boxes[0]["image"].shape == (3, 64, 64)
    # boxes rescaled 32 -> 64 with wsolevaluation's int(x * 64 / 32)
    assert boxes[2]["boxes"].tolist() == [[int(v) * 2 for v in data.boxes[2]]]
    masks = open_dataset(str(tmp_path), metadata=tmp_path / "metadata" / "test-masks", image_size=32)
    assert masks[0]["mask"].shape == (32, 32) and int(masks[0]["mask"].max()) == 1
    assert num_classes_of(boxes) == int(data.labels.max()) + 1


def test_annotated_folder(assets_dir):
    data = open_dataset(str(assets_dir / "imagenet-val-dev50"), image_size=224, normalize=NORM)
    assert len(data) == 50 and data[0]["image"].shape == (3, 224, 224) and data[0]["boxes"].shape[1] == 4


@pytest.mark.parametrize("spec, kwargs, error, fragment", [
    ("nowhere/at/all", {}, FileNotFoundError, "is not an existing folder nor 'synthetic"),
    ("synthetic:num_imagez=3", {}, ValueError, "unknown key(s) ['num_imagez']"),
    ("synthetic:3", {}, ValueError, "expected KEY=VALUE"),
    ("synthetic", {"metadata": "m"}, ValueError, "--metadata applies to a wsolevaluation dataset root"),
    ("synthetic", {"split": "val"}, ValueError, "split must be 'train' or 'test'"),
])
def test_bad_specs(spec, kwargs, error, fragment):
    with pytest.raises(error) as info:
        open_dataset(spec, **kwargs)
    assert fragment in str(info.value)


def test_a_folder_that_is_neither_form_names_the_metadata_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --metadata DIR") as info:
        open_dataset(str(tmp_path), split="train")
    assert str(tmp_path / "metadata" / "train") in str(info.value)


def test_parse_options():
    assert parse_options(["a=1", "b-c=x,y", "d=[1, 2]", "e=text"]) == {"a": 1, "b_c": ("x", "y"), "d": [1, 2],
                                                                    "e": "text"}
    assert np.isclose(parse_options(["lr=1e-3"])["lr"], 1e-3)
