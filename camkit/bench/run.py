"""One benchmark run: the quality of every (method, layer) on a dataset, then its cost and the peers."""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from camkit.bench.cost import environment, measure_cost, model_device
from camkit.bench.peers import compare_peers
from camkit.bench.report import QUALITY_METRICS, BenchmarkResult
from camkit.methods import STANDARD_METHODS as DEFAULT_METHODS

__all__ = ["DEFAULT_METHODS", "MIN_RELIABLE_REPEATS", "evaluate_quality", "run_benchmark"]

#: Fewer timed rounds than this make the best-of-rounds seconds, and so the ratios, unreliable.
MIN_RELIABLE_REPEATS = 3

Quality = Dict[str, Dict[str, Dict[str, float]]]


def evaluate_quality(model: nn.Module, dataset, methods: Sequence[str], layers: Sequence[str],
                     batch_size: int = 16, limit: Optional[int] = None, device=None,
                     progress: bool = False, box_rule="wsol") -> Tuple[Quality, Dict[str, float]]:
    """Localisation metrics of every (method, layer): :func:`camkit.evaluation.evaluate` regrouped.

    Maps are of the ground-truth class (wsolevaluation). ``device`` is unused: maps are computed on
    the model's device. ``box_rule``: as in :func:`camkit.evaluation.evaluate`.

    Returns:
        ``({method: {layer: {metric: value}}}, {"top1": %, "top5": %, "images": n})`` with the metrics
        of :data:`camkit.bench.report.QUALITY_METRICS` that apply (pixel metrics only with masks).
    """
    from camkit.evaluation import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. CAM skipped at layers its head does not fit
        rows = evaluate(model, dataset, methods=list(methods), layers=list(layers), batch_size=batch_size,
                        progress=progress, limit=limit, box_rule=box_rule)
    quality: Quality = {m: {} for m in methods}
    classification: Dict[str, float] = {}
    for (method, layer), row in rows.items():
        quality.setdefault(method, {})[layer] = {k: float(row[k]) for k in QUALITY_METRICS
                                                 if row.get(k) is not None}
        classification = {"top1": float(row["Top-1 Cls"]), "top5": float(row["Top-5 Cls"]),
                          "images": int(row["num_images"])}
    return quality, classification


def _check_counts(batch_size: int, limit: Optional[int], cost_batch: int, repeats: int) -> None:
    counts = {"batch_size": batch_size, "cost_batch": cost_batch, "repeats": repeats}
    if limit is not None:
        counts["limit"] = limit
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}; pass {name}=1 or more")
    if repeats < MIN_RELIABLE_REPEATS:
        warnings.warn(f"repeats={repeats}: with fewer than {MIN_RELIABLE_REPEATS} timed rounds the best "
                      f"round is close to a single timing, so seconds and ratios to the floor are "
                      f"unreliable; use repeats={MIN_RELIABLE_REPEATS} or more (--repeats)", UserWarning,
                      stacklevel=3)


def _default_layers(loaded, dataset, device: torch.device):
    """The model's suggested layers, else its last layer with spatial output."""
    if loaded.layers is not None:
        return list(loaded.layers)
    from camkit.layers import last_spatial_layer

    return [last_spatial_layer(loaded.model, dataset[0]["image"][None].to(device))[0]]


def run_benchmark(loaded, dataset, methods: Sequence[str] = DEFAULT_METHODS,
                  layers: Optional[Sequence[str]] = None, batch_size: int = 16,
                  limit: Optional[int] = None, cost_batch: int = 8, repeats: int = 3,
                  peers: bool = True, progress: bool = False, settings: Optional[dict] = None,
                  box_rule="wsol") -> BenchmarkResult:
    """Quality and cost of ``methods`` x ``layers`` for one model on one dataset.

    Args:
        loaded: a :class:`camkit.model_spec.LoadedModel` (or an ``nn.Module``).
        dataset: items in the evaluation form of :func:`camkit.data.open.open_dataset` (``image``
            ``(3, S, S)`` already preprocessed, ``label``, ``boxes`` and optionally ``mask``).
        methods: method names (default :data:`camkit.methods.STANDARD_METHODS`).
        layers: layer names; default the model's suggested layers, else the last spatial layer.
        batch_size: images per forward of the quality pass.
        limit: evaluate at most this many images.
        cost_batch: images in the fixed batch used for timing (the first ones of the dataset).
        repeats: timed rounds (after one warm-up) for cost and peers; below 3 a warning says the
            ratios are unreliable.
        peers: run installed peer libraries on the cost batch.
        progress: show the quality pass's progress bar.
        settings: extra entries for ``result.settings`` (e.g. ``model`` and ``data`` for the report).
        box_rule: how maps become boxes (:func:`camkit.boxes.box_rule`; ``"wsol"``, the sweep, by default);
            another rule reports the single-threshold ``BoxAcc*`` instead of ``MaxBoxAcc*``.

    Returns:
        A :class:`camkit.bench.report.BenchmarkResult`.

    Raises:
        ValueError: ``batch_size``, ``cost_batch``, ``repeats`` or ``limit`` below 1, or a bad ``box_rule``
            (before any work).
    """
    from camkit.boxes import box_rule as resolve_box_rule

    _check_counts(batch_size, limit, cost_batch, repeats)
    rule = resolve_box_rule(box_rule)
    from camkit.model_spec import LoadedModel

    if isinstance(loaded, nn.Module):
        from camkit.inputs import Preprocess

        loaded = LoadedModel(loaded, Preprocess())
    model = loaded.model.eval()
    device = model_device(model)
    methods = list(methods)
    layers = list(layers) if layers is not None else _default_layers(loaded, dataset, device)

    quality, classification = evaluate_quality(model, dataset, methods, layers, batch_size, limit,
                                               device, progress, rule)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    cost_images = torch.stack([dataset[i]["image"] for i in range(min(cost_batch, count))]).to(device)
    cost = measure_cost(model, cost_images, methods, layers, repeats=repeats)
    peer_rows, skipped = compare_peers(model, cost_images, methods, layers, repeats) if peers else ([], {})
    settings = dict(settings or {})
    settings.update(methods=methods, layers=layers, images=count, batch_size=batch_size,
                    cost_batch=int(cost_images.shape[0]), repeats=repeats, box_rule=rule.name)
    return BenchmarkResult(quality=quality, classification=classification, cost=cost, peers=peer_rows,
                           skipped_peers=skipped, environment=environment(device), settings=settings)
