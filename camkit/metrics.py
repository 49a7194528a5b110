"""Streaming WSOL metrics with clovaai/wsolevaluation's semantics.

Every metric keeps integer counts or histograms only, so

* it streams over any dataset size in constant memory;
* ``a.merge(b)`` of two shards equals one metric updated with both, exactly;
* ``all_reduce()`` sums the state over ``torch.distributed`` ranks (gloo or nccl), exactly.

Metrics: :class:`MaxBoxAcc` (V1 / V2), :class:`LocalizationAccuracy` (GT-known, Top-1 / Top-5 Loc;
best-threshold and fixed-threshold protocols), :class:`PxAP` (with pIoU) and :class:`PeakIoU`.
"""
from __future__ import annotations

import numpy as np
import torch

from camkit.distributed import all_reduce_sum
from camkit.boxes import best_iou_per_threshold, thresholds_for_interval, validate_boxes

__all__ = ["MaxBoxAcc", "LocalizationAccuracy", "PxAP", "PeakIoU", "max_box_accuracy", "pixel_average_precision"]


def _split_boxes(gt_boxes, batch):
    """``gt_boxes``: a (B, g, 4) tensor/array or a length-B list of (g_i, 4). Returns a list of numpy arrays."""
    if isinstance(gt_boxes, (list, tuple)):
        out = [np.asarray(b.detach().cpu() if hasattr(b, "detach") else b, dtype=np.int64).reshape(-1, 4)
               for b in gt_boxes]
    else:
        arr = np.asarray(gt_boxes.detach().cpu() if hasattr(gt_boxes, "detach") else gt_boxes, dtype=np.int64)
        out = [a.reshape(-1, 4) for a in arr]
    if len(out) != batch:
        raise ValueError(f"got {len(out)} ground-truth box sets for {batch} score maps; give one (g_i, 4) per map")
    return [validate_boxes(b) for b in out]


def _dense_maps_and_masks(score_maps, masks):
    """Score maps ``(B, H, W)`` or ``(H, W)`` in [0, 1] and masks of the same shape, as tensors on the
    maps' device; raises ``ValueError`` for NaN/inf, values outside [0, 1] or mismatched shapes."""
    maps = torch.as_tensor(score_maps).detach()
    masks = torch.as_tensor(masks, device=maps.device).detach()
    if maps.shape != masks.shape:
        raise ValueError(f"score maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have the same shape")
    if not torch.isfinite(maps).all():
        raise ValueError("score maps contain NaN or infinite values")
    if maps.numel() and (maps.min() < 0 or maps.max() > 1):
        raise ValueError(f"score map values must lie in [0, 1], got range [{float(maps.min())}, "
                         f"{float(maps.max())}]; normalise them first (e.g. per-image min-max)")
    return maps, masks


def _maps_numpy(score_maps):
    if hasattr(score_maps, "detach"):
        score_maps = score_maps.detach().cpu().numpy()
    maps = np.asarray(score_maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"score maps must be (B, H, W) or (H, W), got shape {maps.shape}")
    return maps


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
    maps' pixel frame (224x224 under the standard protocol). An image is correct at delta and tau when the
    best IoU over its boxes x GT boxes is >= delta/100. ``compute()`` returns ``"MaxBoxAcc@{delta}"``
    (max over tau of the percent correct), ``"best_threshold@{delta}"`` (first tau attaining it),
    ``"MaxBoxAccV2"`` (mean over the deltas) and ``"curve"`` ((D, T) percent correct).
    """

    _state = ("counts", "num_images")

    def __init__(self, iou_thresholds=(30, 50, 70), cam_curve_interval=0.001, multi_contour=True):
        self.iou_thresholds = tuple(int(d) for d in iou_thresholds)
        self.cam_curve_interval = cam_curve_interval
        self.multi_contour = bool(multi_contour)
        self.thresholds = thresholds_for_interval(cam_curve_interval)
        self.counts = torch.zeros(len(self.iou_thresholds), len(self.thresholds), dtype=torch.int64)
        self.num_images = torch.zeros((), dtype=torch.int64)

    def _config(self):
        return (self.iou_thresholds, self.cam_curve_interval, self.multi_contour)

    def _config_kwargs(self):
        return dict(iou_thresholds=self.iou_thresholds, cam_curve_interval=self.cam_curve_interval,
                    multi_contour=self.multi_contour)

    def update_from_curves(self, iou_curves):
        """Add images given their best-IoU curves (N, T) (see ``camkit.boxes.best_iou_per_threshold``)."""
        curves = torch.as_tensor(np.asarray(iou_curves, dtype=np.float64)).reshape(-1, len(self.thresholds))
        deltas = torch.tensor(self.iou_thresholds, dtype=torch.float64) / 100
        self.counts += (curves[None] >= deltas[:, None, None]).sum(1)
        self.num_images += curves.shape[0]
        return self

    def update(self, score_maps, gt_boxes):
        maps = _maps_numpy(score_maps)
        boxes = _split_boxes(gt_boxes, maps.shape[0])
        curves = [best_iou_per_threshold(m, b, self.thresholds, self.multi_contour) for m, b in zip(maps, boxes)]
        return self.update_from_curves(np.stack(curves) if curves else np.zeros((0, len(self.thresholds))))

    def compute(self):
        n = int(self.num_images)
        if n == 0:
            raise RuntimeError("MaxBoxAcc.compute() before any update(); feed some score maps first")
        acc = self.counts.to(torch.float64).numpy() * 100 / n
        out = {}
        for k, d in enumerate(self.iou_thresholds):
            i = int(np.argmax(acc[k]))
            out[f"MaxBoxAcc@{d}"] = float(acc[k, i])
            out[f"best_threshold@{d}"] = float(self.thresholds[i])
        out["MaxBoxAccV2"] = float(np.mean([out[f"MaxBoxAcc@{d}"] for d in self.iou_thresholds]))
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
    """

    _state = ("counts", "cls_counts", "num_images")

    def __init__(self, iou_threshold=50, cam_curve_interval=0.001, multi_contour=False, fixed_threshold=None):
        self.iou_threshold = int(iou_threshold)
        self.cam_curve_interval = cam_curve_interval
        self.multi_contour = bool(multi_contour)
        self.fixed_threshold = fixed_threshold
        self.thresholds = thresholds_for_interval(cam_curve_interval)
        self.counts = torch.zeros(3, len(self.thresholds), dtype=torch.int64)   # gt-known, top1, top5
        self.cls_counts = torch.zeros(2, dtype=torch.int64)
        self.num_images = torch.zeros((), dtype=torch.int64)

    def _config(self):
        return (self.iou_threshold, self.cam_curve_interval, self.multi_contour, self.fixed_threshold)

    def _config_kwargs(self):
        return dict(iou_threshold=self.iou_threshold, cam_curve_interval=self.cam_curve_interval,
                    multi_contour=self.multi_contour, fixed_threshold=self.fixed_threshold)

    def update_from_curves(self, iou_curves, logits, labels):
        """``iou_curves`` (N, T) of the GT-class maps, ``logits`` (N, K), ``labels`` (N,) ints."""
        curves = torch.as_tensor(np.asarray(iou_curves, dtype=np.float64)).reshape(-1, len(self.thresholds))
        logits = torch.as_tensor(logits).detach().cpu()
        labels = torch.as_tensor(labels).detach().cpu().reshape(-1).long()
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
        curves = [best_iou_per_threshold(m, b, self.thresholds, self.multi_contour) for m, b in zip(maps, boxes)]
        curves = np.stack(curves) if curves else np.zeros((0, len(self.thresholds)))
        return self.update_from_curves(curves, logits, labels)

    def compute(self):
        n = int(self.num_images)
        if n == 0:
            raise RuntimeError("LocalizationAccuracy.compute() before any update()")
        acc = self.counts.to(torch.float64).numpy() * 100 / n
        i = int(np.argmax(acc[0]))
        out = {"GT-known": float(acc[0, i]), "Top-1 Loc": float(acc[1, i]), "Top-5 Loc": float(acc[2, i]),
               "best_threshold": float(self.thresholds[i]),
               "Top-1 Cls": float(self.cls_counts[0]) * 100 / n, "Top-5 Cls": float(self.cls_counts[1]) * 100 / n,
               "num_images": n}
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
    """

    _state = ("hist_pos", "hist_neg")

    def __init__(self, cam_curve_interval=0.001, ignore_index=255):
        self.cam_curve_interval = cam_curve_interval
        self.ignore_index = ignore_index
        self.edges = np.concatenate([thresholds_for_interval(cam_curve_interval), [1.0, 2.0, 3.0]])
        n_bins = len(self.edges) - 1
        self.hist_pos = torch.zeros(n_bins, dtype=torch.int64)
        self.hist_neg = torch.zeros(n_bins, dtype=torch.int64)

    def _config(self):
        return (self.cam_curve_interval, self.ignore_index)

    def _config_kwargs(self):
        return dict(cam_curve_interval=self.cam_curve_interval, ignore_index=self.ignore_index)

    def update(self, score_maps, masks):
        maps, masks = _dense_maps_and_masks(score_maps, masks)
        dev = maps.device
        self.hist_pos = self.hist_pos.to(dev)
        self.hist_neg = self.hist_neg.to(dev)
        edges = torch.as_tensor(self.edges, dtype=torch.float64, device=dev)
        v = maps.to(torch.float64).reshape(-1)
        m = masks.reshape(-1)
        n_bins = len(self.edges) - 1
        idx = torch.bucketize(v, edges, right=True) - 1
        idx = torch.where(v == edges[-1], torch.full_like(idx, n_bins - 1), idx)  # last bin is closed
        inside = (idx >= 0) & (idx < n_bins)
        for value, hist in ((1, "hist_pos"), (0, "hist_neg")):
            sel = inside & (m == value)
            setattr(self, hist, getattr(self, hist) + torch.bincount(idx[sel], minlength=n_bins))
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
    """

    _state = ("sum_peak", "sum_curve", "inter", "union", "peak_hist", "num_images")

    def __init__(self, reduction="per_image", ignore_index=255):
        if reduction not in ("per_image", "pooled"):
            raise ValueError(f"reduction must be 'per_image' or 'pooled', got {reduction!r}")
        self.reduction = reduction
        self.ignore_index = ignore_index
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
        """Per-image intersections and unions (B, 256) int64 for t = 0..255."""
        maps, masks = _dense_maps_and_masks(score_maps, masks)
        if maps.dim() == 2:
            maps, masks = maps[None], masks[None]
        b = maps.shape[0]
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
        inter, union = self.curves(score_maps, masks, self.ignore_index)
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
