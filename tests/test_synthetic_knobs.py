"""The synthetic benchmark's knobs do what they say: many classes, the context patch, the placement
spread, the habitat frequencies (within binomial bounds), and refusals of bad settings."""
import math

import numpy as np
import pytest
import torch

from camkit.data.synthetic import (
    PATCH_HEIGHT, SHAPES, class_names_for, context_energy_share, make_synthetic,
)


# ---------------------------------------------------------------- many classes

def test_classes_beyond_eight_share_shapes_and_differ_by_part_colour():
    data = make_synthetic(400, num_classes=24, image_size=48, part_radius=0.4, seed=1)
    assert data.class_names[:9] == ["disk-0", "square-0", "triangle-0", "cross-0", "ring-0", "bar-0",
                                    "half_disk-0", "ell-0", "disk-1"]
    assert class_names_for(8) == list(SHAPES)
    colour = {}
    for i in range(len(data)):
        part = data.parts[i]
        if part.any():
            pixels = data.images[i][:, part].T                 # (P, 3): the part is one flat colour
            assert (pixels == pixels[0]).all()
            colour.setdefault(int(data.labels[i]), tuple(pixels[0].tolist()))
    assert len(colour) == 24, "every class drew its part"
    for k in range(8):                  # classes k, k + 8, k + 16 share a shape and differ by the part
        assert len({colour[k], colour[k + 8], colour[k + 16]}) == 3


# ---------------------------------------------------------------- context layout

def _patch_reference(mask: np.ndarray, scale: float) -> np.ndarray:
    """The patch from its description: rows y1+1 .. y1 + PATCH_HEIGHT*scale under the mask's lowest row,
    columns of the mask's box widened by a quarter of its width on each side (float64)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y1 = xs.min(), xs.max(), ys.max()
    pad = 0.25 * (x1 - x0 + 1)
    y, x = np.mgrid[0:mask.shape[0], 0:mask.shape[1]].astype(np.float64)
    return (x >= x0 - pad) & (x <= x1 + pad) & (y >= y1 + 1) & (y <= y1 + PATCH_HEIGHT * scale)


def test_context_patch_masks_are_exact_and_lie_under_the_object():
    data, (background, _) = make_synthetic(60, num_classes=6, image_size=48, layout="patch", seed=2,
                                           return_layers=True)
    for i in range(len(data)):
        mask, context = data.masks[i].numpy(), data.context_masks[i].numpy()
        expected = _patch_reference(mask, float(data.params["scale"][i]))
        assert np.array_equal(context, expected), i
        assert not (context & mask).any()
        rows = np.nonzero(context.any(1))[0]
        assert rows.min() == np.nonzero(mask.any(1))[0].max() + 1, "the patch touches the object"
        assert rows.max() < 48, "the patch fits in the image"
    # the surround is neutral; the patch and the surround are drawn with different textures
    assert (data.surrounds >= data.num_classes).all()
    inside = background.permute(0, 2, 3, 1)[data.context_masks].mean(0)
    outside = background.permute(0, 2, 3, 1)[~data.context_masks & ~data.masks].mean(0)
    assert not torch.allclose(inside, outside, atol=0.02)


def test_background_layout_context_is_the_whole_background():
    data = make_synthetic(10, image_size=32, seed=3)
    assert torch.equal(data.context_masks, ~data.masks) and torch.equal(data.surrounds, data.backgrounds)


def test_context_energy_share_on_a_given_context():
    masks = torch.zeros(2, 2, 2, dtype=torch.bool)
    masks[:, 0, 0] = True
    context = torch.zeros(2, 2, 2, dtype=torch.bool)
    context[:, 1, :] = True
    maps = torch.tensor([[[1.0, 1.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    share = context_energy_share(maps, masks, context)
    assert torch.allclose(share, torch.tensor([2.0 / 4.0, 0.0]))
    assert torch.allclose(context_energy_share(maps, masks), torch.tensor([3.0 / 4.0, 0.0]))


# ---------------------------------------------------------------- placement

def test_centred_placement_has_the_given_spread():
    n, s, spread = 4000, 64, 0.08
    data = make_synthetic(n, image_size=s, placement="centred", spread=spread, scale_range=(0.1, 0.12), seed=4)
    centre = data.params["center"].double()
    sigma = spread * s
    # objects fit with 6.7..8.7 px margins: clamping at > 2.7 sigma from the centre is rare, so the
    # sample mean and standard deviation are those of the normal to within their sampling error
    assert (centre.mean(0) - (s - 1) / 2).abs().max() < 4 * sigma / math.sqrt(n)
    assert (centre.std(0) / sigma - 1).abs().max() < 0.05
    uniform = make_synthetic(n, image_size=s, scale_range=(0.1, 0.12), seed=4).params["center"].double()
    assert (uniform.std(0) > 2 * centre.std(0)).all()


@pytest.mark.parametrize("layout", ["background", "patch"])
def test_objects_and_patches_fit_under_any_placement(layout):
    data = make_synthetic(300, image_size=40, layout=layout, placement="centred", spread=1.0, seed=5)
    assert data.masks.flatten(1).any(1).all()
    assert (data.boxes[:, :2] >= 1).all() and (data.boxes[:, 2:] <= 38).all()
    if layout == "patch":
        assert data.context_masks.flatten(1).any(1).all()


# ---------------------------------------------------------------- habitat frequencies

def _binomial_bound(n: int, p: float) -> float:
    return 4.5 * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("layout", ["background", "patch"])
@pytest.mark.parametrize("p", ["uniform-equivalent", 0.8, 0.95, 1.0])
def test_habitat_frequency_within_binomial_bounds(p, layout):
    n, k, neutral = 3000, 5, 2
    p = 1 / (k + neutral) if p == "uniform-equivalent" else p
    data = make_synthetic(n, num_classes=k, num_neutral=neutral, image_size=16, habitat_p=p, layout=layout,
                          scale_range=(0.2, 0.25), seed=6)
    on = int(data.on_habitat.sum())
    assert abs(on - n * p) <= _binomial_bound(n, p)
    if p == 1 / (k + neutral):      # uniform-equivalent: every texture equally likely for every class
        for c in range(k):
            counts = torch.bincount(data.backgrounds[data.labels == c], minlength=k + neutral)
            total = int(counts.sum())
            for count in counts.tolist():
                assert abs(count - total * p) <= _binomial_bound(total, p)


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("options, match", [
    (dict(num_classes=12), "part_radius > 0"),
    (dict(layout="branch"), "layout must be one of"),
    (dict(layout="patch", num_neutral=0), "num_neutral must be >= 1"),
    (dict(placement="middle"), "placement must be one of"),
    (dict(placement="centred", spread=0.0), "spread"),
    (dict(spread="wide"), "spread"),
    (dict(layout="patch", scale_range=(0.4, 0.4)), "scale_range"),   # fits only without the patch
    (dict(num_classes=65, part_radius=0.4), "num_classes"),
])
def test_bad_knobs_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(4, image_size=32, **options)
