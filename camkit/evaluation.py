"""Evaluate CAM methods x layers on a WSOL dataset with wsolevaluation's protocol.

One evaluation core, :class:`LocalizationEvaluator`, serves :func:`evaluate` and the training loop's
periodic evaluation (:func:`localization_evaluator`). Per batch it takes an explanation of the
ground-truth classes and the batch's boxes and masks, computes every threshold's V1 and V2 IoU
curves once per map (:func:`camkit.boxes.iou_curves`) and streams them into the metrics of
:mod:`camkit.metrics`. Under ``torchrun`` each rank evaluates a shard (indices ``rank::world_size``)
and the metric states (integer counts) are all-reduced, so the table equals a single process's exactly.

Per (method, layer) the table holds: ``MaxBoxAccV2`` (V2 boxes, IoU 30/50/70), ``MaxBoxAcc@{30,50,70}``
(V2), ``GT-known``, ``Top-1 Loc``, ``Top-5 Loc`` (V1 box, IoU 50, best threshold; also at
``fixed_threshold`` when given), ``PxAP`` / ``pIoU`` / ``PeakIoU`` (the per-image mean; with
``PeakIoU_pooled`` and ``PeakIoU_pooled_threshold``, the pooled curve's peak and its ``t / 255``) where the dataset
has masks, and ``Top-1 Cls`` / ``Top-5 Cls``. With a ``box_rule`` other than ``"wsol"`` the box columns are
the rule's single-threshold ``BoxAcc@{30,50,70}`` and ``BoxAcc`` and GT-known / Top-k Loc at its boxes.
``protocol="center-crop"`` evaluates the papers' resize-256 / centre-crop-224 protocol. A mask-only
dataset (OpenImages) gets no box columns, as in wsolevaluation.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch

from concurrent.futures import Future

from camkit.boxes import box_rule as resolve_box_rule, thresholds_for_interval
from camkit.data.protocols import with_protocol
from camkit.data.views import EvaluationView
from camkit.data.wsol import collate_wsol
from camkit.distributed import all_reduce_sum, world
from camkit.explain import Explainer
from camkit.outputs import select_output
from camkit.explanation import MapKey
from camkit.metric_pool import MetricPool, default_metric_workers, maps_to_uint8
from camkit.faithfulness import FaithfulnessEvaluator
from camkit.fusion import FUSION_RULES, fuse
from camkit.methods import STANDARD_METHODS as DEFAULT_METHODS
from camkit.metrics import LocalizationAccuracy, MaxBoxAcc, PeakIoU, PxAP

__all__ = ["evaluate", "LocalizationEvaluator", "localization_evaluator", "format_table", "DEFAULT_METHODS"]


COLUMNS = ("MaxBoxAccV2", "MaxBoxAcc@50", "BoxAcc", "BoxAcc@50", "GT-known", "Top-1 Loc", "Top-5 Loc", "PxAP", "pIoU",
           "PeakIoU", "PeakIoU_pooled", "PeakIoU_pooled_threshold",
           "Top-1 Cls", "Top-5 Cls", "Deletion", "Insertion", "ROAD", "Average Drop", "Increase in Confidence")


class LocalizationEvaluator:
    """wsolevaluation's metrics for every (method, layer) of a stream of explanations.

    Args:
        iou_thresholds: the IoU levels (percent) of MaxBoxAcc.
        cam_curve_interval: the CAM threshold step (thresholds ``arange(0, 1, interval)``).
        fixed_threshold: also report GT-known / Top-k Loc at this one threshold (sweep only).
        box_rule: ``"wsol"`` (the threshold sweep, default) or a rule that sets its own threshold
            (:func:`camkit.boxes.box_rule`: ``"fixed:F"``, ``"pas"``, ``"cicam"``, ...; a callable):
            then every map's boxes are the rule's, computed in this process, and the row holds
            ``BoxAcc@{delta}``, ``BoxAcc`` and the rule's GT-known / Top-k Loc instead of the sweep's
            (see :class:`camkit.metrics.MaxBoxAcc`).
        boxless: an image without a ground-truth box in a box dataset is refused (``"error"``, the
            metrics' policy, as wsolevaluation) or counted as a localisation miss, IoU 0 at every
            threshold (``"miss"``: the ``"center-crop"`` protocol, whose crop can drop every box of an
            image); the rows then report ``"num_images_without_box"``.
        with_boxes: whether the dataset has boxes (box metrics) or only masks; ``None`` (default) decides
            from the first batch (boxes in it, or no masks). Give it when a batch may lose all its boxes
            (``boxless="miss"``), so that every rank builds the same metrics.
        pool: a :class:`camkit.metric_pool.MetricPool` computing the box curves (default: in this
            process, at once). With worker processes, :meth:`update` only sends the batch's uint8 maps
            and returns; the curves are merged in submission order (so the counts equal the serial
            path's) as they arrive, at most ``max_pending`` batches x pairs behind.

    Call :meth:`update` per batch, :meth:`all_reduce` once under ``torch.distributed``, then
    :meth:`compute`. The metrics are made at the first update: box metrics unless that batch is
    mask-only (no boxes at all), mask metrics when it has masks.
    """

    def __init__(self, iou_thresholds: Sequence[int] = (30, 50, 70), cam_curve_interval: float = 0.001,
                 fixed_threshold: Optional[float] = None, pool: Optional[MetricPool] = None, max_pending: int = 64,
                 box_rule="wsol", boxless: str = "error", with_boxes: Optional[bool] = None):
        if boxless not in ("error", "miss"):
            raise ValueError(f"boxless must be 'error' (refuse an image without a box) or 'miss' (count it as a "
                             f"localisation miss), got {boxless!r}")
        self.boxless = boxless
        self.num_without_box = torch.zeros((), dtype=torch.int64)
        self.iou_thresholds = tuple(iou_thresholds)
        self.cam_curve_interval = cam_curve_interval
        self.fixed_threshold = fixed_threshold
        self.box_rule = resolve_box_rule(box_rule)
        # build the metrics once now, so that a bad option is refused before any batch
        LocalizationAccuracy(50, cam_curve_interval, fixed_threshold=fixed_threshold, box_rule=self.box_rule)
        MaxBoxAcc(self.iou_thresholds, cam_curve_interval, box_rule=self.box_rule)
        self.thresholds = thresholds_for_interval(cam_curve_interval)
        self.metrics: Dict[MapKey, Dict[str, Any]] = {}
        self.with_boxes = True if with_boxes is None else bool(with_boxes)
        self._decide_boxes = with_boxes is None
        self.pool = pool if pool is not None else MetricPool(0)
        self.max_pending = max_pending
        self._pending: list = []   # (metrics, future of (v1, v2) or None, logits, labels, has_box), in order

    def _new_metrics(self, with_boxes: bool, with_masks: bool) -> Dict[str, Any]:
        metrics: Dict[str, Any] = {}
        if with_boxes:
            metrics["v2"] = MaxBoxAcc(self.iou_thresholds, self.cam_curve_interval, multi_contour=True,
                                      box_rule=self.box_rule)
        metrics["loc"] = LocalizationAccuracy(50, self.cam_curve_interval, multi_contour=False,
                                              fixed_threshold=self.fixed_threshold, box_rule=self.box_rule)
        if with_masks:
            metrics["pxap"] = PxAP(self.cam_curve_interval)
            metrics["peak"] = PeakIoU()
        return metrics

    def update(self, explanation, batch: Dict[str, Any]) -> None:
        """Add one batch.

        Args:
            explanation: a :class:`camkit.Explanation` of the batch's ground-truth classes, maps
                ``(B, S, S)`` at the input resolution.
            batch: :func:`camkit.data.wsol.collate_wsol` output: ``"label"`` ``(B,)``, ``"boxes"`` a list
                of ``B`` ``(g, 4)`` inclusive boxes in the maps' pixels, ``"mask"`` ``(B, S, S)`` or ``None``,
                and optionally ``"index"``, the items' dataset indices (for error messages).

        Raises:
            ValueError: an image without a ground-truth box in a box dataset (the metrics' policy, as
                wsolevaluation: drop it, or evaluate a mask-only dataset with the mask metrics).
        """
        labels = torch.as_tensor(batch["label"]).cpu()
        boxes = [np.asarray(torch.as_tensor(b).reshape(-1, 4).cpu(), np.int64) for b in batch["boxes"]]
        masks = batch.get("mask")
        logits = explanation.logits.detach().cpu()
        if not self.metrics and self._decide_boxes:
            self.with_boxes = masks is None or any(len(b) for b in boxes)
        has_box = np.array([len(b) > 0 for b in boxes], bool)
        if self.with_boxes and self.boxless == "error":
            _check_every_image_has_a_box(boxes, batch.get("index", range(len(boxes))))
        elif self.with_boxes:
            self.num_without_box += int((~has_box).sum())
        boxed = [b for b in boxes if len(b)]
        for key, maps in explanation.maps.items():
            if key not in self.metrics:
                self.metrics[key] = self._new_metrics(self.with_boxes, masks is not None)
            metrics = self.metrics[key]
            maps = maps.detach()
            future = None
            if "v2" in metrics and not self.box_rule.sweep:
                future = _rule_future(maps[torch.from_numpy(has_box).to(maps.device)], boxed, self.box_rule)
            elif "v2" in metrics:  # the maps cross to the host as uint8, 1 byte per pixel
                future = self.pool.submit(maps_to_uint8(maps).cpu().numpy()[has_box], boxed, self.thresholds)
            self._pending.append((metrics, future, logits, labels, has_box))
            if "pxap" in metrics:  # histograms on the maps' device
                metrics["pxap"].update(maps, masks.to(maps.device))
                metrics["peak"].update(maps, masks.to(maps.device))
        self._merge(wait_for=len(self._pending) - self.max_pending)

    def _merge(self, wait_for: int = 0) -> None:
        """Merge the finished curves in submission order, waiting for the first ``wait_for`` entries."""
        while self._pending:
            metrics, future, logits, labels, has_box = self._pending[0]
            if wait_for <= 0 and future is not None and not future.done():
                return
            self._pending.pop(0)
            wait_for -= 1
            columns = metrics["loc"].counts.shape[1]
            if future is None:  # no boxes: the localisation columns are meaningless, keep classification only
                v1 = np.zeros((len(labels), columns))
            else:
                v1, v2 = (_with_misses(curves, has_box, columns) for curves in future.result())
                metrics["v2"].update_from_curves(v2)
            metrics["loc"].update_from_curves(v1, logits, labels)

    def flush(self) -> "LocalizationEvaluator":
        """Wait for every submitted batch and merge it (:meth:`all_reduce` and :meth:`compute` do)."""
        self._merge(wait_for=len(self._pending))
        return self

    def all_reduce(self) -> "LocalizationEvaluator":
        """Sum every metric's counts over the ranks of ``torch.distributed`` (identity alone)."""
        self.flush()
        for metrics in self.metrics.values():
            for metric in metrics.values():
                metric.all_reduce()
        self.num_without_box = all_reduce_sum(self.num_without_box.reshape(1)).reshape(())
        return self

    def compute(self) -> Dict[MapKey, dict]:
        """``{(method, layer): {column: value}}`` in the order the maps were first seen."""
        self.flush()
        if not self.metrics:
            raise ValueError("nothing was evaluated: the dataset (or this rank's shard) is empty")
        return {key: self._row(metrics) for key, metrics in self.metrics.items()}

    def _row(self, metrics: Dict[str, Any]) -> dict:
        row: dict = {}
        if "v2" in metrics and not self.box_rule.sweep:
            out = metrics["v2"].compute()
            row.update({k: v for k, v in out.items() if k.startswith("BoxAcc")})
            row["box_rule"] = self.box_rule.name
        elif "v2" in metrics:
            out = metrics["v2"].compute()
            row["MaxBoxAccV2"] = out["MaxBoxAccV2"]
            for delta in self.iou_thresholds:
                row[f"MaxBoxAcc@{delta}"] = out[f"MaxBoxAcc@{delta}"]
            row["best_threshold@50"] = out.get("best_threshold@50")
        out = metrics["loc"].compute()
        if "v2" in metrics:
            row.update({k: v for k, v in out.items() if k != "num_images"})
        else:
            row.update({k: out[k] for k in ("Top-1 Cls", "Top-5 Cls")})
        row["num_images"] = out["num_images"]
        if self.boxless == "miss" and "v2" in metrics:
            row["num_images_without_box"] = int(self.num_without_box)
        if "pxap" in metrics:
            out = metrics["pxap"].compute()
            row["PxAP"], row["pIoU"] = out["PxAP"], out["pIoU"]
            peak = metrics["peak"].compute()
            row["PeakIoU"], row["PeakIoU_pooled"] = peak["PeakIoU"], peak["PeakIoU_pooled"]
            row["PeakIoU_pooled_threshold"] = peak["peak_threshold_pooled"] / 255
        return row


def _with_misses(curves: np.ndarray, has_box: np.ndarray, columns: int) -> np.ndarray:
    """Curves (n, T) of the images with a box, spread to (B, T) rows with IoU 0 for the images without."""
    if has_box.all():
        return curves
    full = np.zeros((len(has_box), columns))
    full[has_box] = curves
    return full


def _rule_future(maps: torch.Tensor, boxes, rule) -> Future:
    """A done future of ``(ious, ious)``, each (B, 1): every map's best IoU at ``rule``'s boxes (float32
    maps, as the sweep's uint8 conversion), standing for the sweep's ``(v1, v2)`` curves."""
    future: Future = Future()
    try:
        maps32 = maps.float().cpu().numpy()
        ious = np.stack([rule.best_iou(m, b) for m, b in zip(maps32, boxes)]) if len(boxes) else np.zeros((0, 1))
        future.set_result((ious, ious))
    except Exception as err:  # raised by result(), as a pool worker's
        future.set_exception(err)
    return future


def _check_every_image_has_a_box(boxes, indices) -> None:
    for b, index in zip(boxes, indices):
        if len(b) == 0:
            raise ValueError(f"dataset item {index} has no ground-truth box; box metrics need one per image (as "
                             "in wsolevaluation): drop it (e.g. a torch.utils.data.Subset), or give a dataset "
                             "where no image has boxes and masks for all, for the mask metrics only")


def evaluate(model, dataset, methods: Union[str, Sequence[str], None] = None, layers=None, batch_size: int = 16,
             num_workers: int = 0, cam_curve_interval: float = 0.001, iou_thresholds=(30, 50, 70),
             fixed_threshold: Optional[float] = None, mean=None, std=None, progress: bool = True,
             limit: Optional[int] = None, metric_workers: Optional[int] = None, faithfulness: bool = False,
             faithfulness_options: Optional[dict] = None, fuse_rules: Sequence[str] = (), box_rule="wsol",
             protocol: str = "wsol", resize_size: int = 256, crop_size: int = 224,
             **explainer_options) -> Dict[MapKey, dict]:
    """Localisation metrics of every (method, layer) on ``dataset``.

    Args:
        model: an ``nn.Module`` returning (B, K) logits (maps are computed on its device).
        dataset: items are dicts with ``"image"`` (3, S, S) preprocessed float tensor (uint8 images are
            scaled to [0, 1] and normalised with ``mean``/``std`` when given), ``"label"``, ``"boxes"``
            (g, 4) or ``"box"`` (4,) in the S x S frame, and optionally ``"mask"`` (S, S) (1 / 0 / 255
            ignored). :func:`camkit.data.open.open_dataset` datasets have this form.
        methods, layers: as in ``camkit.explain``: ``methods=None`` is the standard five
            (:data:`DEFAULT_METHODS`), CAM skipped with a note where no linear head fits;
            ``layers=None`` the last spatial layer.
        cam_curve_interval, iou_thresholds: the MaxBoxAcc threshold grid and IoU levels.
        fixed_threshold: also report GT-known / Top-k Loc at this one threshold (with the sweep only).
        box_rule: how maps become boxes (:func:`camkit.boxes.box_rule`). ``"wsol"`` (default):
            wsolevaluation's threshold sweep, the ``MaxBoxAccV2`` / ``MaxBoxAcc@{delta}`` columns and the
            best-threshold GT-known / Top-k Loc. ``"fixed:F"``, ``"pas"``, ``"cicam"``,
            ``"cicam-kept-mean"``, a callable or a :class:`camkit.boxes.BoxRule` set their own threshold:
            the row then has the single-threshold ``BoxAcc@{delta}`` (percent of images whose best IoU at
            the rule's boxes is >= delta), their mean ``BoxAcc``, GT-known / Top-k Loc at the rule's boxes
            and ``box_rule`` (no sweep, no ``best_threshold``). The rule is checked before anything runs.
        protocol: how the pictures reach the model (:mod:`camkit.data.protocols`). ``"wsol"`` (default):
            the dataset's items as they are (camkit's datasets resize to 224 x 224 without crop).
            ``"center-crop"``: the papers' protocol, resize the shorter side to ``resize_size`` (256) and
            crop the centre ``crop_size`` (224), GT boxes and masks transformed the same way and clipped to
            the crop (:func:`camkit.data.protocols.with_protocol`: a camkit evaluation dataset is needed).
            Boxes with no pixel in the crop are dropped; an image left without a box counts as a
            localisation miss and the rows report ``"num_images_without_box"``.
        progress: show a tqdm bar (rank 0 only).
        limit: evaluate only the first ``limit`` items.
        metric_workers: worker processes computing the box curves while the engine explains the next
            batch (:class:`camkit.metric_pool.MetricPool`); ``None`` = the available cores minus one, or 0
            below 3 cores (:func:`camkit.metric_pool.default_metric_workers`); ``0`` = in this process. The results do not depend on it. Under ``torchrun`` each
            rank has its own pool.
        faithfulness: also compute :class:`camkit.faithfulness.FaithfulnessEvaluator`'s columns
            (Deletion, Insertion, ROAD-MoRF/LeRF per percentile and combined, Average Drop, Increase in
            Confidence) with the model, on the ground-truth class; ``faithfulness_options`` are its
            options (``steps``, ``percentiles``, ``batch_size``, ...).
        fuse_rules: fusion rules (:func:`camkit.fuse`) applied to all explained layers of each batch,
            adding ``(method, "fused:<rule>")`` rows.
        explainer_options: passed to ``camkit.Explainer`` (``head``, ``output``, ``method_options`` ...).

    Returns:
        ``{(method, layer): {metric: value}}``; :func:`format_table` prints it.
    """
    methods = tuple(methods) if methods is not None and not isinstance(methods, str) else methods
    fuse_rules = [fuse_rules] if isinstance(fuse_rules, str) else list(fuse_rules)
    unknown = [rule for rule in fuse_rules if rule not in FUSION_RULES]
    if unknown:
        raise ValueError(f"unknown fusion rule(s) {unknown}; choose from {', '.join(map(repr, FUSION_RULES))}")
    # options checked before any model, pool or loader exists (the pool is attached below)
    box_rule = resolve_box_rule(box_rule)
    dataset = with_protocol(dataset, protocol, resize_size, crop_size)
    cropped = protocol == "center-crop"   # the crop may leave an image, or a whole batch, without a box
    evaluator = LocalizationEvaluator(iou_thresholds, cam_curve_interval, fixed_threshold, box_rule=box_rule,
                                      boxless="miss" if cropped else "error",
                                      with_boxes=getattr(dataset, "has_boxes", None) if cropped else None)
    rank, world_size = world()
    total = len(dataset) if limit is None else min(limit, len(dataset))
    if total < world_size:  # every rank sees this, so all of them stop (none waits in all_reduce)
        raise ValueError(f"{total} image(s) for {world_size} processes: each rank needs at least one image")
    indices = list(range(total))[rank::world_size]
    shard = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_wsol)
    explainer = Explainer(model, methods=methods, layers=layers, **explainer_options)
    norm = None
    if mean is not None and std is not None:
        norm = (torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))
    workers = default_metric_workers() if metric_workers is None else metric_workers
    faithful = None
    if faithfulness:
        adapter = explainer_options.get("output")
        faithful = FaithfulnessEvaluator(model, None if adapter is None else
                                         (lambda out: select_output(out, adapter)[0]), **(faithfulness_options or {}))
    with MetricPool(workers) as pool:
        evaluator.pool = pool
        _run_batches(loader, indices, explainer, evaluator, norm, progress and rank == 0, fuse_rules, faithful)
        if world_size > 1:
            evaluator.all_reduce()
            if faithful is not None:
                faithful.all_reduce()
        table = evaluator.compute()
    if faithful is not None:
        for key, row in faithful.compute().items():
            table[key].update(row)
    return table


def _run_batches(loader, indices, explainer, evaluator, norm, progress: bool, fuse_rules=(), faithful=None) -> None:
    """Explain every batch and feed the evaluator; the bar shows images/s and the engine's share of the time
    (the rest: data loading and the metric stage, including waits for the metric workers)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(indices), disable=not progress, desc="evaluate", unit="img")
    seen, engine_s, metric_s = 0, 0.0, 0.0
    try:
        for batch in loader:
            batch["index"] = indices[seen:seen + len(batch["label"])]
            seen += len(batch["label"])
            images = batch["image"]
            if images.dtype == torch.uint8:
                images = images.float() / 255
                if norm is not None:
                    images = (images - norm[0]) / norm[1]
            start = time.perf_counter()
            explanation = explainer(images, target=batch["label"])  # ground-truth-class maps
            for rule in fuse_rules:
                explanation = fuse(explanation, rule=rule)
            middle = time.perf_counter()
            evaluator.update(explanation, batch)
            if faithful is not None:
                faithful.update(explanation, batch["label"])
            engine_s, metric_s = engine_s + middle - start, metric_s + time.perf_counter() - middle
            bar.update(len(batch["label"]))
            bar.set_postfix_str(_time_shares(engine_s, metric_s), refresh=False)
        start = time.perf_counter()
        evaluator.flush()
        bar.set_postfix_str(_time_shares(engine_s, metric_s + time.perf_counter() - start), refresh=False)
    finally:
        bar.close()


def _time_shares(engine_s: float, metric_s: float) -> str:
    """``"engine 80% | metrics 20%"``: the shares of the time the loop spent explaining and in the metrics."""
    total = max(engine_s + metric_s, 1e-12)
    return f"engine {100 * engine_s / total:.0f}% | metrics {100 * metric_s / total:.0f}%"


def localization_evaluator(methods: Sequence[str] = ("cam",), layers=None, transform: Optional[Callable] = None,
                           batch_size: int = 64, max_images: Optional[int] = None,
                           output: Any = None, box_rule="wsol") -> Callable[[torch.nn.Module, Any], Dict[str, float]]:
    """The training loop's ``evaluate_fn``: :func:`evaluate` on a resized view of the evaluation set.

    Returns ``evaluate_fn(model, dataset) -> {"{method}/{layer}/MaxBoxAccV2": ..., ".../PxAP": ...}``
    (PxAP where the items have masks). Items are resized to the size of ``transform`` (a
    :class:`camkit.train.EvalTransform`: ``size``, ``mean``, ``std``; default: each image's own size,
    mean = std = 0.5) by :class:`camkit.data.views.EvaluationView`, so boxes are rescaled exactly as
    :func:`evaluate`'s datasets do. ``layers=None`` uses the model's ``cam_layer`` (camkit backbones)
    or the engine's automatic choice; ``output`` adapts dict/tuple model outputs. ``box_rule`` other than
    ``"wsol"`` (checked here) reports ``".../BoxAcc"``, the rule's single-threshold accuracy, instead of
    ``MaxBoxAccV2``.
    """
    resolve_box_rule(box_rule)
    size = getattr(transform, "size", None)
    mean = getattr(transform, "mean", (0.5, 0.5, 0.5))
    std = getattr(transform, "std", (0.5, 0.5, 0.5))

    def evaluate_fn(model: torch.nn.Module, dataset) -> Dict[str, float]:
        chosen = layers if layers is not None else getattr(model, "cam_layer", None)
        results = evaluate(model, EvaluationView(dataset, size, mean, std), methods=tuple(methods),
                           layers=chosen, batch_size=batch_size, progress=False, limit=max_images,
                           output=output, box_rule=box_rule)
        out: Dict[str, float] = {}
        for (method, layer), row in results.items():
            for column in ("MaxBoxAccV2", "BoxAcc", "PxAP"):
                if column in row:
                    out[f"{method}/{layer}/{column}"] = row[column]
        return out

    return evaluate_fn


def format_table(results: Dict[MapKey, dict], columns: Sequence[str] = COLUMNS) -> str:
    """A fixed-width text table: one row per (method, layer), the columns present in the results."""
    cols = [c for c in columns if any(c in r for r in results.values())]
    width_m = max([len("method")] + [len(m) for m, _ in results])
    width_l = max([len("layer")] + [len(str(l)) for _, l in results])
    widths = [max(12, len(c)) for c in cols]
    head = f"{'method':<{width_m}}  {'layer':<{width_l}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths))
    lines = [head, "-" * len(head)]
    for (m, l), row in results.items():
        cells = "  ".join(f"{row[c]:>{w}.2f}" if c in row and row[c] is not None else f"{'-':>{w}}"
                          for c, w in zip(cols, widths))
        lines.append(f"{m:<{width_m}}  {str(l):<{width_l}}  {cells}")
    return "\n".join(lines)
