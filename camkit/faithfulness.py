"""Streaming faithfulness metrics: does the model's score follow the map?

* :class:`DeletionInsertion` -- deletion and insertion AUC (Petsiuk et al., RISE, BMVC 2018);
* :class:`ROAD` -- RemOve And Debias, MoRF and LeRF at given percentiles with the noisy linear
  imputation (Rong et al., ICML 2022);
* :class:`AverageDrop` -- Average Drop and Increase in Confidence (Chattopadhay et al., WACV 2018).

Convention: ``images`` are ``(B, C, H, W)`` model inputs (already preprocessed), ``maps`` ``(B, H, W)``
saliency maps at the input resolution (larger = more relevant), ``targets`` ``(B,)`` class indices.
The score of an image is the target's softmax probability (``score="softmax"``) or logit
(``score="logit"``). Perturbed copies are scored in chunks of ``batch_size`` on the model's device,
under ``torch.no_grad()``, with the model in eval mode for the call (its flags are restored).

Every metric keeps sums and counts in a float64 / int64 state, so ``a.merge(b)`` of two shards
equals one metric updated with both (up to float64 rounding of the sums; the counts are exact) and
``all_reduce()`` sums the state over ``torch.distributed`` ranks (:func:`camkit.distributed.all_reduce_sum`).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from camkit.distributed import all_reduce_sum

__all__ = ["DeletionInsertion", "ROAD", "AverageDrop", "noisy_linear_impute", "target_scores", "SCORES",
           "BASELINES"]

SCORES = ("softmax", "logit")
BASELINES = ("zeros", "blur")

#: ROAD's neighbour weights (Rong et al.): direct neighbours 1/6, diagonal ones 1/12 (they sum to 1)
_ROAD_KERNEL = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


# ---------------------------------------------------------------------------------------- scoring
@contextmanager
def _eval_mode(model):
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    flags = [m.training for m in modules]
    try:
        for module in modules:
            module.training = False
        yield
    finally:
        for module, flag in zip(modules, flags):
            module.training = flag


def _model_device(model, fallback: torch.device) -> torch.device:
    if isinstance(model, nn.Module):
        for tensor in list(model.parameters()) + list(model.buffers()):
            return tensor.device
    return fallback


def target_scores(model: Callable, images: torch.Tensor, targets: torch.Tensor, score: str = "softmax",
                  batch_size: int = 64, output: Optional[Callable] = None) -> torch.Tensor:
    """The target score of every image: ``(N, C, H, W)`` images and ``(N,)`` classes -> ``(N,)`` float64.

    ``output`` turns the model output into ``(N, K)`` logits (default: the output is the logits).
    Images go to the model's device in chunks of ``batch_size``; scores come back on ``images``' device.
    """
    device = _model_device(model, images.device)
    chunks = []
    with torch.no_grad(), _eval_mode(model):
        for start in range(0, len(images), batch_size):
            out = model(images[start:start + batch_size].to(device))
            logits = (out if output is None else output(out)).double()
            if score == "softmax":
                logits = logits.softmax(dim=1)
            index = targets[start:start + batch_size].to(logits.device).long()
            chunks.append(logits.gather(1, index[:, None])[:, 0].to(images.device))
    return torch.cat(chunks) if chunks else images.new_zeros(0, dtype=torch.float64)


# ---------------------------------------------------------------------------------------- checks
def _checked_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def _checked_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _checked_percentiles(percentiles):
    values = tuple(percentiles) if isinstance(percentiles, (list, tuple)) else ()
    if not values or any(isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 100
                         for p in values) or len(set(values)) != len(values):
        raise ValueError(f"percentiles must be distinct numbers in (0, 100) (the percent of pixels removed), "
                         f"e.g. (10, 30, 50, 70, 90); got {percentiles!r}")
    return values


def _checked_batch(images, maps, targets):
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    b, _, h, w = images.shape
    if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (b, h, w):
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be (B, H, W) = {(b, h, w)}, the images' size, got {shape}; explain with "
                         f"upsample=True (and one target per image)")
    targets = torch.as_tensor(targets)
    if targets.shape != (b,):
        raise ValueError(f"targets must be (B,) = ({b},) class indices, got shape {tuple(targets.shape)}")
    return images, maps.detach().to(images.device, torch.float64), targets


def _relevance_order(maps: torch.Tensor) -> torch.Tensor:
    """Pixel indices ``(B, H*W)`` from the most to the least relevant (ties: lower index first)."""
    return torch.argsort(maps.flatten(1), dim=1, descending=True, stable=True)


class _Summed:
    """A float64 sum vector and an int64 count: merge, all_reduce and the shared update checks."""

    def __init__(self, size: int):
        self.sums = torch.zeros(size, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.int64)

    def _add(self, values: torch.Tensor) -> None:
        """Add ``(N, size)`` per-image values."""
        self.sums = self.sums + values.double().sum(dim=0).cpu()
        self.count = self.count + len(values)

    def merge(self, other) -> "_Summed":
        """Add another shard's state (same type and options); returns ``self``."""
        if type(other) is not type(self) or other.sums.shape != self.sums.shape:
            raise ValueError(f"cannot merge a {type(other).__name__} into a {type(self).__name__} with other options")
        self.sums, self.count = self.sums + other.sums, self.count + other.count
        return self

    def all_reduce(self) -> "_Summed":
        """Sum the state over ``torch.distributed`` ranks (identity alone); returns ``self``."""
        self.sums, self.count = all_reduce_sum(self.sums), all_reduce_sum(self.count)
        return self

    def _means(self) -> torch.Tensor:
        if int(self.count) == 0:
            raise ValueError(f"{type(self).__name__}: nothing was updated; call update() with at least one image")
        return self.sums / int(self.count)


# ------------------------------------------------------------------------------ deletion / insertion
def _blur(images: torch.Tensor) -> torch.Tensor:
    """Petsiuk et al.'s insertion baseline: a Gaussian blur, kernel 11, sigma 5, reflect padding."""
    radius, sigma = 5, 5.0
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-x.square() / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    flat = F.pad(images, (radius,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(flat, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class DeletionInsertion(_Summed):
    """Deletion and insertion AUC (Petsiuk et al., "RISE", BMVC 2018), streaming.

    Pixels are ranked by the map (most relevant first). With ``steps = n``, after step ``i``
    (``i = 0 .. n``) the first ``floor(i * H * W / n)`` pixels (all channels) are

    * deletion: replaced by the ``deletion_baseline`` in the image (``"zeros"``: 0 in the model's
      input space, e.g. the mean colour after ImageNet normalisation);
    * insertion: copied from the image into the ``insertion_baseline`` (``"blur"``: Petsiuk's Gaussian
      blur, kernel 11, sigma 5).

    The AUC of the ``n + 1`` scores over ``x = i / n`` is the trapezoid rule,
    ``(sum_i s_i - (s_0 + s_n) / 2) / n``, as in the RISE code. Deletion: lower is better; insertion:
    higher is better. :meth:`compute` returns ``{"Deletion": mean AUC, "Insertion": mean AUC}``.
    """

    def __init__(self, steps: int = 20, deletion_baseline: str = "zeros", insertion_baseline: str = "blur",
                 score: str = "softmax", batch_size: int = 64, output: Optional[Callable] = None):
        super().__init__(2)
        self.steps = _checked_positive_int(steps, "steps")
        self.deletion_baseline = _checked_choice(deletion_baseline, BASELINES, "deletion_baseline")
        self.insertion_baseline = _checked_choice(insertion_baseline, BASELINES, "insertion_baseline")
        self.score = _checked_choice(score, SCORES, "score")
        self.batch_size = _checked_positive_int(batch_size, "batch_size")
        self.output = output

    def update(self, model: Callable, images: torch.Tensor, maps: torch.Tensor, targets) -> None:
        """Add ``B`` images: ``(B, C, H, W)`` inputs, ``(B, H, W)`` maps, ``(B,)`` classes."""
        images, maps, targets = _checked_batch(images, maps, targets)
        if "blur" in (self.deletion_baseline, self.insertion_baseline) and min(images.shape[-2:]) < 6:
            raise ValueError(f"the 'blur' baseline (kernel 11, reflect padding) needs images of at least 6x6, got "
                             f"{tuple(images.shape[-2:])}; use deletion_baseline / insertion_baseline='zeros'")
        order = _relevance_order(maps)
        aucs = []
        for start, finish in (("image", self.deletion_baseline), (self.insertion_baseline, "image")):
            curve = self._curve(model, images, order, targets, start, finish)
            aucs.append((curve.sum(dim=1) - (curve[:, 0] + curve[:, -1]) / 2) / self.steps)
        self._add(torch.stack(aucs, dim=1))

    def _curve(self, model, images, order, targets, start: str, finish: str) -> torch.Tensor:
        """``(B, steps + 1)`` scores: ``start`` with its most relevant pixels replaced by ``finish``'s."""
        b, c, h, w = images.shape
        source = {"image": images, "zeros": torch.zeros_like(images)}
        source["blur"] = _blur(images) if "blur" in (start, finish) else None
        first, second = source[start].flatten(2), source[finish].flatten(2)
        counts = [(i * h * w) // self.steps for i in range(self.steps + 1)]
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(b, -1))  # rank of each pixel
        steps = torch.tensor(counts, device=images.device)
        replaced = (rank[:, None, :] < steps[None, :, None])[:, :, None]                 # (B, S, 1, HW)
        mixed = torch.where(replaced, second[:, None], first[:, None]).reshape(-1, c, h, w)
        scores = target_scores(model, mixed, targets.repeat_interleave(len(counts)), self.score,
                               self.batch_size, self.output)
        return scores.view(b, len(counts))

    def compute(self) -> Dict[str, float]:
        deletion, insertion = self._means().tolist()
        return {"Deletion": deletion, "Insertion": insertion}


# ------------------------------------------------------------------------------------------ ROAD
def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """``sum_j w_j x_j`` over the 8 neighbours (zero outside the image): ``(N, 1, H, W)``, by shifted
    slices (a float64 conv is slow on CPU)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    total = torch.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            weight = float(_ROAD_KERNEL[dy, dx])
            if weight:
                total = total + weight * padded[..., dy:dy + h, dx:dx + w]
    return total


def noisy_linear_impute(images: torch.Tensor, removed: torch.Tensor, noise: float = 0.01,
                        generator: Optional[torch.Generator] = None, tol: float = 1e-8,
                        max_iter: int = 2000) -> torch.Tensor:
    """ROAD's noisy linear imputation (Rong et al., ICML 2022): ``(B, C, H, W)``, ``(B, H, W)`` bool.

    Every removed pixel becomes the weighted mean of its neighbours inside the image (direct ones
    weight 1/6, diagonal ones 1/12), known pixels fixed: per channel, the linear system
    ``(sum_j w_j) x_i - sum_{j removed} w_j x_j = sum_{j kept} w_j v_j`` over the removed pixels
    ``i``, which is symmetric positive definite when a pixel is kept. It is solved matrix-free by
    conjugate gradients in float64 on ``images``' device (to relative residual ``tol``), then
    ``noise * N(0, 1)`` is added to the removed pixels. Returns the imputed images (``images``' dtype).
    """
    b, c, h, w = images.shape
    unknown = removed.to(torch.float64)[:, None].expand(b, c, h, w).reshape(b * c, 1, h, w)
    if bool((unknown.flatten(1).sum(1) == h * w).any()):
        raise ValueError("noisy_linear_impute: an image has every pixel removed; keep at least one pixel")
    values = images.to(torch.float64).reshape(b * c, 1, h, w)
    weight_sum = _neighbour_sum(torch.ones_like(values[:1]))

    def operator(x):
        return unknown * (weight_sum * x - _neighbour_sum(unknown * x))

    rhs = unknown * _neighbour_sum((1 - unknown) * values)
    x = torch.zeros_like(values)
    residual = rhs.clone()
    direction = residual.clone()
    norm = residual.square().flatten(1).sum(1)
    target = (tol ** 2) * norm.clamp(min=1e-300)
    for _ in range(max_iter):
        if bool((norm <= target).all()):
            break
        image = operator(direction)
        step = norm / (direction * image).flatten(1).sum(1).clamp(min=1e-300)
        x = x + step.view(-1, 1, 1, 1) * direction
        residual = residual - step.view(-1, 1, 1, 1) * image
        new_norm = residual.square().flatten(1).sum(1)
        direction = residual + (new_norm / norm.clamp(min=1e-300)).view(-1, 1, 1, 1) * direction
        norm = new_norm
    if noise:
        x = x + noise * torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    out = torch.where(unknown > 0, x, values)
    return out.reshape(b, c, h, w).to(images.dtype)


class ROAD(_Summed):
    """ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
    ICML 2022): the score after removing ``p`` percent of the pixels and imputing them.

    MoRF removes the most relevant pixels first (lower score is better), LeRF the least relevant
    first (higher is better); removed pixels get :func:`noisy_linear_impute`, whose noise comes from a
    generator seeded with ``seed`` at construction. :meth:`compute` returns ``ROAD-MoRF@p`` and
    ``ROAD-LeRF@p`` per percentile, their means over the percentiles (``ROAD-MoRF``, ``ROAD-LeRF``)
    and ``ROAD`` = mean of (LeRF - MoRF) / 2 (pytorch-grad-cam's ROADCombined; higher is better).
    Under ``torch.distributed`` every rank draws its noise from the same seed, so a sharded run equals
    one process exactly only with ``noise=0``.
    """

    def __init__(self, percentiles: Sequence[float] = (10, 30, 50, 70, 90), noise: float = 0.01, seed: int = 0,
                 score: str = "softmax", batch_size: int = 64, output: Optional[Callable] = None):
        self.percentiles = _checked_percentiles(percentiles)
        super().__init__(2 * len(self.percentiles))
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
            raise ValueError(f"noise must be a finite number >= 0 (the imputation noise std), got {noise!r}")
        self.noise = float(noise)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.score = _checked_choice(score, SCORES, "score")
        self.batch_size = _checked_positive_int(batch_size, "batch_size")
        self.output = output

    def update(self, model: Callable, images: torch.Tensor, maps: torch.Tensor, targets) -> None:
        """Add ``B`` images: ``(B, C, H, W)`` inputs, ``(B, H, W)`` maps, ``(B,)`` classes."""
        images, maps, targets = _checked_batch(images, maps, targets)
        b, _, h, w = images.shape
        order = _relevance_order(maps)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(b, -1))
        imputed = []
        for most_relevant_first in (True, False):
            for p in self.percentiles:
                k = int(round(p / 100 * h * w))
                removed = rank < k if most_relevant_first else rank >= h * w - k
                imputed.append(noisy_linear_impute(images, removed.view(b, h, w), self.noise, self.generator))
        stacked = torch.stack(imputed, dim=1).flatten(0, 1)                 # (B * 2P, C, H, W)
        scores = target_scores(model, stacked, targets.repeat_interleave(len(imputed)), self.score,
                               self.batch_size, self.output)
        self._add(scores.view(b, len(imputed)))

    def compute(self) -> Dict[str, float]:
        means = self._means().view(2, -1)
        row = {f"ROAD-MoRF@{p:g}": v for p, v in zip(self.percentiles, means[0].tolist())}
        row.update({f"ROAD-LeRF@{p:g}": v for p, v in zip(self.percentiles, means[1].tolist())})
        row["ROAD-MoRF"], row["ROAD-LeRF"] = means[0].mean().item(), means[1].mean().item()
        row["ROAD"] = ((means[1] - means[0]) / 2).mean().item()
        return row


# ----------------------------------------------------------------------------------- Average Drop
class AverageDrop(_Summed):
    """Average Drop and Increase in Confidence (Chattopadhay et al., Grad-CAM++, WACV 2018), in percent.

    ``Y`` is the target score on the image, ``O`` on the image multiplied by its map
    (``image * map``, maps in ``[0, 1]``). Average Drop = ``100 * mean(max(0, Y - O) / Y)`` (lower is
    better); Increase in Confidence = ``100 * mean(O > Y)`` (higher is better), an exact count.
    """

    def __init__(self, score: str = "softmax", batch_size: int = 64, output: Optional[Callable] = None):
        super().__init__(1)
        self.increased = torch.zeros((), dtype=torch.int64)
        self.score = _checked_choice(score, SCORES, "score")
        self.batch_size = _checked_positive_int(batch_size, "batch_size")
        self.output = output

    def update(self, model: Callable, images: torch.Tensor, maps: torch.Tensor, targets) -> None:
        """Add ``B`` images: ``(B, C, H, W)`` inputs, ``(B, H, W)`` maps in ``[0, 1]``, ``(B,)`` classes."""
        images, maps, targets = _checked_batch(images, maps, targets)
        both = torch.cat([images, images * maps[:, None].to(images.dtype)])
        scores = target_scores(model, both, torch.cat([targets, targets]), self.score, self.batch_size, self.output)
        self.update_from_scores(scores[:len(images)], scores[len(images):])

    def update_from_scores(self, original: torch.Tensor, explained: torch.Tensor) -> None:
        """Add ``(N,)`` scores ``Y`` of the images and ``O`` of the explanation-masked images (``Y > 0``)."""
        original, explained = torch.as_tensor(original).double().cpu(), torch.as_tensor(explained).double().cpu()
        if original.dim() != 1 or original.shape != explained.shape:
            raise ValueError(f"original and explained scores must be two (N,) tensors of one length, got "
                             f"{tuple(original.shape)} and {tuple(explained.shape)}")
        if not bool((original > 0).all()):
            raise ValueError("Average Drop divides by the original score: every original score must be > 0 "
                             "(use score='softmax')")
        self._add(((original - explained).clamp(min=0) / original)[:, None])
        self.increased = self.increased + int((explained > original).sum())

    def merge(self, other) -> "AverageDrop":
        super().merge(other)
        self.increased = self.increased + other.increased
        return self

    def all_reduce(self) -> "AverageDrop":
        super().all_reduce()
        self.increased = all_reduce_sum(self.increased)
        return self

    def compute(self) -> Dict[str, float]:
        drop = self._means()[0].item()
        return {"Average Drop": 100 * drop, "Increase in Confidence": 100 * int(self.increased) / int(self.count)}


# -------------------------------------------------------------------------------- per-map table
class FaithfulnessEvaluator:
    """All faithfulness metrics for every ``(method, layer)`` map of a stream of explanations.

    Args:
        model: the explained model (any callable ``images -> output``).
        output: ``model output -> (B, K) logits`` (default: the output is the logits).
        steps, deletion_baseline, insertion_baseline: :class:`DeletionInsertion`'s options.
        percentiles, noise, seed: :class:`ROAD`'s options.
        score, batch_size: the score of an image and the chunk of perturbed copies per forward.

    Call :meth:`update` per batch, :meth:`all_reduce` once under ``torch.distributed``, then
    :meth:`compute` for ``{(method, layer): {column: value}}``.
    """

    def __init__(self, model: Callable, output: Optional[Callable] = None, steps: int = 20,
                 deletion_baseline: str = "zeros", insertion_baseline: str = "blur",
                 percentiles: Sequence[float] = (10, 30, 50, 70, 90), noise: float = 0.01, seed: int = 0,
                 score: str = "softmax", batch_size: int = 64):
        self.model = model
        self._factories = (
            lambda: DeletionInsertion(steps, deletion_baseline, insertion_baseline, score, batch_size, output),
            lambda: ROAD(percentiles, noise, seed, score, batch_size, output),
            lambda: AverageDrop(score, batch_size, output))
        for factory in self._factories:   # check every option now, before any update
            factory()
        self.metrics: Dict = {}

    def update(self, explanation, targets) -> None:
        """Add one batch: an explanation of ``targets`` (``(B,)`` classes), maps ``(B, H, W)`` at the
        input size, whose ``images`` are the model input."""
        for key, maps in explanation.maps.items():
            metrics = self.metrics.setdefault(key, [factory() for factory in self._factories])
            for metric in metrics:
                metric.update(self.model, explanation.images, maps, targets)

    def all_reduce(self) -> "FaithfulnessEvaluator":
        for metrics in self.metrics.values():
            for metric in metrics:
                metric.all_reduce()
        return self

    def compute(self) -> Dict:
        return {key: {k: v for metric in metrics for k, v in metric.compute().items()}
                for key, metrics in self.metrics.items()}
