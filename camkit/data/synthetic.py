"""A procedural WSOL benchmark with controllable context confounding.

Each image shows one object of class ``k`` (a shape with random colour, texture, position, scale and
rotation) on a textured background. Every class has a "habitat" texture; there are also neutral
textures. The context knob decides how often an object sits on its own habitat:

- ``context="habitat"`` with ``habitat_p=p``: class k is on habitat k with probability p, otherwise on a
  texture drawn uniformly from all the others (the other classes' habitats and the neutral ones).
- ``context="uniform"``: the background is uniform over all textures (no confounding signal beyond
  chance, P(own habitat) = 1 / num_textures).
- ``context="swapped"``: class k is on the habitat of class ``(k + 1) % K`` with probability
  ``habitat_p`` (otherwise uniform over the rest, excluding its own habitat) -- the adversarial test.

A classifier trained on ``habitat_p=0.8`` can reach high accuracy by reading the background ("fish in
water"); its accuracy on uniform or swapped test sets shows how much it relies on context, and the share
of its CAM energy outside the object mask (:func:`context_energy_share`) shows where it looks.

Ground truth is exact: the mask is the set of pixels drawn with the object's colour (no anti-aliasing),
boxes are the masks' inclusive bounding boxes ``(x0, y0, x1, y1)``. Everything is generated with one
``torch.Generator`` in vectorised chunks; the same arguments give the same bytes. The textures that
define the habitats come from ``world_seed`` (not ``seed``), so train and test splits generated with
different seeds share their habitats.

:func:`export_wsol` writes a split in the wsolevaluation metadata format, so the dataset loaders and
the evaluation run end to end on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Union

import numpy as np
import torch

__all__ = [
    "SHAPES", "SyntheticWSOL", "make_synthetic", "export_wsol", "shape_indicator",
    "context_energy_share", "habitat_accuracy",
]

#: Object shapes, one per class (class k draws ``SHAPES[k]``). All fit inside the unit disk.
SHAPES = ("disk", "square", "triangle", "cross", "ring", "bar", "half_disk", "ell")

_PATTERNS = ("stripes", "checker", "dots")


def shape_indicator(shape_ids: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed inside-ness of each shape at object coordinates ``(u, v)`` (unit-disk scale).

    ``shape_ids`` ``(B,)`` long; ``u, v`` ``(B, H, W)``. Returns ``(B, H, W)`` float: positive inside,
    negative outside (the minimum margin over the shape's defining inequalities, not a true distance).
    """
    ids = shape_ids.view(-1, 1, 1)
    r = torch.sqrt(u * u + v * v)
    au, av = u.abs(), v.abs()
    out = torch.full_like(u, -1.0)
    s3 = math.sqrt(3.0)
    candidates = {
        0: 1.0 - r,                                                             # disk
        1: 0.7 - torch.maximum(au, av),                                         # square
        2: torch.minimum(0.5 - v, (v + 1.0 - s3 * au) / 2.0),                   # triangle
        3: torch.maximum(torch.minimum(0.3 - au, 0.95 - av),                    # cross
                         torch.minimum(0.3 - av, 0.95 - au)),
        4: torch.minimum(1.0 - r, r - 0.5),                                     # ring
        5: 1.0 - torch.sqrt(u * u + (v / 0.4) ** 2),                            # bar (ellipse)
        6: torch.minimum(1.0 - r, v),                                           # half disk
        7: torch.maximum(torch.minimum(torch.minimum(u + 0.65, -0.05 - u),      # ell: vertical arm
                                       torch.minimum(v + 0.7, 0.7 - v)),
                         torch.minimum(torch.minimum(u + 0.65, 0.65 - u),        # horizontal arm
                                       torch.minimum(v - 0.3, 0.7 - v))),
    }
    for k, value in candidates.items():
        out = torch.where(ids == k, value, out)
    return out


#: Centre of each shape's discriminative part, in object coordinates (inside the shape).
_PART_CENTERS = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.75, 0.0], [0.0, 0.0],
                              [0.0, 0.45], [-0.35, 0.45]])


def _texture_bank(num_textures: int, world_seed: int) -> Dict[str, torch.Tensor]:
    """Fixed texture definitions: colours ``(T, 2, 3)``, angle, frequency, pattern id ``(T,)``."""
    g = torch.Generator().manual_seed(10_007 + world_seed)
    # well-separated hues for the first colour, a darker/lighter partner for the second
    hues = (torch.arange(num_textures, dtype=torch.float64) / num_textures
            + torch.rand(1, generator=g, dtype=torch.float64)) % 1.0
    hues = hues[torch.randperm(num_textures, generator=g)]
    base = _hsv_to_rgb(hues, torch.full_like(hues, 0.55), torch.full_like(hues, 0.75))
    partner = _hsv_to_rgb((hues + 0.5) % 1.0, torch.full_like(hues, 0.35), torch.full_like(hues, 0.35))
    return {
        "colours": torch.stack([base, partner], dim=1).float(),
        "angle": (torch.rand(num_textures, generator=g) * math.pi),
        "frequency": 0.06 + 0.10 * torch.rand(num_textures, generator=g),   # cycles per pixel
        "pattern": torch.arange(num_textures) % len(_PATTERNS),
    }


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(N,)`` HSV in [0, 1] -> ``(N, 3)`` RGB."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


@dataclass(eq=False)
class SyntheticWSOL(torch.utils.data.Dataset):
    """An in-memory synthetic WSOL split.

    Attributes (N images, size S):
        images: ``(N, 3, S, S)`` uint8.
        masks: ``(N, S, S)`` bool, exactly the pixels drawn with the object.
        parts: ``(N, S, S)`` bool, the pixels of the class-specific part (all False without parts).
        boxes: ``(N, 4)`` long, inclusive ``(x0, y0, x1, y1)`` bounding box of each mask.
        labels: ``(N,)`` long object classes in ``[0, num_classes)``.
        backgrounds: ``(N,)`` long texture ids; ids ``< num_classes`` are habitats, the rest neutral.
        on_habitat: ``(N,)`` bool, ``backgrounds == labels``.
        params: per-image object parameters (``center`` ``(N, 2)`` as (x, y), ``scale`` ``(N,)`` in
            pixels, ``angle`` ``(N,)`` radians, ``colour`` ``(N, 3)``), for tests and figures.

    ``dataset[i]`` is a dict: ``image`` (3, S, S) uint8, ``label``, ``mask`` (S, S) bool, ``box`` (4,),
    ``index``, ``on_habitat``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    parts: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    backgrounds: torch.Tensor
    on_habitat: torch.Tensor
    params: Dict[str, torch.Tensor]
    num_classes: int
    num_textures: int
    settings: Dict[str, object]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Dict[str, object]:
        return {"image": self.images[index], "label": int(self.labels[index]), "mask": self.masks[index],
                "box": self.boxes[index], "index": int(index), "on_habitat": bool(self.on_habitat[index])}

    @property
    def class_names(self):
        return list(SHAPES[: self.num_classes])


def _draw_backgrounds(labels: torch.Tensor, num_classes: int, num_textures: int, context: str,
                      habitat_p: float, g: torch.Generator) -> torch.Tensor:
    n = labels.shape[0]
    coin = torch.rand(n, generator=g)
    if context == "uniform":
        return torch.randint(num_textures, (n,), generator=g)
    favoured = labels if context == "habitat" else (labels + 1) % num_classes   # "swapped"
    # otherwise: uniform over textures other than the favoured one (and, when swapped, the own habitat)
    excluded = 1 if context == "habitat" else 2
    pick = torch.randint(num_textures - excluded, (n,), generator=g)
    if context == "habitat":
        other = pick + (pick >= favoured).long()
    else:
        low = torch.minimum(labels, favoured)
        high = torch.maximum(labels, favoured)
        other = pick + (pick >= low).long()
        other = other + (other >= high).long()
    return torch.where(coin < habitat_p, favoured, other)


def _render_chunk(labels, backgrounds, center, scale, angle, colour, texture_phase, object_frequency,
                  object_phase, colour_jitter, bank, size, part_radius, part_colours):
    """Render one chunk. Returns background (B,3,S,S) float, foreground (B,3,S,S) float, mask (B,S,S),
    part (B,S,S)."""
    b = labels.shape[0]
    coords = torch.arange(size, dtype=torch.float32)
    y = coords.view(1, size, 1).expand(b, size, size)
    x = coords.view(1, 1, size).expand(b, size, size)
    # background texture
    ang = bank["angle"][backgrounds].view(b, 1, 1)
    freq = bank["frequency"][backgrounds].view(b, 1, 1) * 2 * math.pi
    pa = (x * torch.cos(ang) + y * torch.sin(ang)) * freq + texture_phase[:, 0].view(b, 1, 1)
    pb = (-x * torch.sin(ang) + y * torch.cos(ang)) * freq + texture_phase[:, 1].view(b, 1, 1)
    stripes = 0.5 + 0.5 * torch.sin(pa)
    checker = (torch.sin(pa) * torch.sin(pb) > 0).float()
    dots = (torch.sin(pa) * torch.sin(pb) > 0.5).float()
    pattern = bank["pattern"][backgrounds].view(b, 1, 1)
    t = torch.where(pattern == 0, stripes, torch.where(pattern == 1, checker, dots))
    c = bank["colours"][backgrounds] * colour_jitter.view(b, 1, 3)          # (B, 2, 3)
    background = c[:, 0, :, None, None] * (1 - t[:, None]) + c[:, 1, :, None, None] * t[:, None]
    # object
    dx = (x - center[:, 0].view(b, 1, 1)) / scale.view(b, 1, 1)
    dy = (y - center[:, 1].view(b, 1, 1)) / scale.view(b, 1, 1)
    ca, sa = torch.cos(angle).view(b, 1, 1), torch.sin(angle).view(b, 1, 1)
    u = ca * dx + sa * dy
    v = -sa * dx + ca * dy
    mask = shape_indicator(labels, u, v) >= 0
    shade = 0.8 + 0.2 * torch.sin(u * object_frequency.view(b, 1, 1) + object_phase.view(b, 1, 1))
    foreground = colour.view(b, 3, 1, 1) * shade[:, None]
    pc = _PART_CENTERS[labels]
    part = mask & (((u - pc[:, 0].view(b, 1, 1)) ** 2 + (v - pc[:, 1].view(b, 1, 1)) ** 2) <= part_radius ** 2)
    if part_radius > 0:
        foreground = torch.where(part[:, None], part_colours[labels].view(b, 3, 1, 1), foreground)
    else:
        part = torch.zeros_like(mask)
    return background, foreground, mask, part


def make_synthetic(num_images: int = 1000, num_classes: int = 4, image_size: int = 96,
                   context: str = "habitat", habitat_p: float = 0.8, num_neutral: int = 2,
                   seed: int = 0, world_seed: int = 0, scale_range: Sequence[float] = (0.16, 0.3),
                   part_radius: float = 0.0, chunk_size: int = 256, return_layers: bool = False):
    """Generate a synthetic WSOL split (see the module docstring for the context settings).

    Args:
        num_images: N, the number of images (one object each).
        num_classes: K in ``[2, 8]``; class k is the shape ``SHAPES[k]``.
        image_size: S, the side of the square images.
        context: ``"habitat"``, ``"uniform"`` or ``"swapped"``.
        habitat_p: probability that an object sits on its favoured texture (``"habitat"``/``"swapped"``).
        num_neutral: number of neutral textures besides the K habitats.
        seed: the split's seed (labels, placement, colours, background choice and phase).
        world_seed: defines the textures; keep it equal across splits.
        scale_range: object radius as a fraction of S.
        part_radius: radius (in object units, the object fits the unit disk) of a class-specific
            "discriminative part": a small disk of a saturated class colour inside the object. 0 (the
            default) draws none. Parts make the object cue easier to learn than the shape alone and
            reproduce CAM's focus on discriminative parts; ``dataset.parts`` holds their masks.
        return_layers: also return ``(background, foreground)`` float ``(N, 3, S, S)`` in [0, 1]; the
            image is ``where(mask, foreground, background)`` quantised to uint8.

    Returns:
        A :class:`SyntheticWSOL` (and the layers when ``return_layers``).
    """
    _check_arguments(num_images=num_images, num_classes=num_classes, image_size=image_size, context=context,
                     habitat_p=habitat_p, num_neutral=num_neutral, seed=seed, world_seed=world_seed,
                     scale_range=scale_range, part_radius=part_radius, chunk_size=chunk_size)
    num_textures = num_classes + num_neutral
    bank = _texture_bank(num_textures, world_seed)
    g = torch.Generator().manual_seed(int(seed))
    n, s = num_images, image_size
    labels = torch.randint(num_classes, (n,), generator=g)
    backgrounds = _draw_backgrounds(labels, num_classes, num_textures, context, habitat_p, g)
    lo, hi = scale_range
    scale = (lo + (hi - lo) * torch.rand(n, generator=g)) * s
    margin = scale + 1.0
    center = margin[:, None] + torch.rand(n, 2, generator=g) * (s - 1 - 2 * margin[:, None])
    angle = torch.rand(n, generator=g) * 2 * math.pi
    hue = torch.rand(n, generator=g)
    colour = _hsv_to_rgb(hue, 0.5 + 0.5 * torch.rand(n, generator=g), 0.6 + 0.4 * torch.rand(n, generator=g))
    texture_phase = torch.rand(n, 2, generator=g) * 2 * math.pi
    object_frequency = 2.0 + 6.0 * torch.rand(n, generator=g)
    object_phase = torch.rand(n, generator=g) * 2 * math.pi
    colour_jitter = 0.85 + 0.3 * torch.rand(n, 3, generator=g)

    images = torch.empty(n, 3, s, s, dtype=torch.uint8)
    masks = torch.empty(n, s, s, dtype=torch.bool)
    parts = torch.zeros(n, s, s, dtype=torch.bool)
    layers = (torch.empty(n, 3, s, s), torch.empty(n, 3, s, s)) if return_layers else None
    class_hues = torch.arange(num_classes, dtype=torch.float32) / num_classes
    part_colours = _hsv_to_rgb(class_hues, torch.ones(num_classes), torch.ones(num_classes))
    for start in range(0, n, chunk_size):
        sl = slice(start, min(start + chunk_size, n))
        bg, fg, m, part = _render_chunk(labels[sl], backgrounds[sl], center[sl], scale[sl], angle[sl],
                                        colour[sl], texture_phase[sl], object_frequency[sl], object_phase[sl],
                                        colour_jitter[sl], bank, s, float(part_radius), part_colours)
        parts[sl] = part
        bg, fg = bg.clamp(0, 1), fg.clamp(0, 1)
        images[sl] = (torch.where(m[:, None], fg, bg) * 255).round().to(torch.uint8)
        masks[sl] = m
        if layers is not None:
            layers[0][sl], layers[1][sl] = bg, fg
    empty = int((~masks.flatten(1).any(1)).sum())
    if empty:
        raise ValueError(f"{empty} of {n} images have no object pixel (scale_range {tuple(scale_range)} is too "
                         f"small for image_size {s}); raise scale_range[0]")
    boxes = _mask_boxes(masks)
    dataset = SyntheticWSOL(
        images=images, masks=masks, parts=parts, boxes=boxes, labels=labels, backgrounds=backgrounds,
        on_habitat=backgrounds == labels,
        params={"center": center, "scale": scale, "angle": angle, "colour": colour},
        num_classes=num_classes, num_textures=num_textures,
        settings=dict(num_images=n, num_classes=num_classes, image_size=s, context=context,
                      habitat_p=habitat_p, num_neutral=num_neutral, seed=seed, world_seed=world_seed,
                      scale_range=tuple(scale_range), part_radius=part_radius),
    )
    return (dataset, layers) if return_layers else dataset


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_arguments(*, num_images, num_classes, image_size, context, habitat_p, num_neutral, seed,
                     world_seed, scale_range, part_radius, chunk_size) -> None:
    """Refuse arguments of :func:`make_synthetic` that would fail late or draw wrong images."""
    for name, value, low in (("num_images", num_images, 1), ("image_size", image_size, 16),
                             ("num_neutral", num_neutral, 0), ("chunk_size", chunk_size, 1)):
        if not _is_integer(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("seed", seed), ("world_seed", world_seed)):
        if not _is_integer(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not _is_integer(num_classes) or not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be an integer in [2, {len(SHAPES)}], got {num_classes!r}")
    if context not in ("habitat", "uniform", "swapped"):
        raise ValueError(f"context must be 'habitat', 'uniform' or 'swapped', got {context!r}")
    if not _is_real(habitat_p) or not 0.0 <= habitat_p <= 1.0:
        raise ValueError(f"habitat_p is a probability in [0, 1], got {habitat_p!r}")
    if context == "swapped" and num_classes + num_neutral < 3:
        raise ValueError("context='swapped' needs at least 3 textures (num_classes + num_neutral >= 3)")
    if not _is_real(part_radius) or not 0.0 <= part_radius <= 1.0:
        raise ValueError(f"part_radius is in object units (the object fits the unit disk): a number in "
                         f"[0, 1], got {part_radius!r}")
    pair = tuple(scale_range) if isinstance(scale_range, (list, tuple)) else None
    largest = (image_size - 3) / (2 * image_size)   # radius + 1 px margin fits on both sides
    if (pair is None or len(pair) != 2 or not all(_is_real(v) and math.isfinite(v) for v in pair)
            or not 0 < pair[0] <= pair[1] <= largest):
        raise ValueError(f"scale_range is (low, high), object radii as fractions of image_size with "
                         f"0 < low <= high <= {largest:.4f} (the object must fit the {image_size}x{image_size} "
                         f"image), got {scale_range!r}")


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Inclusive bounding boxes ``(N, 4)`` = (x0, y0, x1, y1) of non-empty masks ``(N, H, W)``."""
    n, h, w = masks.shape
    cols, rows = masks.any(dim=1), masks.any(dim=2)           # (N, W), (N, H)
    xs = torch.arange(w).expand(n, w)
    ys = torch.arange(h).expand(n, h)
    big = max(h, w)
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def export_wsol(dataset: SyntheticWSOL, root: Union[str, Path], split: str = "test") -> Path:
    """Write ``dataset`` to ``root`` in the wsolevaluation layout; returns ``root``.

    Image ids are paths relative to ``root`` (wsolevaluation's data root), PNG (lossless)::

        root/{split}/{class}/{split}_{i:06d}.png             the image
        root/masks/{split}/{class}/{split}_{i:06d}.png       its object mask, 0 or 255 (uint8, mode "L")
        root/metadata/{split}/                               CUB/ILSVRC style (boxes)
            image_ids.txt       one image id per line
            class_labels.txt    "image_id,label"
            image_sizes.txt     "image_id,width,height"
            localization.txt    "image_id,x0,y0,x1,y1" (inclusive pixel box of the mask)
        root/metadata/{split}-masks/                         OpenImages style (masks): the same three
            localization.txt    "image_id,mask_path,"  files, and mask lines (mask_path relative to
                                                           root, no ignore mask)

    Read it back with ``camkit.data.wsol.WSOLDataset(root, root / "metadata" / split)`` (boxes) or
    ``.../f"{split}-masks"`` (masks).
    """
    from PIL import Image

    root = Path(root)
    names = dataset.class_names
    ids, masks_rel = [], []
    images_np = dataset.images.permute(0, 2, 3, 1).numpy()
    masks_np = dataset.masks.numpy().astype(np.uint8) * 255
    for i in range(len(dataset)):
        cls = names[int(dataset.labels[i])]
        image_id = f"{split}/{cls}/{split}_{i:06d}.png"
        mask_id = f"masks/{image_id}"
        for rel, array in ((image_id, images_np[i]), (mask_id, masks_np[i])):
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
        ids.append(image_id)
        masks_rel.append(mask_id)
    s = dataset.images.shape[-1]
    boxes = dataset.boxes.tolist()
    labels = dataset.labels.tolist()
    for folder, localization in (
            (split, [f"{i},{b[0]},{b[1]},{b[2]},{b[3]}" for i, b in zip(ids, boxes)]),
            (f"{split}-masks", [f"{i},{m}," for i, m in zip(ids, masks_rel)])):
        meta = root / "metadata" / folder
        meta.mkdir(parents=True, exist_ok=True)
        _write_lines(meta / "image_ids.txt", ids)
        _write_lines(meta / "class_labels.txt", [f"{i},{l}" for i, l in zip(ids, labels)])
        _write_lines(meta / "image_sizes.txt", [f"{i},{s},{s}" for i in ids])
        _write_lines(meta / "localization.txt", localization)
    return root


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def context_energy_share(maps: torch.Tensor, masks: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Share of each map's energy that falls outside the object mask.

    Args:
        maps: ``(B, H, W)`` non-negative maps (e.g. normalised CAMs), same size as ``masks``.
        masks: ``(B, H, W)`` bool object masks.

    Returns:
        ``(B,)`` float in [0, 1]: ``sum(map * ~mask) / sum(map)``; an all-zero map gives 0.
        For comparison, a map spread evenly gives the background's area fraction.
    """
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have the same "
                         "(B, H, W) shape; upsample the maps to the mask size first")
    maps = maps.float().clamp_min(0)
    total = maps.flatten(1).sum(1)
    outside = (maps * (~masks.bool())).flatten(1).sum(1)
    return torch.where(total > eps, outside / total.clamp_min(eps), torch.zeros_like(total))


def habitat_accuracy(predictions: torch.Tensor, labels: torch.Tensor,
                     on_habitat: torch.Tensor) -> Dict[str, float]:
    """Top-1 accuracy overall, on-habitat and off-habitat.

    ``predictions``, ``labels`` ``(N,)`` long; ``on_habitat`` ``(N,)`` bool. Returns a dict with
    ``accuracy``, ``on_habitat``, ``off_habitat`` (NaN when a group is empty), ``gap`` (on - off) and
    the group sizes ``n_on``, ``n_off``.
    """
    correct = (predictions.view(-1) == labels.view(-1)).float()
    on = on_habitat.view(-1).bool()

    def mean(x):
        return float(x.mean()) if x.numel() else float("nan")

    acc_on, acc_off = mean(correct[on]), mean(correct[~on])
    return {"accuracy": mean(correct), "on_habitat": acc_on, "off_habitat": acc_off,
            "gap": acc_on - acc_off, "n_on": int(on.sum()), "n_off": int((~on).sum())}
