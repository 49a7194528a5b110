"""The synthetic WSOL benchmark: determinism, exact ground truth, the context knob, export, bias figures."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.data.synthetic import (
    SHAPES, context_energy_share, export_wsol, habitat_accuracy, make_synthetic,
)


# ---------------------------------------------------------------- determinism

def test_same_seed_same_bytes_other_seed_other_bytes():
    a = make_synthetic(40, num_classes=5, image_size=40, seed=7, chunk_size=16)
    b = make_synthetic(40, num_classes=5, image_size=40, seed=7, chunk_size=7)  # chunking must not matter
    c = make_synthetic(40, num_classes=5, image_size=40, seed=8)
    for name in ("images", "masks", "boxes", "labels", "backgrounds"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes()
    assert not torch.equal(a.images, c.images)


def test_habitats_shared_across_splits():
    """The textures come from world_seed: the same class/texture pair looks alike in another split."""
    a, la = make_synthetic(8, image_size=32, seed=1, habitat_p=1.0, return_layers=True)
    b, lb = make_synthetic(8, image_size=32, seed=2, habitat_p=1.0, return_layers=True)
    # mean background colour per texture id must agree up to the per-image colour jitter (+-15%)
    for k in set(a.backgrounds.tolist()) & set(b.backgrounds.tolist()):
        ma = la[0][a.backgrounds == k].mean(dim=(0, 2, 3))
        mb = lb[0][b.backgrounds == k].mean(dim=(0, 2, 3))
        assert torch.allclose(ma, mb, atol=0.2)


# ---------------------------------------------------------------- exact ground truth

def _inside_reference(shape, u, v):
    """Point-in-shape written independently from the shape descriptions (float64 numpy)."""
    r = np.hypot(u, v)
    if shape == "disk":
        return r <= 1
    if shape == "square":
        return (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7)
    if shape == "triangle":  # vertices (0,-1), (+-sqrt3/2, 1/2): inside if on the inner side of 3 edges
        verts = [(0.0, -1.0), (math.sqrt(3) / 2, 0.5), (-math.sqrt(3) / 2, 0.5)]
        signs = []
        for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1]):
            signs.append((x1 - x0) * (v - y0) - (y1 - y0) * (u - x0))
        return (signs[0] >= 0) & (signs[1] >= 0) & (signs[2] >= 0)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if shape == "ring":
        return (r <= 1) & (r >= 0.5)
    if shape == "bar":
        return u ** 2 + (v / 0.4) ** 2 <= 1
    if shape == "half_disk":
        return (r <= 1) & (v >= 0)
    if shape == "ell":
        vertical = (u >= -0.65) & (u <= -0.05) & (np.abs(v) <= 0.7)
        horizontal = (np.abs(u) <= 0.65) & (v >= 0.3) & (v <= 0.7)
        return vertical | horizontal
    raise AssertionError(shape)


@pytest.mark.parametrize("options", [
    dict(num_classes=8),
    dict(num_classes=24, part_radius=0.4, layout="patch", placement="centred", spread=0.1),
])
def test_masks_are_the_drawn_shapes_float64_reference(options):
    data = make_synthetic(48, image_size=48, seed=3, **options)
    s = 48
    y, x = np.mgrid[0:s, 0:s].astype(np.float64)
    checked = 0
    for i in range(len(data)):
        shape = SHAPES[int(data.labels[i]) % len(SHAPES)]
        cx, cy = data.params["center"][i].double().numpy()
        scale = float(data.params["scale"][i])
        angle = float(data.params["angle"][i])
        votes = []
        for ex, ey in ((0, 0), (1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):  # flag border pixels
            dx, dy = (x + ex - cx) / scale, (y + ey - cy) / scale
            u = math.cos(angle) * dx + math.sin(angle) * dy
            v = -math.sin(angle) * dx + math.cos(angle) * dy
            votes.append(_inside_reference(shape, u, v))
        votes = np.stack(votes)
        clear = votes.all(0) | (~votes).all(0)
        mask = data.masks[i].numpy()
        assert np.array_equal(mask[clear], votes[0][clear]), (i, shape)
        assert (~clear).sum() <= 0.02 * s * s
        checked += clear.sum()
    assert checked > 0.95 * len(data) * s * s


def test_image_is_object_inside_mask_and_background_outside():
    data, (background, foreground) = make_synthetic(16, image_size=40, seed=4, return_layers=True)
    expect = (torch.where(data.masks[:, None], foreground, background) * 255).round().to(torch.uint8)
    assert torch.equal(data.images, expect)
    # the object really differs from what is behind it (the mask is visible in the image)
    visible = (foreground - background).abs().amax(1) > 0.02
    assert (visible & data.masks).sum() > 0.9 * data.masks.sum()
    assert data.masks.flatten(1).any(1).all(), "every image has an object"


def test_boxes_are_mask_bounding_boxes():
    data = make_synthetic(30, num_classes=8, image_size=48, seed=5)
    for i in range(len(data)):
        ys, xs = np.nonzero(data.masks[i].numpy())
        assert data.boxes[i].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]


# ---------------------------------------------------------------- the context knob

@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_p_sets_habitat_frequency(p):
    data = make_synthetic(2500, num_classes=4, image_size=16, habitat_p=p, seed=6)
    assert abs(float(data.on_habitat.float().mean()) - p) < 0.03
    # off-habitat backgrounds are spread evenly over the other 5 textures
    off = data.backgrounds[~data.on_habitat]
    other = (off - data.labels[~data.on_habitat]) % data.num_textures   # 1..5, never 0
    assert other.min() >= 1
    freq = torch.bincount(other, minlength=data.num_textures)[1:].float() / len(off)
    assert (freq - 0.2).abs().max() < 0.05


def test_uniform_and_swapped_contexts():
    uniform = make_synthetic(2500, num_classes=4, image_size=16, context="uniform", seed=7)
    assert abs(float(uniform.on_habitat.float().mean()) - 1 / 6) < 0.03
    swapped = make_synthetic(2500, num_classes=4, image_size=16, context="swapped", habitat_p=0.8, seed=7)
    assert not swapped.on_habitat.any(), "swapped: never on the own habitat"
    neighbour = swapped.backgrounds == (swapped.labels + 1) % 4
    assert abs(float(neighbour.float().mean()) - 0.8) < 0.03


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="context"):
        make_synthetic(4, image_size=16, context="sideways")
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic(4, image_size=16, num_classes=65)
    with pytest.raises(ValueError, match="probability"):
        make_synthetic(4, image_size=16, habitat_p=1.5)


# ---------------------------------------------------------------- context-bias figures

def test_context_energy_share_oracle():
    masks = torch.zeros(4, 2, 2, dtype=torch.bool)
    masks[:, 0, 0] = True                                  # object = 1 of 4 pixels
    maps = torch.stack([torch.ones(2, 2),                  # even spread -> 3/4 outside
                        masks[0].float(),                  # only on the object -> 0
                        (~masks[0]).float() * 2,           # only outside -> 1
                        torch.zeros(2, 2)])                # empty map -> 0
    maps[0, 1, 1] = 5.0                                    # (1+1+5)/(1+1+1+5) = 7/8
    share = context_energy_share(maps, masks)
    assert torch.allclose(share, torch.tensor([7 / 8, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="same"):
        context_energy_share(maps[:, :1], masks)


def test_habitat_accuracy_oracle():
    predictions = torch.tensor([0, 1, 1, 2, 0, 3])
    labels = torch.tensor([0, 1, 2, 2, 1, 3])
    on = torch.tensor([True, True, True, False, False, False])
    result = habitat_accuracy(predictions, labels, on)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["on_habitat"] == pytest.approx(2 / 3)
    assert result["off_habitat"] == pytest.approx(2 / 3)
    assert (result["n_on"], result["n_off"]) == (3, 3)
    assert math.isnan(habitat_accuracy(predictions[:3], labels[:3], on[:3])["off_habitat"])


# ---------------------------------------------------------------- export

def test_export_reads_back(tmp_path):
    data = make_synthetic(6, num_classes=3, image_size=32, seed=9)
    root = export_wsol(data, tmp_path, split="test")
    meta = root / "metadata" / "test"
    ids = meta.joinpath("image_ids.txt").read_text().splitlines()
    assert len(ids) == 6 and len(set(ids)) == 6
    labels = dict(line.split(",") for line in meta.joinpath("class_labels.txt").read_text().splitlines())
    sizes = [line.split(",") for line in meta.joinpath("image_sizes.txt").read_text().splitlines()]
    boxes = [line.split(",") for line in meta.joinpath("localization.txt").read_text().splitlines()]
    masks = [line.split(",") for line in (root / "metadata" / "test-masks" / "localization.txt").read_text().splitlines()]
    for i, image_id in enumerate(ids):
        assert int(labels[image_id]) == int(data.labels[i])
        assert sizes[i] == [image_id, "32", "32"]
        assert boxes[i][0] == image_id and [int(b) for b in boxes[i][1:]] == data.boxes[i].tolist()
        image = np.asarray(Image.open(root / image_id))
        assert np.array_equal(image, data.images[i].permute(1, 2, 0).numpy())   # PNG is lossless
        assert masks[i][0] == image_id and masks[i][2] == ""
        mask = np.asarray(Image.open(root / masks[i][1]))
        assert np.array_equal(mask > 127, data.masks[i].numpy())


def test_export_reads_back_through_wsol_loader(tmp_path):
    from camkit.data import wsol

    data = make_synthetic(5, num_classes=3, image_size=32, seed=10)
    export_wsol(data, tmp_path, split="test")
    identity = wsol.WSOLEvalTransform(size=32, mean=(0, 0, 0), std=(1, 1, 1))
    boxes_split = wsol.WSOLDataset(tmp_path, tmp_path / "metadata" / "test", transform=identity)
    masks_split = wsol.WSOLDataset(tmp_path, tmp_path / "metadata" / "test-masks", transform=identity)
    assert len(boxes_split) == len(masks_split) == 5
    for i in range(5):
        a, b = boxes_split[i], masks_split[i]
        assert a["label"] == b["label"] == int(data.labels[i])
        expect = data.images[i].float() / 255
        torch.testing.assert_close(a["image"], expect, rtol=0, atol=1e-6)
        assert a["boxes"].tolist() == [data.boxes[i].tolist()]
        assert torch.equal(b["mask"], data.masks[i].to(torch.uint8))
        assert a["size"] == (32, 32) or list(a["size"]) == [32, 32]
    # at the standard 224 protocol the loader rescales boxes as wsolevaluation does: int(x * 224 / 32)
    standard = wsol.WSOLDataset(tmp_path, tmp_path / "metadata" / "test")
    x0, y0, x1, y1 = data.boxes[0].tolist()
    assert standard[0]["boxes"].tolist() == [[x0 * 7, y0 * 7, x1 * 7, y1 * 7]]
