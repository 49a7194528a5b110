"""Turning user images into model inputs, and model inputs back into displayable pictures."""
from __future__ import annotations

from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _three(name: str, values) -> Tuple[float, float, float]:
    """Per-channel RGB values from 1 or 3 numbers."""
    values = (values,) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(values) not in (1, 3):
        raise ValueError(f"{name} needs 1 or 3 values (one per RGB channel), got {len(values)}")
    return tuple(float(v) for v in values) * (3 // len(values))


def resize_image(rgb: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """Resize a ``(3, H, W)`` float image in ``[0, 1]`` to ``size`` = ``(H', W')`` (``None``: keep it).

    The one image resize of camkit: bilinear with antialiasing (as torchvision's ``Resize`` on PIL
    images, ``align_corners=False``), clamped to ``[0, 1]``. Returns ``(3, H', W')``.
    """
    if size is None or tuple(rgb.shape[-2:]) == tuple(size):
        return rgb
    return F.interpolate(rgb[None], size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def resize_and_normalize(rgb: torch.Tensor, size: Optional[Tuple[int, int]], mean: Sequence[float],
                         std: Sequence[float]) -> torch.Tensor:
    """:func:`resize_image`, then ``(x - mean) / std`` per channel: ``(3, H, W)`` -> ``(3, H', W')``.

    Used by explain's :class:`Preprocess`, the WSOL evaluation transform and the training transforms.
    """
    rgb = resize_image(rgb, size)
    mean_t = torch.tensor(tuple(mean), dtype=rgb.dtype, device=rgb.device).view(-1, 1, 1)
    std_t = torch.tensor(tuple(std), dtype=rgb.dtype, device=rgb.device).view(-1, 1, 1)
    return (rgb - mean_t) / std_t


class PhotoFrame(NamedTuple):
    """Where a model input lies on the original photo.

    ``height, width``: the photo's size; ``box``: ``(x0, y0, x1, y1)`` the input's edges in photo pixels
    (floats, ``x1`` and ``y1`` exclusive), so input pixel column ``u`` of an ``S`` wide input covers photo
    columns ``x0 + u (x1 - x0) / S`` to ``x0 + (u + 1) (x1 - x0) / S``.
    """

    height: int
    width: int
    box: Tuple[float, float, float, float]


class Preprocess:
    """The standard ImageNet evaluation transform by default: resize, centre crop, normalise.

    The short side is resized to ``size / crop`` (256 for 224, keeping the aspect ratio, as
    torchvision's ``Resize(256)``), then the centre ``size`` is cropped (``CenterCrop(224)``). The map of
    a cropped input covers the centre of the photo; :meth:`frame` says where, and camkit's figures and
    :meth:`camkit.Explanation.photo_map` draw it there. ``crop=None`` resizes the whole picture to
    ``size`` instead (no crop, so the aspect ratio changes): the protocol of :func:`camkit.evaluate`
    (wsolevaluation's boxes are defined on a 224x224 resize).

    Args:
        size: ``(H, W)`` of the model input, or an int for a square; ``None`` keeps the size (no crop).
        mean, std: per-channel normalisation of RGB values in ``[0, 1]`` (3 values, or 1 for all).
        crop: the fraction of the resized picture kept by the centre crop (``0.875 = 224 / 256``), or
            ``None`` for no crop.

    Calling it on a PIL image, an ``(H, W, 3)`` uint8 array or a file path returns a ``(3, H, W)``
    float tensor. :meth:`to_display` inverts the normalisation for pictures.
    """

    def __init__(self, size=224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, crop: Optional[float] = 0.875):
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
        self.mean = _three("mean", mean)
        self.std = _three("std", std)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if crop is not None and not 0 < crop <= 1:
            raise ValueError(f"crop must be in (0, 1] (the centre fraction kept, 0.875 = 224/256) or None "
                             f"for no crop, got {crop!r}")
        self.crop = None if crop is None else float(crop)

    def __call__(self, image) -> torch.Tensor:
        rgb = torch.from_numpy(load_rgb(image)).permute(2, 0, 1).float().div(255)
        if self.size is None or self.crop is None:
            return resize_and_normalize(rgb, self.size, self.mean, self.std)
        (height, width), (top, left) = self._resized_size(*rgb.shape[-2:]), self._offsets(*rgb.shape[-2:])
        resized = resize_image(rgb, (height, width))
        cropped = resized[:, top:top + self.size[0], left:left + self.size[1]]
        return resize_and_normalize(cropped, None, self.mean, self.std)

    def frame(self, height: int, width: int) -> PhotoFrame:
        """The :class:`PhotoFrame` of a ``height x width`` photo: where this transform's input lies on it."""
        if self.size is None or self.crop is None:
            return PhotoFrame(height, width, (0.0, 0.0, float(width), float(height)))
        (resized_h, resized_w), (top, left) = self._resized_size(height, width), self._offsets(height, width)
        sy, sx = resized_h / height, resized_w / width
        return PhotoFrame(height, width, (left / sx, top / sy, (left + self.size[1]) / sx,
                                          (top + self.size[0]) / sy))

    def _resized_size(self, height: int, width: int) -> Tuple[int, int]:
        """The size before the crop: the picture scaled to cover ``size / crop`` (short side exact)."""
        target_h, target_w = (round(side / self.crop) for side in self.size)
        if target_h * width >= target_w * height:       # the height sets the scale (torchvision's integer form)
            return target_h, max(target_w, int(target_h * width / height))
        return max(target_h, int(target_w * height / width)), target_w

    def _offsets(self, height: int, width: int) -> Tuple[int, int]:
        """``(top, left)`` of the centre crop in the resized picture (torchvision's ``CenterCrop``)."""
        resized_h, resized_w = self._resized_size(height, width)
        return int(round((resized_h - self.size[0]) / 2.0)), int(round((resized_w - self.size[1]) / 2.0))

    def to_display(self, batch: torch.Tensor) -> Optional[np.ndarray]:
        """``(B, 3, H, W)`` normalised tensor -> ``(B, H, W, 3)`` float array in ``[0, 1]``.

        ``None`` for a tensor that is not ``(B, 3, H, W)`` (nothing to show as RGB).
        """
        if batch.dim() != 4 or batch.shape[1] != 3:
            return None
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        rgb = (batch.detach().float() * std + mean).clamp(0, 1)
        return rgb.permute(0, 2, 3, 1).cpu().numpy()

    def __repr__(self):
        return f"Preprocess(size={self.size}, mean={self.mean}, std={self.std}, crop={self.crop})"


class ImageReadError(ValueError):
    """An image file that cannot be decoded, or whose pixels have no unambiguous 8-bit RGB meaning."""


#: Pillow modes that convert to 8-bit RGB / L without a choice to make (alpha is dropped, as
#: wsolevaluation's ``convert("RGB")``).
_PLAIN_MODES = frozenset({"1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def pil_to_array(image: Image.Image, mode: str = "RGB", source: str = "image") -> np.ndarray:
    """The pixels of a PIL image as 8-bit ``mode`` (``"RGB"``: ``(H, W, 3)``, ``"L"``: ``(H, W)``) uint8.

    16-bit grey images (Pillow modes ``I;16*``) are scaled to 8 bits with ``round(v * 255 / 65535)``;
    32-bit float images (mode ``F``) must hold values in ``[0, 1]`` and become ``round(v * 255)``.
    Pillow itself decodes 16-bit RGB(A) PNGs to 8 bits (the high byte). Other modes (``I``: 32-bit
    integers, ``LAB``, ``HSV``, ...) have no fixed range or RGB meaning and raise
    :class:`ImageReadError` naming ``source`` and the mode; nothing is guessed.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(values * (255.0 / 65535.0)).astype(np.uint8), mode="L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size < values.size or finite.min() < 0 or finite.max() > 1:
            found = f"[{finite.min():g}, {finite.max():g}]" if finite.size else "no finite value"
            extra = " and NaN/inf" if finite.size < values.size and finite.size else ""
            raise ImageReadError(f"{source}: float pixels (mode 'F') must lie in [0, 1], found {found}{extra}; "
                                 f"rescale it to [0, 1] or save it as an 8-bit image")
        image = Image.fromarray(np.round(values * 255.0).astype(np.uint8), mode="L")
    elif image.mode not in _PLAIN_MODES:
        raise ImageReadError(f"{source}: Pillow mode {image.mode!r} has no fixed 8-bit RGB meaning; "
                             f"convert it to an 8-bit RGB or greyscale image (PNG, JPEG)")
    return np.array(image.convert(mode))


def read_image(path, mode: str = "RGB", exif_transpose: bool = False) -> np.ndarray:
    """Read an image file: the one place camkit opens image files.

    Args:
        path: the file.
        mode: ``"RGB"`` -> ``(H, W, 3)`` uint8, ``"L"`` -> ``(H, W)`` uint8 (see :func:`pil_to_array`
            for 16-bit and float files).
        exif_transpose: turn the picture upright by its EXIF orientation (photos); ``False`` keeps the
            stored pixel frame, the frame that dataset boxes and sizes refer to.

    Raises:
        FileNotFoundError: no file at ``path``.
        ImageReadError: the file is not an image, is corrupt or truncated, or has an unsupported mode;
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()   # decode now, so that a truncated or corrupt file fails here, by name
            image = ImageOps.exif_transpose(opened) if exif_transpose else opened
            return pil_to_array(image, mode, source=str(path))
    except UnidentifiedImageError as error:
        raise ImageReadError(f"{path} is not an image file Pillow can read") from error
    except (ImageReadError, PermissionError):
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(f"{path}: the image is corrupt or truncated ({error})") from error


def load_rgb(image, exif_transpose: bool = True) -> np.ndarray:
    """A PIL image, ``(H, W, 3)`` / ``(H, W)`` uint8 array or file path -> ``(H, W, 3)`` uint8 RGB.

    Files are read with :func:`read_image`. With ``exif_transpose`` (the default, for photos) files and
    PIL images are turned upright by their EXIF orientation; datasets pass ``False`` to keep the stored
    pixel frame their boxes refer to.
    """
    if isinstance(image, (str, Path)):
        return read_image(image, "RGB", exif_transpose=exif_transpose)
    if isinstance(image, Image.Image):
        return pil_to_array(ImageOps.exif_transpose(image) if exif_transpose else image, "RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 (H, W, 3) RGB, got dtype {image.dtype}; "
                            f"for float data pass a preprocessed torch tensor (B, 3, H, W)")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image arrays must have shape (H, W, 3), got {image.shape}")
        return np.ascontiguousarray(image[:, :, :3])
    raise TypeError(f"cannot read an image from {type(image).__name__}; give a tensor (B, 3, H, W), "
                    f"a PIL image, an (H, W, 3) uint8 array or a file path")


def as_batch(images, preprocess: Optional[Preprocess], spatial_dims: int = 2
             ) -> Tuple[torch.Tensor, Optional[np.ndarray]]:
    """Make a ``(B, C, H, W)`` float batch from a tensor or from raw images.

    ``spatial_dims`` is the number of spatial axes of a tensor input: 2 for images (the default),
    1 for signals ``(B, C, L)``, 3 for volumes and videos ``(B, C, D, H, W)``; one input without the
    batch axis is accepted too. Raw images are always 2-D.

    Returns:
        the batch and, when raw images were given and ``preprocess`` can invert itself, their
        ``(B, H, W, 3)`` display pictures (else ``None``).
    """
    return as_photo_batch(images, preprocess, spatial_dims)[:2]


def as_photo_batch(images, preprocess: Optional[Preprocess], spatial_dims: int = 2):
    """:func:`as_batch`, plus the photos and where the inputs lie on them.

    Returns:
        ``(batch, display, photos, frames)``: ``photos`` are the ``B`` original ``(H, W, 3)`` uint8
        pictures and ``frames`` their :class:`PhotoFrame` when raw images went through a ``preprocess``
        with a ``frame`` method (camkit's :class:`Preprocess`), else both ``None``.
    """
    if isinstance(images, torch.Tensor):
        batch = images.unsqueeze(0) if images.dim() == 1 + spatial_dims else images
        if batch.dim() != 2 + spatial_dims:
            wanted = {1: "(B, C, L) or (C, L)", 2: "(B, C, H, W) or (C, H, W)",
                      3: "(B, C, D, H, W) or (C, D, H, W)"}[spatial_dims]
            raise ValueError(f"images must have shape {wanted}, got {tuple(images.shape)}")
        if not batch.is_floating_point():
            raise TypeError(f"image tensors must be floating point and already preprocessed, got "
                            f"dtype {batch.dtype}; pass a PIL image, uint8 array or path to have "
                            f"camkit preprocess it")
        return batch, _display(batch, preprocess) if spatial_dims == 2 else None, None, None
    items: List = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("no images given")
    if all(isinstance(item, torch.Tensor) for item in items):   # a list of preprocessed (C, H, W)
        if len({tuple(item.shape) for item in items}) != 1 or items[0].dim() != 3:
            raise ValueError(f"a list of image tensors must hold (C, H, W) tensors of one shape, got "
                             f"{sorted({tuple(item.shape) for item in items})}")
        return as_photo_batch(torch.stack(items), preprocess, spatial_dims)
    if preprocess is None:
        raise ValueError("raw images need a preprocess callable (image -> (3, H, W) tensor)")
    photos = frames = None
    if callable(getattr(preprocess, "frame", None)):
        photos = [load_rgb(item) for item in items]     # decoded once; the transform reads the array
        frames = [preprocess.frame(*photo.shape[:2]) for photo in photos]
        items = photos
    batch = _stack_preprocessed([preprocess(item) for item in items])
    return batch, _display(batch, preprocess), photos, frames


def boxes_to_photo(boxes, frame: PhotoFrame, input_size: Tuple[int, int]) -> np.ndarray:
    """Inclusive ``(n, 4)`` pixel boxes on an ``input_size = (h, w)`` input -> the same pixels' boxes on
    the photo of ``frame`` (inclusive, clipped to the photo): ``x0 -> int(bx0 + x0 s)``,
    ``x1 -> int(bx0 + (x1 + 1) s) - 1`` with ``s`` the photo pixels per input pixel."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    (h, w), (bx0, by0, bx1, by1) = input_size, frame.box
    sx, sy = (bx1 - bx0) / w, (by1 - by0) / h
    out = np.stack([bx0 + boxes[:, 0] * sx, by0 + boxes[:, 1] * sy,
                    bx0 + (boxes[:, 2] + 1) * sx, by0 + (boxes[:, 3] + 1) * sy], axis=1)
    out = np.floor(out + 1e-9).astype(np.int64)
    out[:, 2:] -= 1
    out[:, 0::2] = np.clip(out[:, 0::2], 0, frame.width - 1)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, frame.height - 1)
    return out


def _display(batch: torch.Tensor, preprocess) -> Optional[np.ndarray]:
    return preprocess.to_display(batch) if hasattr(preprocess, "to_display") else None


def map_to_photo(saliency: np.ndarray, frame: PhotoFrame) -> np.ndarray:
    """An ``(h, w)`` map of a model input -> ``(H, W)`` on the photo of ``frame``; ``NaN`` outside the input.

    Each photo pixel whose centre lies inside the input's box takes the bilinear value of the map at
    that point (``align_corners=False``); the rest of the photo was not seen by the model.
    """
    saliency = np.asarray(saliency, dtype=np.float64)
    x0, y0, x1, y1 = frame.box
    h, w = saliency.shape
    u = (np.arange(frame.width) + 0.5 - x0) * w / (x1 - x0) - 0.5      # map coordinates of pixel centres
    v = (np.arange(frame.height) + 0.5 - y0) * h / (y1 - y0) - 0.5
    inside_u, inside_v = (u > -0.5) & (u < w - 0.5), (v > -0.5) & (v < h - 0.5)
    u, v = np.clip(u, 0, w - 1), np.clip(v, 0, h - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    u1, v1 = np.minimum(u0 + 1, w - 1), np.minimum(v0 + 1, h - 1)
    fu, fv = (u - u0)[None, :], (v - v0)[:, None]
    top = saliency[v0][:, u0] * (1 - fu) + saliency[v0][:, u1] * fu
    bottom = saliency[v1][:, u0] * (1 - fu) + saliency[v1][:, u1] * fu
    out = top * (1 - fv) + bottom * fv
    out[~(inside_v[:, None] & inside_u[None, :])] = np.nan
    return out


def _stack_preprocessed(images: List) -> torch.Tensor:
    """Stack what ``preprocess`` returned: one ``(C, H, W)`` float tensor per image, all one shape."""
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or not image.is_floating_point():
            got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise TypeError(f"preprocess returned {got} for image {index}; it must return a (C, H, W) "
                            f"float tensor (e.g. camkit.Preprocess(224))")
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        raise ValueError(f"preprocess returned images of different shapes {shapes}; give a preprocess "
                         f"that resizes to one size (e.g. camkit.Preprocess(224))")
    return torch.stack(images)


def run_model(model: torch.nn.Module, batch: torch.Tensor, shown_shape: Optional[tuple] = None):
    """``model(batch)``, with the input's shape named when the model rejects it.

    ``shown_shape`` is the shape named in the error when ``batch`` is a slice of the user's input
    (a one-image probe), so that the message speaks of the input the user gave.
    """
    try:
        return model(batch)
    except RuntimeError as error:
        shape = tuple(batch.shape) if shown_shape is None else tuple(shown_shape)
        raise RuntimeError(f"the model failed on an input batch of shape {shape} "
                           f"({batch.dtype}, {batch.device}): {error}. Check that the images are "
                           f"(B, C, H, W) with the channels, size and preprocessing the model expects.") from error
