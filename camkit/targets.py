"""Target specifications: which class (or score) each map explains.

Accepted by :func:`camkit.explain` as ``target=``:

* ``None``: the top-1 predicted class of each image;
* an ``int``: the same class for every image;
* a sequence or tensor of ``B`` ints: one class per image;
* a ``(B, T)`` integer tensor: ``T`` classes per image (``T`` maps each);
* :class:`TopK` ``(k)``: the ``k`` highest-scoring classes of each image (``k`` maps each);
* a callable ``logits (B, K) -> scores (B,)``: explain any differentiable score (no class index,
  so methods that need the classifier row, such as CAM, are unavailable).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch


@dataclass(frozen=True)
class TopK:
    """Explain the ``k`` highest-scoring classes of every image, from one forward pass."""

    k: int

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"TopK needs a positive int k, got {self.k!r}")


class ResolvedTargets(NamedTuple):
    """``classes``: ``(B, T)`` long or ``None``; ``scores``: ``(B, T)`` differentiable scores;
    ``per_image``: whether the user asked for several maps per image (keep the ``T`` axis)."""

    classes: Optional[torch.Tensor]
    scores: torch.Tensor
    per_image: bool


def resolve_targets(target, logits: torch.Tensor) -> ResolvedTargets:
    """Turn a target specification into class indices and the scores to differentiate.

    Args:
        target: see the module docstring.
        logits: ``(B, K)`` model outputs.
    """
    batch, num_classes = logits.shape
    if callable(target) and not isinstance(target, (TopK, torch.Tensor)):
        scores = target(logits)
        if not isinstance(scores, torch.Tensor) or scores.shape != (batch,):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"a callable target must map logits (B, K) = {tuple(logits.shape)} to "
                             f"scores of shape (B,) = ({batch},), got {shape}")
        return ResolvedTargets(None, scores.unsqueeze(1), False)
    per_image = False
    if target is None:
        classes = logits.argmax(dim=1, keepdim=True)
    elif isinstance(target, TopK):
        if target.k > num_classes:
            raise ValueError(f"TopK({target.k}) asks for more classes than the model has ({num_classes})")
        classes = logits.topk(target.k, dim=1).indices
        per_image = True
    else:
        classes = _as_class_tensor(target, batch, logits.device)
        per_image = classes.dim() == 2
        if classes.dim() == 1:
            classes = classes.unsqueeze(1)
    bad = (classes < 0) | (classes >= num_classes)
    if bad.any():
        raise IndexError(f"target class {classes[bad][0].item()} is out of range: the model has "
                         f"{num_classes} classes (valid indices 0..{num_classes - 1})")
    scores = logits.gather(1, classes)
    return ResolvedTargets(classes, scores, per_image)


def _as_class_tensor(target, batch: int, device) -> torch.Tensor:
    if isinstance(target, bool):
        raise TypeError("target must be None, an int, B ints, a (B, T) int tensor, TopK(k) or a callable")
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    try:
        classes = torch.as_tensor(target, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"target must be None, an int, B ints, a (B, T) int tensor, TopK(k) or a "
                        f"callable, got {type(target).__name__}") from None
    if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
        raise TypeError(f"target classes must be integers, got dtype {classes.dtype}")
    if classes.dim() == 0:
        return classes.long().expand(batch).clone()
    if classes.dim() > 2 or classes.shape[0] != batch:
        raise ValueError(f"target has shape {tuple(classes.shape)} but the batch has {batch} images; "
                         f"give one class per image ({batch},) or T classes per image ({batch}, T)")
    return classes.long()

