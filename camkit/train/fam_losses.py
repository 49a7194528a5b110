"""FAM's losses (Meng et al., ICCV 2021) as pure functions, and the ``fam`` recipe's total loss.

``L = L_cls + lambda_spa * L_spa + lambda_div * L_div`` (0.04 and 0.01 in the paper):

* :func:`sparsity_loss` ``L_spa``: per image the mean of ``|M|`` over the ``h x w`` positions of the
  foreground map ``M`` ``(B, 1, h, w)``; averaged over images with
  :func:`camkit.train.losses.batch_mean` (so it is the mean of ``|M|`` over the batch's positions).
* :func:`diversity_loss` ``L_div``: per image the mean cosine similarity of the part features
  ``p^k`` ``(B, K, C)`` over the ``K (K - 1) / 2`` unordered pairs ``k < l`` (the diagonal ``k = l``
  and the repeated ``l < k`` are not counted); 0 when ``K < 2``. A part feature of norm 0 has cosine
  0 with every other one (each norm is clamped at ``eps`` before dividing).
* :func:`class_balanced_cross_entropy` ``L_cls``: the per-image cross-entropy times the weight of the
  image's class, ``w_{y_i} CE_i``, summed and divided by the loop's normaliser (the batch size in one
  process), NOT by ``sum_i w_{y_i}`` as ``F.cross_entropy(weight=...)`` does: the weights are a fixed
  per-class scale and the loss keeps the DDP-exact normalisation of :mod:`camkit.train.losses`.
  The weights are :func:`balanced_class_weights`, inverse class frequency over the training set,
  ``w_c = N / (K n_c)`` (the "balanced" heuristic of King & Zeng 2001, scikit-learn's
  ``class_weight="balanced"``); they average to 1 over the training images, and on a balanced set
  they are all 1, i.e. plain cross-entropy. The FAM paper says "class-balanced cross-entropy" without
  the formula, and its released code was not found with the tools of this session, so this weighting
  is camkit's choice, not a verified reproduction (Cui et al. 2019's effective number
  ``(1 - beta) / (1 - beta^{n_c})`` is another reading; pass its weights as ``class_weights``).

Everything is computed in float32 or wider (float64 inputs stay float64), so the losses are exact
under autocast too.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from camkit.train.losses import batch_mean

__all__ = ["sparsity_loss", "diversity_loss", "class_balanced_cross_entropy", "balanced_class_weights",
           "fam_loss"]


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def sparsity_loss(foreground: torch.Tensor, state: Optional[Any] = None) -> torch.Tensor:
    """``L_spa``: per image ``mean_ij |M_ij|`` of ``foreground`` ``(B, 1, h, w)`` (or ``(B, h, w)``),
    then :func:`~camkit.train.losses.batch_mean` over the images. A scalar."""
    if foreground.dim() not in (3, 4):
        raise ValueError(f"sparsity_loss expects the foreground map (B, 1, h, w) or (B, h, w), got "
                         f"{tuple(foreground.shape)}")
    return batch_mean(_wide(foreground).abs().flatten(1).mean(dim=1), state)


def diversity_loss(part_features: torch.Tensor, state: Optional[Any] = None, eps: float = 1e-8) -> torch.Tensor:
    """``L_div``: per image the mean of ``cos(p^k, p^l)`` over the pairs ``k < l`` of
    ``part_features`` ``(B, K, C)``, then :func:`~camkit.train.losses.batch_mean`. 0 when ``K < 2``."""
    if part_features.dim() != 3:
        raise ValueError(f"diversity_loss expects part features (B, K, C), got {tuple(part_features.shape)}")
    parts = _wide(part_features)
    count = parts.shape[1]
    if count < 2:
        return batch_mean(parts.sum(dim=(1, 2)) * 0, state)       # connected to the graph, exactly 0
    unit = parts / parts.norm(dim=2, keepdim=True).clamp(min=eps)
    cosine = unit @ unit.transpose(1, 2)                         # (B, K, K)
    upper = torch.triu(torch.ones(count, count, dtype=torch.bool, device=parts.device), diagonal=1)
    per_image = cosine[:, upper].mean(dim=1)                     # the K (K - 1) / 2 pairs k < l
    return batch_mean(per_image, state)


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse class frequency ``w_c = N / (K n_c)`` ``(K,)`` float64 from the training labels ``(N,)``.

    Raises ``ValueError`` when a class has no training image (its weight would be infinite) or a label
    is outside ``[0, num_classes)``.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if labels.numel() == 0:
        raise ValueError("balanced_class_weights needs at least one training label")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {int(labels.min())} to "
                         f"{int(labels.max())}")
    counts = torch.bincount(labels, minlength=num_classes).double()
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing[:10]} have no training image, so inverse-frequency weights are "
                         f"infinite; give class_weights explicitly or drop those classes")
    return labels.numel() / (num_classes * counts)


def class_balanced_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                                 class_weights: Optional[torch.Tensor] = None,
                                 state: Optional[Any] = None) -> torch.Tensor:
    """``sum_i w_{y_i} CE(logits_i, y_i) / normaliser`` for ``logits`` ``(B, K)``, ``labels`` ``(B,)``
    and ``class_weights`` ``(K,)`` (``None``: all 1, plain cross-entropy). See the module docstring."""
    logits = _wide(logits)
    per_image = F.cross_entropy(logits, labels, reduction="none")
    if class_weights is not None:
        if class_weights.shape != (logits.shape[1],):
            raise ValueError(f"class_weights must have one weight per class ({logits.shape[1]},), got "
                             f"{tuple(class_weights.shape)}")
        per_image = per_image * class_weights.to(per_image)[labels]
    return batch_mean(per_image, state)


def fam_loss(output: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor],
             state: Optional[Any] = None) -> Dict[str, torch.Tensor]:
    """The ``fam`` recipe's loss ``L_cls + lambda_spa L_spa + lambda_div L_div`` on the output of
    ``model(image, return_maps=True)`` (``"logits"``, ``"foreground"``, ``"part_features"``).

    The weights ``lambda_spa``, ``lambda_div`` and ``class_weights`` are read from ``state.model``
    (a :class:`camkit.models.FAM`; model options, so a checkpoint records them). Returns
    ``{"loss", "cls", "spa", "div"}`` (the three terms detached, for the log)."""
    model = getattr(state, "model", None)
    if model is None or not hasattr(model, "lambda_spa"):
        raise ValueError("fam_loss reads lambda_spa, lambda_div and class_weights from state.model, a "
                         "camkit.models.FAM; pass the training loop's StepState")
    cls = class_balanced_cross_entropy(output["logits"], batch["label"], getattr(model, "class_weights", None),
                                       state)
    spa = sparsity_loss(output["foreground"], state)
    div = diversity_loss(output["part_features"], state)
    loss = cls + model.lambda_spa * spa + model.lambda_div * div
    return {"loss": loss, "cls": cls.detach(), "spa": spa.detach(), "div": div.detach()}
