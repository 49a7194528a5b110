"""Streaming WSOL metrics with clovaai/wsolevaluation's semantics.

Every metric keeps integer counts or histograms only, so

* it streams over any dataset size in constant memory;
* ``a.merge(b)`` of two shards equals one metric updated with both, exactly;
* ``all_reduce()`` sums the state over ``torch.distributed`` ranks (gloo or nccl), exactly.

Metrics: :class:`MaxBoxAcc` (V1 / V2), :class:`LocalizationAccuracy` (GT-known, Top-1 / Top-5 Loc;
best-threshold and fixed-threshold protocols), :class:`PxAP` (with pIoU) and :class:`PeakIoU`.

One input policy for all of them:

* options are checked when a metric is built (``0 < cam_curve_interval < 1``, non-empty IoU thresholds
  in (0, 100], ``multi_contour`` a bool, ...), so a metric that exists can always compute;
* every update checks its inputs against the score maps -- one ground-truth box set per map with at
  least one box (an image without a box is refused, not counted as a miss: drop it or use a mask
  metric), one logits row and one label in [0, K) per map, masks of the maps' shape holding only 0, 1
  and ``ignore_index`` -- and raises ``ValueError`` naming the problem, with the state unchanged;
* an empty batch (B = 0) is a no-op.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from camkit.distributed import all_reduce_sum
from camkit.boxes import box_rule as _box_rule, thresholds_for_interval, validate_boxes
from camkit.faithfulness import AverageDrop, DeletionInsertion, ROAD  # noqa: F401  (re-exported)

__all__ = ["MaxBoxAcc", "LocalizationAccuracy", "PxAP", "PeakIoU", "max_box_accuracy", "pixel_average_precision",
           "DeletionInsertion", "ROAD", "AverageDrop"]


# ------------------------------------------------------------------------------- configuration checks
def _scalar(value):
    """A 0-d numpy array or torch tensor as its Python number; anything else unchanged."""
    return value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else value


def _is_real_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_integral_number(value):
    return _is_real_number(value) and float(value) == int(value)


def _checked_iou_percent(value, name):
    """An IoU threshold in percent: a whole number in (0, 100]."""
    value = _scalar(value)
    if not _is_integral_number(value) or not 0 < value <= 100:
        raise ValueError(f"{name} must be whole IoU percentages in (0, 100] (e.g. 50 for IoU >= 0.5), "
                         f"got {value!r}")
    return int(value)


def _checked_iou_thresholds(iou_thresholds):
    """A non-empty tuple of distinct IoU percentages."""
    values = () if isinstance(iou_thresholds, (str, bytes)) or not hasattr(iou_thresholds, "__iter__") \
        else tuple(iou_thresholds)
    if not values:
        raise ValueError(f"iou_thresholds must be a non-empty sequence of IoU percentages, e.g. (30, 50, 70), "
                         f"got {iou_thresholds!r}")
    deltas = tuple(_checked_iou_percent(d, "iou_thresholds") for d in values)
    if len(set(deltas)) != len(deltas):
        raise ValueError(f"iou_thresholds must be distinct, got {iou_thresholds!r}")
    return deltas


def _checked_multi_contour(multi_contour):
    if multi_contour not in (True, False):
        raise ValueError(f"multi_contour must be True (V2: every contour's box) or False (V1: the largest "
                         f"contour's box), got {multi_contour!r}")
    return bool(multi_contour)


def _checked_ignore_index(ignore_index):
    ignore_index = _scalar(ignore_index)
    if not _is_integral_number(ignore_index) or ignore_index in (0, 1):
        raise ValueError(f"ignore_index must be a whole number other than 0 and 1 (the mask value of ignored "
                         f"pixels, 255 in wsolevaluation), got {ignore_index!r}")
    return int(ignore_index)


def _checked_fixed_threshold(fixed_threshold, rule):
    fixed_threshold = _scalar(fixed_threshold)
    if fixed_threshold is not None and (not _is_real_number(fixed_threshold) or not 0 <= fixed_threshold <= 1):
        raise ValueError(f"fixed_threshold must be None or a CAM threshold in [0, 1], got {fixed_threshold!r}")
    if fixed_threshold is not None and not rule.sweep:
        raise ValueError(f"fixed_threshold reads the threshold sweep; box_rule={rule.name!r} sets its own threshold: "
                         f"drop fixed_threshold (or use box_rule='fixed:{fixed_threshold}' alone)")
    return fixed_threshold


# ------------------------------------------------------------------------------------ input checks
def _to_numpy(x):
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)


def _maps_numpy(score_maps):
    """Score maps ``(B, H, W)`` or ``(H, W)`` as a numpy (B, H, W) array (values are checked per map)."""
    maps = _to_numpy(score_maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"score maps must be (B, H, W) or (H, W), got shape {maps.shape}")
    return maps


def _split_boxes(gt_boxes, batch):
    """``gt_boxes``: a length-B list of (g_i, 4) (or (4,)) box sets, a (B, g, 4) array/tensor, or a (B, 4)
    one with one box per image. Returns B int64 (g_i, 4) arrays; every image needs at least one box."""
    if isinstance(gt_boxes, (list, tuple)):
        sets = list(gt_boxes)
    else:
        arr = _to_numpy(gt_boxes)
        if arr.ndim == 2 and arr.shape[-1] == 4:
            arr = arr[:, None]
        if arr.ndim != 3 or arr.shape[-1] != 4:
            raise ValueError(f"gt_boxes must be a list of (g_i, 4) box sets, a (B, g, 4) or a (B, 4) array, "
                             f"got shape {arr.shape}")
        sets = list(arr)
    if len(sets) != batch:
        raise ValueError(f"got {len(sets)} ground-truth box sets for {batch} score maps; give one (g_i, 4) per map")
    out = []
    for i, boxes in enumerate(sets):
        try:
            b = validate_boxes(boxes)
        except ValueError as err:
            raise ValueError(f"image {i}: {err}") from None
        if len(b) == 0:
            raise ValueError(f"image {i} has no ground-truth box; box metrics need at least one per image (as in "
                             "wsolevaluation): drop the image from the box metrics or evaluate it with a mask "
                             "metric (PxAP, PeakIoU)")
        out.append(b)
    return out


def _curves_of_batch(maps, boxes, curve):
    """``curve(map, boxes)`` for every image, stacked (B, T); a bad map's error names its image."""
    rows = []
    for i, (m, b) in enumerate(zip(maps, boxes)):
        try:
            rows.append(curve(m, b))
        except ValueError as err:
            raise ValueError(f"image {i}: {err}") from None
    return np.stack(rows)


def _checked_curves(iou_curves, n_thresholds):
    """Best-IoU curves ``(N, T)`` (or ``(T,)`` for one image) as a float64 (N, T) tensor in [0, 1]."""
    curves = np.asarray(_to_numpy(iou_curves), dtype=np.float64)
    if curves.ndim == 1 and curves.size == n_thresholds:
        curves = curves[None]
    if curves.size == 0 and curves.ndim <= 2 and (curves.ndim < 2 or curves.shape[1] in (0, n_thresholds)):
        curves = curves.reshape(0, n_thresholds)
    if curves.ndim != 2 or curves.shape[1] != n_thresholds:
        raise ValueError(f"iou_curves must have shape (N, {n_thresholds}) (one IoU per image and threshold of "
                         f"this metric's grid), got {curves.shape}")
    if not ((curves >= 0) & (curves <= 1)).all():
        raise ValueError("iou_curves must hold IoUs in [0, 1] (no NaN); see camkit.boxes.iou_curves")
    return torch.as_tensor(curves)


def _checked_logits_labels(logits, labels, batch):
    """``logits`` (B, K) and integer ``labels`` (B,) in [0, K), checked against ``batch`` images; for an
    empty batch both must be empty. Returns CPU tensors (logits, int64 labels)."""
    logits = torch.as_tensor(logits).detach().cpu()
    labels = torch.as_tensor(labels).detach().cpu()
    if batch == 0 and logits.numel() == 0 and labels.numel() == 0:
        return logits, labels.reshape(0).long()
    if logits.dim() != 2 or logits.shape[0] != batch or logits.shape[1] == 0:
        raise ValueError(f"logits must be (B, K) with B = {batch} (one row per score map), got shape "
                         f"{tuple(logits.shape)}")
    if logits.is_floating_point() and torch.isnan(logits).any():
        raise ValueError("logits contain NaN; fix the model output before scoring it")
    if labels.dim() > 1 or labels.numel() != batch:
        raise ValueError(f"labels must be (B,) with B = {batch} (one class index per score map), got shape "
                         f"{tuple(labels.shape)}")
    labels = labels.reshape(-1)
    if labels.dtype == torch.bool or labels.is_complex() or (labels.is_floating_point() and
                                                             not (labels == labels.round()).all()):
        raise ValueError(f"labels must be whole class indices, got {labels.tolist()[:10]}")
    labels = labels.long()
    bad = (labels < 0) | (labels >= logits.shape[1])
    if bad.any():
        raise ValueError(f"labels must be class indices in [0, {logits.shape[1]}) (the logits' columns), got "
                         f"{labels[bad].tolist()[:10]}")
    return logits, labels


def _dense_maps_and_masks(score_maps, masks, ignore_index):
    """Score maps ``(B, H, W)`` or ``(H, W)`` in [0, 1] and masks of the same shape with values 0
    (background), 1 (foreground) and ``ignore_index``, as tensors on the maps' device; raises
    ``ValueError`` for NaN/inf, values outside [0, 1], other mask values, or mismatched shapes."""
    maps = torch.as_tensor(score_maps).detach()
    masks = torch.as_tensor(masks, device=maps.device).detach()
    if maps.dim() not in (2, 3):
        raise ValueError(f"score maps must be (B, H, W) or (H, W), got shape {tuple(maps.shape)}")
    if maps.shape != masks.shape:
        raise ValueError(f"score maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have the same shape")
    if maps.numel() == 0 and not (maps.dim() == 3 and maps.shape[0] == 0):
        raise ValueError(f"score maps of shape {tuple(maps.shape)} are empty; give (B, H, W) maps with H, W >= 1 "
                         "(an empty batch is (0, H, W))")
    if not torch.isfinite(maps).all():
        raise ValueError("score maps contain NaN or infinite values")
    if maps.numel() and (maps.min() < 0 or maps.max() > 1):
        raise ValueError(f"score map values must lie in [0, 1], got range [{float(maps.min())}, "
                         f"{float(maps.max())}]; normalise them first (e.g. per-image min-max)")
    other = (masks != 0) & (masks != 1) & (masks != ignore_index)
    if other.any():
        values = torch.unique(masks[other]).cpu().tolist()
        raise ValueError(f"mask values must be 0 (background), 1 (foreground) or {ignore_index} (ignored), got "
                         f"other values {values[:10]}; binarise the masks first (e.g. (mask > 0).to(torch.uint8))")
    return maps, masks


class _Mergeable:
    """Shared merge / all_reduce over the integer state tensors named in ``_state``."""

    _state: tuple = ()

    def _check_compatible(self, other):
        if type(other) is not type(self) or self._config() != other._config():
            raise ValueError(f"cannot merge {type(other).__name__}{other._config()} into "
                             f"{type(self).__name__}{self._config()}: configurations differ")

    def merge(self, other):
        """Add the state of ``other`` (same class and configuration) into this one. Returns ``self``."""
        self._check_compatible(other)
        for name in self._state:
            setattr(self, name, getattr(self, name) + getattr(other, name).to(getattr(self, name).device))
        return self

    def all_reduce(self):
        """Sum the state over all distributed ranks (in place). Returns ``self``."""
        flat = torch.cat([getattr(self, n).reshape(-1).to(torch.int64) for n in self._state])
        flat = all_reduce_sum(flat)
        offset = 0
        for name in self._state:
            cur = getattr(self, name)
            setattr(self, name, flat[offset:offset + cur.numel()].reshape(cur.shape).to(cur.device))
            offset += cur.numel()
        return self

    def reset(self):
        self.__init__(**self._config_kwargs())
        return self


class MaxBoxAcc(_Mergeable):
    """MaxBoxAcc (Choe et al. 2020). V2: ``multi_contour=True``, deltas (30, 50, 70); V1: single contour, 50.

    ``update(score_maps (B, H, W) in [0, 1], gt_boxes)``; gt boxes (g_i, 4) x0,y0,x1,y1 per map, in the
    maps' pixel frame (224x224 under the standard protocol), at least one per image. An image is correct
    at delta and tau when the best IoU over its boxes x GT boxes is >= delta/100. ``compute()`` returns
    ``"MaxBoxAcc@{delta}"`` (max over tau of the percent correct), ``"best_threshold@{delta}"`` (first tau
    attaining it), the mean over the deltas -- ``"MaxBoxAccV2"`` for V2, ``"MaxBoxAcc"`` for V1 (the
    paper's MaxBoxAcc with ``iou_thresholds=(50,)``) -- and ``"curve"`` ((D, T) percent correct).

    ``box_rule`` (:func:`camkit.boxes.box_rule`): ``"wsol"`` (default) is the sweep above; any other rule
    sets its own threshold, so nothing is swept: the best IoU is over the rule's boxes x GT boxes, and
    ``compute()`` returns ``"BoxAcc@{delta}"`` (percent with IoU >= delta/100), their mean ``"BoxAcc"`` and
    ``"box_rule"`` (no MaxBoxAcc key, threshold or curve); ``multi_contour`` applies to the sweep only.

    Options are checked when the metric is built: ``iou_thresholds`` a non-empty sequence of distinct
    whole percentages in (0, 100], ``0 < cam_curve_interval < 1``, ``multi_contour`` a bool, ``box_rule``
    a valid rule. An empty batch (B = 0) is a no-op; any refused input leaves the counts unchanged.
    """

    _state = ("counts", "num_images")

    def __init__(self, iou_thresholds=(30, 50, 70), cam_curve_interval=0.001, multi_contour=True, box_rule="wsol"):
        self.iou_thresholds = _checked_iou_thresholds(iou_thresholds)
        self.thresholds = thresholds_for_interval(cam_curve_interval)
        self.cam_curve_interval = cam_curve_interval
        self.multi_contour = _checked_multi_contour(multi_contour)
        self.box_rule = _box_rule(box_rule)
        self.counts = torch.zeros(len(self.iou_thresholds), self.box_rule.columns(self.thresholds), dtype=torch.int64)
        self.num_images = torch.zeros((), dtype=torch.int64)

    def _config(self):
        return (self.iou_thresholds, self.cam_curve_interval, self.multi_contour, self.box_rule)

    def _config_kwargs(self):
        return dict(iou_thresholds=self.iou_thresholds, cam_curve_interval=self.cam_curve_interval,
                    multi_contour=self.multi_contour, box_rule=self.box_rule)

    def update_from_curves(self, iou_curves):
        """Add images given their best-IoU curves (N, T) or (T,) in [0, 1] on this metric's threshold grid
        (see :func:`camkit.boxes.best_iou_per_threshold`); (N, 1) best IoUs under a box rule."""
        curves = _checked_curves(iou_curves, self.counts.shape[1])
        deltas = torch.tensor(self.iou_thresholds, dtype=torch.float64) / 100
        self.counts += (curves[None] >= deltas[:, None, None]).sum(1)
        self.num_images += curves.shape[0]
        return self

    def update(self, score_maps, gt_boxes):
        """Add a batch: ``score_maps`` (B, H, W) or (H, W) in [0, 1], ``gt_boxes`` one (g_i, 4) set per map."""
        maps = _maps_numpy(score_maps)
        boxes = _split_boxes(gt_boxes, maps.shape[0])
        if not boxes:
            return self
        return self.update_from_curves(_curves_of_batch(maps, boxes, self._curve))

    def _curve(self, score_map, boxes):
        return self.box_rule.curve(score_map, boxes, self.thresholds, self.multi_contour)

    def compute(self):
        n = int(self.num_images)
        if n == 0:
            raise RuntimeError("MaxBoxAcc.compute() before any update(); feed some score maps first")
        acc = self.counts.to(torch.float64).numpy() * 100 / n
        out = {}
        if not self.box_rule.sweep:
            out = {f"BoxAcc@{d}": float(acc[k, 0]) for k, d in enumerate(self.iou_thresholds)}
            return {**out, "BoxAcc": float(np.mean(acc[:, 0])), "box_rule": self.box_rule.name, "num_images": n}
        for k, d in enumerate(self.iou_thresholds):
            i = int(np.argmax(acc[k]))
            out[f"MaxBoxAcc@{d}"] = float(acc[k, i])
            out[f"best_threshold@{d}"] = float(self.thresholds[i])
        mean_key = "MaxBoxAccV2" if self.multi_contour else "MaxBoxAcc"
        out[mean_key] = float(np.mean([out[f"MaxBoxAcc@{d}"] for d in self.iou_thresholds]))
        out["curve"] = acc
        out["num_images"] = n
        return out


class LocalizationAccuracy(_Mergeable):
    """GT-known, Top-1 and Top-5 localisation accuracy (percent).

    Per image: the best-IoU curve of the *GT-class* map (boxes by ``multi_contour``, default V1 = one box
    as in the CAM paper), whether the label is the top-1 prediction, and whether it is in the top-5.
    An image is GT-known correct at tau if IoU >= delta/100; Top-k Loc correct if also the label is in the
    top-k predictions (then the predicted class's map is the GT-class map).

    Protocols: *best threshold* -- ``"GT-known"`` is the max over tau and ``"Top-1 Loc"`` / ``"Top-5 Loc"``
    are read at the tau that maximises GT-known (``"best_threshold"``); *fixed threshold* -- when
    ``fixed_threshold`` is given, ``"GT-known@fixed"``, ``"Top-1 Loc@fixed"``, ``"Top-5 Loc@fixed"`` at the
    nearest curve threshold. ``"Top-1 Cls"`` / ``"Top-5 Cls"`` are the classification accuracies.

    ``box_rule`` other than ``"wsol"`` (see :class:`MaxBoxAcc`): GT-known and Top-k Loc at the rule's boxes,
    ``"box_rule"`` instead of ``"best_threshold"``, (N, 1) curves; ``fixed_threshold`` is then refused.

    Options are checked when the metric is built (``iou_threshold`` a whole percentage in (0, 100],
    ``0 < cam_curve_interval < 1``, ``multi_contour`` a bool, ``fixed_threshold`` None or in [0, 1]).
    Inputs are checked against the maps: one box set (at least one box), one logits row (B, K) and one
    label in [0, K) per map. An empty batch is a no-op; any refused input leaves the counts unchanged.
    """

    _state = ("counts", "cls_counts", "num_images")

    def __init__(self, iou_threshold=50, cam_curve_interval=0.001, multi_contour=False, fixed_threshold=None,
                 box_rule="wsol"):
        self.iou_threshold = _checked_iou_percent(iou_threshold, "iou_threshold")
        self.thresholds = thresholds_for_interval(cam_curve_interval)
        self.cam_curve_interval = cam_curve_interval
        self.multi_contour = _checked_multi_contour(multi_contour)
        self.box_rule = _box_rule(box_rule)
        self.fixed_threshold = _checked_fixed_threshold(fixed_threshold, self.box_rule)
        self.counts = torch.zeros(3, self.box_rule.columns(self.thresholds), dtype=torch.int64)  # gt-known, top1, top5
        self.cls_counts = torch.zeros(2, dtype=torch.int64)
        self.num_images = torch.zeros((), dtype=torch.int64)

    def _config(self):
        return (self.iou_threshold, self.cam_curve_interval, self.multi_contour, self.fixed_threshold, self.box_rule)

    def _config_kwargs(self):
        return dict(iou_threshold=self.iou_threshold, cam_curve_interval=self.cam_curve_interval,
                    multi_contour=self.multi_contour, fixed_threshold=self.fixed_threshold, box_rule=self.box_rule)

    def update_from_curves(self, iou_curves, logits, labels):
        """``iou_curves`` (N, T) of the GT-class maps, ``logits`` (N, K), ``labels`` (N,) ints in [0, K)."""
        curves = _checked_curves(iou_curves, self.counts.shape[1])
        logits, labels = _checked_logits_labels(logits, labels, curves.shape[0])
        if curves.shape[0] == 0:
            return self
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        top1 = topk[:, 0] == labels
        top5 = (topk == labels[:, None]).any(1)
        ok = curves >= self.iou_threshold / 100
        self.counts[0] += ok.sum(0)
        self.counts[1] += (ok & top1[:, None]).sum(0)
        self.counts[2] += (ok & top5[:, None]).sum(0)
        self.cls_counts += torch.stack([top1.sum(), top5.sum()])
        self.num_images += curves.shape[0]
        return self

    def update(self, gt_class_maps, gt_boxes, logits, labels):
        """``gt_class_maps`` (B, H, W) in [0, 1]: the maps of the ground-truth classes."""
        maps = _maps_numpy(gt_class_maps)
        boxes = _split_boxes(gt_boxes, maps.shape[0])
        logits, labels = _checked_logits_labels(logits, labels, maps.shape[0])  # before the costly curves
        if not boxes:
            return self
        return self.update_from_curves(_curves_of_batch(maps, boxes, self._curve), logits, labels)

    def _curve(self, score_map, boxes):
        return self.box_rule.curve(score_map, boxes, self.thresholds, self.multi_contour)

    def compute(self):
        n = int(self.num_images)
        if n == 0:
            raise RuntimeError("LocalizationAccuracy.compute() before any update()")
        acc = self.counts.to(torch.float64).numpy() * 100 / n
        i = int(np.argmax(acc[0]))
        out = {"GT-known": float(acc[0, i]), "Top-1 Loc": float(acc[1, i]), "Top-5 Loc": float(acc[2, i]),
               "Top-1 Cls": float(self.cls_counts[0]) * 100 / n, "Top-5 Cls": float(self.cls_counts[1]) * 100 / n,
               "num_images": n}
        if not self.box_rule.sweep:
            out["box_rule"] = self.box_rule.name
            return out
        out["best_threshold"] = float(self.thresholds[i])
        if self.fixed_threshold is not None:
            j = int(np.argmin(np.abs(self.thresholds - self.fixed_threshold)))
            out.update({"GT-known@fixed": float(acc[0, j]), "Top-1 Loc@fixed": float(acc[1, j]),
                        "Top-5 Loc@fixed": float(acc[2, j]), "fixed_threshold": float(self.thresholds[j])})
        return out


class PxAP(_Mergeable):
    """Pixel average precision (Choe et al. 2020) and pIoU, from dataset-level histograms.

    ``update(score_maps (B, H, W) in [0, 1], masks (B, H, W))`` with mask values 1 (foreground),
    0 (background) and 255 (ignored). Scores are binned on the edges ``arange(0, 1, interval) + [1, 2, 3]``
    (``np.histogram`` semantics: ``[e_i, e_{i+1})``, last bin closed), separately for GT-positive and
    GT-negative pixels, on the maps' device. ``compute()``: ``"PxAP"`` = 100 * sum_i precision_i *
    (recall_i - recall_{i-1}) over the bins with TP+FP > 0 (curve from the highest threshold down) and
    ``"pIoU"`` = 100 * max over thresholds of TP / (TP + FP + FN).

    Masks may hold only 0, 1 and ``ignore_index`` (other values are refused, naming them, as in
    :class:`PeakIoU`); ``0 < cam_curve_interval < 1`` is checked when the metric is built. An empty
    batch is a no-op; any refused input leaves the histograms unchanged.
    """

    _state = ("hist_pos", "hist_neg")

    def __init__(self, cam_curve_interval=0.001, ignore_index=255):
        self.edges = np.concatenate([thresholds_for_interval(cam_curve_interval), [1.0, 2.0, 3.0]])
        self.cam_curve_interval = cam_curve_interval
        self.ignore_index = _checked_ignore_index(ignore_index)
        n_bins = len(self.edges) - 1
        self.hist_pos = torch.zeros(n_bins, dtype=torch.int64)
        self.hist_neg = torch.zeros(n_bins, dtype=torch.int64)

    def _config(self):
        return (self.cam_curve_interval, self.ignore_index)

    def _config_kwargs(self):
        return dict(cam_curve_interval=self.cam_curve_interval, ignore_index=self.ignore_index)

    def update(self, score_maps, masks):
        """Add a batch: ``score_maps`` (B, H, W) or (H, W) in [0, 1], ``masks`` of the same shape."""
        maps, masks = _dense_maps_and_masks(score_maps, masks, self.ignore_index)
        if maps.numel() == 0:
            return self
        dev = maps.device
        edges = torch.as_tensor(self.edges, dtype=torch.float64, device=dev)
        v = maps.to(torch.float64).reshape(-1)
        m = masks.reshape(-1)
        n_bins = len(self.edges) - 1
        idx = torch.bucketize(v, edges, right=True) - 1
        idx = torch.where(v == edges[-1], torch.full_like(idx, n_bins - 1), idx)  # last bin is closed
        inside = (idx >= 0) & (idx < n_bins)
        for value, hist in ((1, "hist_pos"), (0, "hist_neg")):
            sel = inside & (m == value)
            setattr(self, hist, getattr(self, hist).to(dev) + torch.bincount(idx[sel], minlength=n_bins))
        return self

    def compute(self):
        pos = self.hist_pos.cpu().numpy().astype(np.float64)
        neg = self.hist_neg.cpu().numpy().astype(np.float64)
        num_pos = pos.sum()
        if num_pos <= 0:
            raise RuntimeError("PxAP needs at least one foreground (mask == 1) pixel")
        tp = pos[::-1].cumsum()
        fp = neg[::-1].cumsum()
        fn = num_pos - tp
        nonzero = (tp + fp) != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / (tp + fp)
        recall = tp / num_pos
        auc = (precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100
        iou = tp / (tp + fp + fn)
        return {"PxAP": float(auc), "pIoU": float(iou.max() * 100),
                # tp[i] counts the bins from len-1-i up: the prediction is score >= edges[len-1-i]
                "pIoU_threshold": float(self.edges[len(iou) - 1 - int(np.argmax(iou))])}


_FIXED_POINT = 2 ** 40  # per-image IoUs are summed in fixed point so that merging stays exact


class PeakIoU(_Mergeable):
    """Peak-IoU (LID, Zhang et al. 2020): max over t = 0..255 of IoU(mask, uint8(255*map) >= t).

    ``update(score_maps (B, H, W) in [0, 1], masks (B, H, W))`` (1 fg, 0 bg, 255 ignored), batched in torch
    on the maps' device. ``reduction`` picks ``"PeakIoU"``:

    * ``"per_image"`` (default): the mean over images of each image's peak IoU (percent);
    * ``"pooled"``: the peak of the dataset-level curve sum(I_t) / sum(U_t).

    Both are always returned too (``"PeakIoU_per_image"``, ``"PeakIoU_pooled"``), with the curves
    (``"curve_per_image"``: mean IoU per t; ``"curve_pooled"``) and the peak thresholds
    (``"peak_threshold_pooled"``, ``"peak_threshold_histogram"``: per-image argmax counts). Per-image IoUs
    are accumulated as integers in units of 2**-40, so sums are exact and merge/all_reduce are exact.

    Masks may hold only 0, 1 and ``ignore_index`` (other values are refused, naming them, as in
    :class:`PxAP`). An empty batch is a no-op; any refused input leaves the state unchanged.
    """

    _state = ("sum_peak", "sum_curve", "inter", "union", "peak_hist", "num_images")

    def __init__(self, reduction="per_image", ignore_index=255):
        if reduction not in ("per_image", "pooled"):
            raise ValueError(f"reduction must be 'per_image' or 'pooled', got {reduction!r}")
        self.reduction = reduction
        self.ignore_index = _checked_ignore_index(ignore_index)
        self.sum_peak = torch.zeros((), dtype=torch.int64)
        self.sum_curve = torch.zeros(256, dtype=torch.int64)
        self.inter = torch.zeros(256, dtype=torch.int64)
        self.union = torch.zeros(256, dtype=torch.int64)
        self.peak_hist = torch.zeros(256, dtype=torch.int64)
        self.num_images = torch.zeros((), dtype=torch.int64)

    def _config(self):
        return (self.reduction, self.ignore_index)

    def _config_kwargs(self):
        return dict(reduction=self.reduction, ignore_index=self.ignore_index)

    @staticmethod
    def curves(score_maps, masks, ignore_index=255):
        """Per-image intersections and unions (B, 256) int64 for t = 0..255 (B = 0 for an empty batch)."""
        ignore_index = _checked_ignore_index(ignore_index)
        maps, masks = _dense_maps_and_masks(score_maps, masks, ignore_index)
        if maps.dim() == 2:
            maps, masks = maps[None], masks[None]
        b = maps.shape[0]
        if b == 0:
            empty = torch.zeros(0, 256, dtype=torch.int64, device=maps.device)
            return empty, empty.clone()
        u = (maps * 255).to(torch.uint8).reshape(b, -1).long()
        m = masks.reshape(b, -1)
        valid = m != ignore_index
        pos = (m == 1) & valid
        hp = torch.zeros(b, 256, dtype=torch.int64, device=maps.device)
        ha = torch.zeros(b, 256, dtype=torch.int64, device=maps.device)
        hp.scatter_add_(1, u, pos.long())
        ha.scatter_add_(1, u, valid.long())
        inter = hp.flip(1).cumsum(1).flip(1)      # |pred & gt| with pred = u >= t
        pred = ha.flip(1).cumsum(1).flip(1)
        union = pred + pos.sum(1, keepdim=True) - inter
        return inter, union

    def update(self, score_maps, masks):
        """Add a batch: ``score_maps`` (B, H, W) or (H, W) in [0, 1], ``masks`` of the same shape."""
        inter, union = self.curves(score_maps, masks, self.ignore_index)
        if inter.shape[0] == 0:
            return self
        iou = torch.where(union > 0, inter.double() / union.clamp(min=1).double(), torch.zeros((), dtype=torch.float64,
                                                                                           device=inter.device))
        peak, arg = iou.max(1)
        fixed = lambda x: torch.round(x * _FIXED_POINT).to(torch.int64).cpu()  # noqa: E731
        self.sum_peak = self.sum_peak + fixed(peak).sum()
        self.sum_curve = self.sum_curve + fixed(iou).sum(0)
        self.inter = self.inter + inter.sum(0).cpu()
        self.union = self.union + union.sum(0).cpu()
        self.peak_hist = self.peak_hist + torch.bincount(arg.cpu(), minlength=256)
        self.num_images = self.num_images + inter.shape[0]
        return self

    def compute(self):
        n = int(self.num_images)
        if n == 0:
            raise RuntimeError("PeakIoU.compute() before any update()")
        per_image = float(self.sum_peak) / _FIXED_POINT / n * 100
        curve_img = self.sum_curve.double().numpy() / _FIXED_POINT / n * 100
        uni = self.union.double().numpy()
        curve_pool = np.where(uni > 0, self.inter.double().numpy() / np.maximum(uni, 1), 0.0) * 100
        out = {"PeakIoU_per_image": per_image, "PeakIoU_pooled": float(curve_pool.max()),
               "peak_threshold_pooled": int(np.argmax(curve_pool)), "curve_per_image": curve_img,
               "curve_pooled": curve_pool, "peak_threshold_histogram": self.peak_hist.numpy(),
               "reduction": self.reduction}
        out["PeakIoU"] = out["PeakIoU_per_image"] if self.reduction == "per_image" else out["PeakIoU_pooled"]
        return out


def max_box_accuracy(score_maps, gt_boxes, **kwargs):
    """One-shot :class:`MaxBoxAcc` over a batch: ``MaxBoxAcc(**kwargs).update(...).compute()``."""
    return MaxBoxAcc(**kwargs).update(score_maps, gt_boxes).compute()


def pixel_average_precision(score_maps, masks, **kwargs):
    """One-shot :class:`PxAP` over a batch."""
    return PxAP(**kwargs).update(score_maps, masks).compute()
