"""Box checks, box IoU and box resizing with wsolevaluation's conventions.

Boxes are (n, 4) ``x0, y0, x1, y1`` in inclusive pixel coordinates: a box covers the pixels
``x0..x1`` and ``y0..y1``, so its area is ``(x1 - x0 + 1) * (y1 - y0 + 1)`` (the "+1" convention of
wsolevaluation, unlike torchvision's ``box_iou``, which uses ``(x1 - x0) * (y1 - y0)``). Everything here
works on numpy arrays and returns numpy arrays; torch tensors (on any device) are accepted and moved
to the CPU.
"""
from __future__ import annotations

import numpy as np

__all__ = ["validate_boxes", "box_iou", "resize_boxes"]


def _to_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _box_array(boxes, name="boxes"):
    """``boxes`` (4,) or (n, 4) (numpy, torch or nested lists) as a float64 (n, 4) array; raises
    ``ValueError`` for another shape, a non-numeric dtype or a non-finite coordinate."""
    b = _to_numpy(boxes)
    if b.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers x0, y0, x1, y1, got dtype {b.dtype}")
    if b.shape in ((0,), (0, 4)):
        return np.zeros((0, 4), np.float64)
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name} must have shape (n, 4) (x0, y0, x1, y1 per row) or (4,), got shape {b.shape}")
    b = b.astype(np.float64)
    if not np.isfinite(b).all():
        raise ValueError(f"{name} contain NaN or infinite coordinates: {b[~np.isfinite(b).all(1)].tolist()}")
    return b


def validate_boxes(boxes):
    """Check boxes and return them as an int64 (n, 4) array.

    Args:
        boxes: (n, 4) or (4,) x0, y0, x1, y1, whole pixel indices (numpy, torch or lists).
    Returns:
        int64 (n, 4) array ((0, 4) for no boxes).
    Raises:
        ValueError: for another shape, non-finite or fractional coordinates, or x1 < x0 or y1 < y0.
    """
    b = _box_array(boxes)
    fractional = (b != np.trunc(b)).any(1)
    if fractional.any():
        raise ValueError(f"box coordinates must be whole pixel indices, got {b[fractional].tolist()}; "
                         "convert them first (wsolevaluation truncates with int(), e.g. resize_boxes)")
    b = b.astype(np.int64)
    bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        raise ValueError(f"invalid boxes (need x0 <= x1 and y0 <= y1, format x0,y0,x1,y1): {b[bad].tolist()}")
    return b


def _pairwise_iou(a, b):
    """IoU (n, m) float64 of float64 boxes ``a`` (n, 4) and ``b`` (m, 4), inclusive "+1" areas."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    inter_w = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1, 0)
    inter_h = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1, 0)
    inter = inter_w * inter_h
    union = area_a[:, None] + area_b[None, :] - inter
    ok = union > 0
    safe = union * ok + (~ok) * 1.0
    return inter / safe * ok


def box_iou(boxes_a, boxes_b):
    """IoU of every pair of boxes, inclusive +1, unlike torchvision: areas ``(x1-x0+1)*(y1-y0+1)``.

    Args:
        boxes_a: (n, 4) or (4,) x0, y0, x1, y1 (numpy, torch on any device, or lists).
        boxes_b: (m, 4) or (4,), the same format.
    Returns:
        (n, m) float64 numpy array, whatever the input type (as wsolevaluation's
        ``calculate_multiple_iou``). The IoU is 0 where the union is <= 0 (e.g. for the degenerate box
        ``[1, 1, 0, 0]``, whose area is 0).
    Raises:
        ValueError: for a shape other than (n, 4) or (4,), or a NaN / infinite coordinate.
    """
    return _pairwise_iou(_box_array(boxes_a, "boxes_a"), _box_array(boxes_b, "boxes_b"))


def resize_boxes(boxes, original_size, new_size):
    """Rescale boxes like wsolevaluation: ``int(x * new_w / orig_w)`` and ``int(y * new_h / orig_h)``.

    Args:
        boxes: (n, 4) or (4,) x0, y0, x1, y1 in the original frame.
        original_size, new_size: ``(width, height)``, positive numbers.
    Returns:
        int64 (n, 4). Example: ``resize_boxes([[1,2,4,3]], (10, 20), (35, 10)) -> [[3, 1, 14, 1]]``.
    """
    b = _box_array(boxes)
    ow, oh = _image_size(original_size, "original_size")
    nw, nh = _image_size(new_size, "new_size")
    new = np.array([nw, nh, nw, nh], dtype=np.float64)
    old = np.array([ow, oh, ow, oh], dtype=np.float64)
    return np.trunc(b * new / old).astype(np.int64)  # (x * new) / old, in that order, as the reference


def _image_size(size, name):
    """``(width, height)`` as two positive finite floats, or ``ValueError``."""
    s = _to_numpy(size)
    if s.shape != (2,) or s.dtype.kind not in "iuf" or not (np.isfinite(s) & (s > 0)).all():
        raise ValueError(f"{name} must be (width, height), two positive numbers, got {np.asarray(size).tolist()!r}")
    return float(s[0]), float(s[1])
