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
of its CAM energy on the context (:func:`context_energy_share`) shows where it looks. With
``context="habitat"``, ``habitat_p = 1 / num_textures`` is the uniform-equivalent setting (every texture
equally likely whatever the class).

Two more knobs say what the confounder looks like and where objects sit:

- ``layout="background"`` (default): the whole background is the context texture ("fish in water").
  ``layout="patch"``: the background is a neutral texture and the context is a patch of the context
  texture directly under the object ("bird on a branch"): a rectangle whose top row is the row below the
  object's lowest pixel, spanning the object's box widened by a quarter of its width on each side, and
  ``PATCH_HEIGHT`` object radii high. ``dataset.context_masks`` holds its exact pixels.
- ``placement="uniform"`` (default): object centres uniform over the positions where the object fits.
  ``placement="centred"``: centres drawn from a normal distribution around the image centre with
  standard deviation ``spread * image_size`` per axis, clamped to where the object fits, as objects sit
  in CUB and ILSVRC photos.

**Many classes.** Class ``k`` draws the shape ``SHAPES[k % 8]``; with more than 8 classes, classes
that share a shape differ only by the colour of their discriminative part (hue ``k / num_classes``, so
the classes sharing a shape are ``360 / ceil(K / 8)`` degrees apart in hue), as fine-grained classes
(birds, cars) differ by the colour of a part. So ``num_classes > 8`` needs ``part_radius > 0``.

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
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "SHAPES", "LAYOUTS", "PLACEMENTS", "PATCH_HEIGHT", "class_names_for", "SyntheticWSOL", "make_synthetic", "export_wsol", "shape_indicator",
    "context_energy_share", "habitat_accuracy",
]

#: Object shapes, one per class (class k draws ``SHAPES[k]``). All fit inside the unit disk.
SHAPES = ("disk", "square", "triangle", "cross", "ring", "bar", "half_disk", "ell")

_PATTERNS = ("stripes", "checker", "dots")

#: ``layout`` values: where the context texture is drawn (see the module docstring).
LAYOUTS = ("background", "patch")
#: ``placement`` values: how object centres are drawn.
PLACEMENTS = ("uniform", "centred")
#: Height of the ``layout="patch"`` context patch, in object radii.
PATCH_HEIGHT = 0.5
#: Upper bound of ``num_classes`` (8 shapes times at most 8 part colours per shape).
MAX_CLASSES = 8 * len(SHAPES)

#: The learnable benchmark setting (issue 15): 24 classes (three part hues per shape), 48x48 images,
#: objects of 0.22-0.32 of the side with parts of radius 0.6. On it the tiny CAM model trained with the
#: ``synthetic-cpu`` preset reads the object (top-1 ~0.95 on uniform context and off habitat, see
#: ``benchmarks/bench_confounding.py``), while ``habitat_p`` still moves its map energy onto the context.
#: ``camkit train --data synthetic`` and the confounding benchmark start from it.
LEARNABLE = dict(num_classes=24, image_size=48, part_radius=0.6, scale_range=(0.22, 0.32))


def class_names_for(num_classes: int):
    """Class names: the shape for up to 8 classes, ``"{shape}-{k // 8}"`` (shape and part colour) beyond."""
    if num_classes <= len(SHAPES):
        return list(SHAPES[:num_classes])
    return [f"{SHAPES[k % len(SHAPES)]}-{k // len(SHAPES)}" for k in range(num_classes)]


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
        context_masks: ``(N, S, S)`` bool, exactly the pixels drawn with the context texture: the whole
            background (``~masks``) with ``layout="background"``, the patch with ``layout="patch"``.
        parts: ``(N, S, S)`` bool, the pixels of the class-specific part (all False without parts).
        boxes: ``(N, 4)`` long, inclusive ``(x0, y0, x1, y1)`` bounding box of each mask.
        labels: ``(N,)`` long object classes in ``[0, num_classes)``.
        backgrounds: ``(N,)`` long ids of the context texture; ids ``< num_classes`` are habitats, the
            rest neutral.
        surrounds: ``(N,)`` long ids of the texture around the context: ``backgrounds`` with
            ``layout="background"``, a neutral texture with ``layout="patch"``.
        on_habitat: ``(N,)`` bool, ``backgrounds == labels``.
        params: per-image object parameters (``center`` ``(N, 2)`` as (x, y), ``scale`` ``(N,)`` in
            pixels, ``angle`` ``(N,)`` radians, ``colour`` ``(N, 3)``), for tests and figures.

    ``dataset[i]`` is a dict: ``image`` (3, S, S) uint8, ``label``, ``mask`` (S, S) bool, ``box`` (4,),
    ``index``, ``on_habitat``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    context_masks: torch.Tensor
    parts: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    backgrounds: torch.Tensor
    surrounds: torch.Tensor
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
        return class_names_for(self.num_classes)


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


def _texture(bank, ids, x, y, phase, jitter):
    """The textures ``ids`` ``(B,)`` over the pixel grid ``x, y`` ``(B, S, S)``: ``(B, 3, S, S)`` float."""
    b = ids.shape[0]
    ang = bank["angle"][ids].view(b, 1, 1)
    freq = bank["frequency"][ids].view(b, 1, 1) * 2 * math.pi
    pa = (x * torch.cos(ang) + y * torch.sin(ang)) * freq + phase[:, 0].view(b, 1, 1)
    pb = (-x * torch.sin(ang) + y * torch.cos(ang)) * freq + phase[:, 1].view(b, 1, 1)
    stripes = 0.5 + 0.5 * torch.sin(pa)
    checker = (torch.sin(pa) * torch.sin(pb) > 0).float()
    dots = (torch.sin(pa) * torch.sin(pb) > 0.5).float()
    pattern = bank["pattern"][ids].view(b, 1, 1)
    t = torch.where(pattern == 0, stripes, torch.where(pattern == 1, checker, dots))
    c = bank["colours"][ids] * jitter.view(b, 1, 3)          # (B, 2, 3)
    return c[:, 0, :, None, None] * (1 - t[:, None]) + c[:, 1, :, None, None] * t[:, None]


def _patch_under(mask: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The ``layout="patch"`` context ``(B, S, S)`` bool: rows from one below the mask's lowest row to
    ``PATCH_HEIGHT * scale`` below it, columns over the mask's box widened by a quarter of its width on
    each side."""
    boxes = _mask_boxes(mask).to(x.dtype)
    b = mask.shape[0]
    x0, y0, x1, y1 = (boxes[:, i].view(b, 1, 1) for i in range(4))
    pad = 0.25 * (x1 - x0 + 1)
    return ((x >= x0 - pad) & (x <= x1 + pad) & (y >= y1 + 1)
            & (y <= y1 + PATCH_HEIGHT * scale.view(b, 1, 1)))


def _render_chunk(labels, backgrounds, surrounds, center, scale, angle, colour, texture_phase,
                  object_frequency, object_phase, colour_jitter, bank, size, part_radius, part_colours, layout):
    """Render one chunk. Returns background (B,3,S,S) float, foreground (B,3,S,S) float, mask (B,S,S),
    part (B,S,S), context (B,S,S)."""
    b = labels.shape[0]
    coords = torch.arange(size, dtype=torch.float32)
    y = coords.view(1, size, 1).expand(b, size, size)
    x = coords.view(1, 1, size).expand(b, size, size)
    # object
    dx = (x - center[:, 0].view(b, 1, 1)) / scale.view(b, 1, 1)
    dy = (y - center[:, 1].view(b, 1, 1)) / scale.view(b, 1, 1)
    ca, sa = torch.cos(angle).view(b, 1, 1), torch.sin(angle).view(b, 1, 1)
    u = ca * dx + sa * dy
    v = -sa * dx + ca * dy
    shape_ids = labels % len(SHAPES)
    mask = shape_indicator(shape_ids, u, v) >= 0
    shade = 0.8 + 0.2 * torch.sin(u * object_frequency.view(b, 1, 1) + object_phase.view(b, 1, 1))
    foreground = colour.view(b, 3, 1, 1) * shade[:, None]
    pc = _PART_CENTERS[shape_ids]
    part = mask & (((u - pc[:, 0].view(b, 1, 1)) ** 2 + (v - pc[:, 1].view(b, 1, 1)) ** 2) <= part_radius ** 2)
    if part_radius > 0:
        foreground = torch.where(part[:, None], part_colours[labels].view(b, 3, 1, 1), foreground)
    else:
        part = torch.zeros_like(mask)
    # context: the whole background, or a patch of the context texture on a neutral surround
    background = _texture(bank, surrounds, x, y, texture_phase, colour_jitter)
    if layout == "patch":
        context = _patch_under(mask, scale, x, y)
        patch = _texture(bank, backgrounds, x, y, texture_phase, colour_jitter)
        background = torch.where(context[:, None], patch, background)
    else:
        context = ~mask
    return background, foreground, mask, part, context


def _object_centres(n, s, scale, layout, placement, spread, g):
    """Object centres ``(N, 2)`` as (x, y) where each object (and its patch) fits inside the image."""
    margin = scale + 1.0
    low = torch.stack([margin, margin], dim=1)
    high = torch.stack([s - 1 - margin, s - 1 - margin - (PATCH_HEIGHT * scale if layout == "patch" else 0)],
                       dim=1)
    if placement == "uniform":
        return low + torch.rand(n, 2, generator=g) * (high - low)
    centre = (s - 1) / 2 + spread * s * torch.randn(n, 2, generator=g)
    return torch.maximum(torch.minimum(centre, high), low)


def make_synthetic(num_images: int = 1000, num_classes: int = 4, image_size: int = 96,
                   context: str = "habitat", habitat_p: float = 0.8, num_neutral: int = 2,
                   seed: int = 0, world_seed: int = 0, scale_range: Sequence[float] = (0.16, 0.3),
                   part_radius: float = 0.0, layout: str = "background", placement: str = "uniform",
                   spread: float = 0.15, chunk_size: int = 256, return_layers: bool = False):
    """Generate a synthetic WSOL split (see the module docstring for the context settings).

    Args:
        num_images: N, the number of images (one object each).
        num_classes: K in ``[2, 64]``; class k is the shape ``SHAPES[k % 8]`` with its part in hue
            ``k / K`` (K > 8 needs ``part_radius > 0``: classes sharing a shape differ by the part's colour).
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
        layout: ``"background"`` (the context is the whole background) or ``"patch"`` (a context patch
            under the object on a neutral surround; needs ``num_neutral >= 1``).
        placement: ``"uniform"`` or ``"centred"`` (normal around the image centre, see ``spread``).
        spread: standard deviation of the centred placement per axis, as a fraction of S.
        return_layers: also return ``(background, foreground)`` float ``(N, 3, S, S)`` in [0, 1]; the
            image is ``where(mask, foreground, background)`` quantised to uint8.

    Returns:
        A :class:`SyntheticWSOL` (and the layers when ``return_layers``).
    """
    _check_arguments(num_images=num_images, num_classes=num_classes, image_size=image_size, context=context,
                     habitat_p=habitat_p, num_neutral=num_neutral, seed=seed, world_seed=world_seed,
                     scale_range=scale_range, part_radius=part_radius, layout=layout, placement=placement,
                     spread=spread, chunk_size=chunk_size)
    num_textures = num_classes + num_neutral
    bank = _texture_bank(num_textures, world_seed)
    g = torch.Generator().manual_seed(int(seed))
    n, s = num_images, image_size
    labels = torch.randint(num_classes, (n,), generator=g)
    backgrounds = _draw_backgrounds(labels, num_classes, num_textures, context, habitat_p, g)
    lo, hi = scale_range
    scale = (lo + (hi - lo) * torch.rand(n, generator=g)) * s
    center = _object_centres(n, s, scale, layout, placement, spread, g)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    hue = torch.rand(n, generator=g)
    colour = _hsv_to_rgb(hue, 0.5 + 0.5 * torch.rand(n, generator=g), 0.6 + 0.4 * torch.rand(n, generator=g))
    texture_phase = torch.rand(n, 2, generator=g) * 2 * math.pi
    object_frequency = 2.0 + 6.0 * torch.rand(n, generator=g)
    object_phase = torch.rand(n, generator=g) * 2 * math.pi
    colour_jitter = 0.85 + 0.3 * torch.rand(n, 3, generator=g)
    if layout == "patch":        # the surround: a neutral texture
        surrounds = num_classes + torch.randint(num_neutral, (n,), generator=g)
    else:
        surrounds = backgrounds

    images = torch.empty(n, 3, s, s, dtype=torch.uint8)
    masks = torch.empty(n, s, s, dtype=torch.bool)
    context_masks = torch.empty(n, s, s, dtype=torch.bool)
    parts = torch.zeros(n, s, s, dtype=torch.bool)
    layers = (torch.empty(n, 3, s, s), torch.empty(n, 3, s, s)) if return_layers else None
    class_hues = torch.arange(num_classes, dtype=torch.float32) / num_classes
    part_colours = _hsv_to_rgb(class_hues, torch.ones(num_classes), torch.ones(num_classes))
    for start in range(0, n, chunk_size):
        sl = slice(start, min(start + chunk_size, n))
        bg, fg, m, part, context_mask = _render_chunk(
            labels[sl], backgrounds[sl], surrounds[sl], center[sl], scale[sl], angle[sl], colour[sl],
            texture_phase[sl], object_frequency[sl], object_phase[sl], colour_jitter[sl], bank, s,
            float(part_radius), part_colours, layout)
        parts[sl] = part
        context_masks[sl] = context_mask
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
        images=images, masks=masks, context_masks=context_masks, parts=parts, boxes=boxes, labels=labels,
        backgrounds=backgrounds, surrounds=surrounds, on_habitat=backgrounds == labels,
        params={"center": center, "scale": scale, "angle": angle, "colour": colour},
        num_classes=num_classes, num_textures=num_textures,
        settings=dict(num_images=n, num_classes=num_classes, image_size=s, context=context,
                      habitat_p=habitat_p, num_neutral=num_neutral, seed=seed, world_seed=world_seed,
                      scale_range=tuple(scale_range), part_radius=part_radius, layout=layout,
                      placement=placement, spread=spread),
    )
    return (dataset, layers) if return_layers else dataset


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_arguments(*, num_images, num_classes, image_size, context, habitat_p, num_neutral, seed,
                     world_seed, scale_range, part_radius, layout, placement, spread, chunk_size) -> None:
    """Refuse arguments of :func:`make_synthetic` that would fail late or draw wrong images."""
    for name, value, low in (("num_images", num_images, 1), ("image_size", image_size, 16),
                             ("num_neutral", num_neutral, 0), ("chunk_size", chunk_size, 1)):
        if not _is_integer(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("seed", seed), ("world_seed", world_seed)):
        if not _is_integer(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not _is_integer(num_classes) or not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be an integer in [2, {MAX_CLASSES}], got {num_classes!r}")
    if context not in ("habitat", "uniform", "swapped"):
        raise ValueError(f"context must be 'habitat', 'uniform' or 'swapped', got {context!r}")
    if not _is_real(habitat_p) or not 0.0 <= habitat_p <= 1.0:
        raise ValueError(f"habitat_p is a probability in [0, 1], got {habitat_p!r}")
    if context == "swapped" and num_classes + num_neutral < 3:
        raise ValueError("context='swapped' needs at least 3 textures (num_classes + num_neutral >= 3)")
    if not _is_real(part_radius) or not 0.0 <= part_radius <= 1.0:
        raise ValueError(f"part_radius is in object units (the object fits the unit disk): a number in "
                         f"[0, 1], got {part_radius!r}")
    if num_classes > len(SHAPES) and part_radius == 0:
        raise ValueError(f"num_classes={num_classes} > {len(SHAPES)} needs part_radius > 0: classes that share "
                         "a shape differ only by the colour of their part (try part_radius=0.4)")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "patch" and num_neutral < 1:
        raise ValueError("layout='patch' draws the surround from the neutral textures: num_neutral must be >= 1")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if not _is_real(spread) or not 0.0 < spread <= 1.0:
        raise ValueError(f"spread is the centred placement's standard deviation as a fraction of image_size: "
                         f"a number in (0, 1], got {spread!r}")
    pair = tuple(scale_range) if isinstance(scale_range, (list, tuple)) else None
    # radius + 1 px margin fits on both sides (and, for a patch, PATCH_HEIGHT radii below the object)
    largest = (image_size - 3) / ((2 + (PATCH_HEIGHT if layout == "patch" else 0)) * image_size)
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


def context_energy_share(maps: torch.Tensor, masks: torch.Tensor, context_masks: Optional[torch.Tensor] = None,
                         eps: float = 1e-12) -> torch.Tensor:
    """Share of each map's energy that falls outside the object, or on the context.

    Args:
        maps: ``(B, H, W)`` non-negative maps (e.g. normalised CAMs), same size as ``masks``.
        masks: ``(B, H, W)`` bool object masks.
        context_masks: ``(B, H, W)`` bool context masks (``dataset.context_masks``), or ``None``.

    Returns:
        ``(B,)`` float in [0, 1]: ``sum(map * ~mask) / sum(map)`` without ``context_masks``,
        ``sum(map * context) / sum(map)`` with them; an all-zero map gives 0. For comparison, a map
        spread evenly gives the background's (or the context's) area fraction.
    """
    if maps.shape != masks.shape or (context_masks is not None and context_masks.shape != masks.shape):
        shapes = f"maps {tuple(maps.shape)}, masks {tuple(masks.shape)}" + (
            "" if context_masks is None else f" and context_masks {tuple(context_masks.shape)}")
        raise ValueError(f"{shapes} must have the same (B, H, W) shape; upsample the maps to the mask size first")
    maps = maps.float().clamp_min(0)
    region = ~masks.bool() if context_masks is None else context_masks.bool()
    total = maps.flatten(1).sum(1)
    inside = (maps * region).flatten(1).sum(1)
    return torch.where(total > eps, inside / total.clamp_min(eps), torch.zeros_like(total))


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
