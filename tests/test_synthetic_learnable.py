"""The synthetic object is learnable: a fast version of issue 15's learnability claim.

The tiny CNN, trained a few epochs on 1,200 images of 24 classes whose backgrounds carry no class
signal (uniform-equivalent habitat_p), must classify held-out images far above chance (1/24; the
seeded run measured 0.62 against the asserted 0.25): only
the object (shape and part colour) can explain the labels. The benchmark's full figures come from
benchmarks/bench_confounding.py; here the margin is one the seeded run clears with room to spare.
"""
import torch

from camkit.data.synthetic import make_synthetic
from camkit.train.loop import train
from camkit.train.recipes import get_recipe


def test_tiny_model_learns_the_object_far_above_chance(tmp_path):
    torch.manual_seed(0)
    k, size, neutral = 24, 48, 2
    common = dict(num_classes=k, image_size=size, part_radius=0.4, num_neutral=neutral, habitat_p=1 / (k + neutral))
    train_set = make_synthetic(1200, seed=11, **common)
    test_set = make_synthetic(400, seed=12, **common)
    config = get_recipe("cam").make_config("synthetic-cpu", epochs=6, lr_step_epochs=5, resize_size=size,
                                           crop_size=size, eval_every=0, progress=False, seed=0)
    model = train("cam", train_set, backbone="tiny", num_classes=k, config=config, out_dir=tmp_path,
                  model_options=dict(widths=(16, 32, 64, 64)), resume=False).model.eval()
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    with torch.no_grad():
        predictions = model((test_set.images.float() / 255 - mean) / std).argmax(1)
    accuracy = float((predictions == test_set.labels).float().mean())
    assert accuracy > 6 / k, f"top-1 {accuracy:.3f} is not far above chance {1 / k:.3f}"
