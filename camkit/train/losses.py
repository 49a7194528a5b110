"""Every loss of camkit's training recipes, as pure functions ``loss(output, batch, state)``.

``output`` is the model output (see :mod:`camkit.train.recipes` for the contract), ``batch`` a dict
with ``"image"`` ``(B, 3, H, W)`` and ``"label"`` ``(B,)``, ``state`` a
:class:`~camkit.train.recipes.StepState` or ``None``.

Normalisation convention: a loss is the SUM of its per-sample terms over the local batch divided by
``state.normalizer`` (the global batch's sample count divided by the number of processes, see
:func:`batch_mean`). In one process that is the batch mean. Under ``DistributedDataParallel``, which
averages gradients over the processes, it gives exactly the gradient of the mean over the global
batch, also when the last batch of an epoch splits unevenly or leaves a process with no sample at all
(its loss is then an exact 0 that is still connected to every parameter). Without ``state`` the
denominator is the local batch size: the plain mean.

This module imports nothing from the rest of :mod:`camkit.train`: recipes import their losses here.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

__all__ = ["default_logits", "batch_mean", "classification_loss", "cicam_loss"]


def default_logits(output: Any) -> torch.Tensor:
    """Logits ``(B, K)`` from a model output: the tensor itself, ``out["logits"]`` or ``out[0]``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        if "logits" not in output:
            raise KeyError(f"model output dict has no 'logits' key (keys: {sorted(output)}); give the "
                           "recipe a logits=callable that picks the classification logits")
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"cannot take logits from a model output of type {type(output).__name__}; "
                    "give the recipe a logits=callable")


def batch_mean(per_sample: torch.Tensor, state: Optional[Any] = None) -> torch.Tensor:
    """``per_sample.sum() / state.normalizer``: per-sample losses ``(B,)`` -> a scalar.

    The denominator is the local batch size ``B`` when ``state`` is ``None`` or has no
    ``normalizer`` (a direct call outside the training loop). See the module docstring for why the
    loop's normalizer makes N processes equal one.
    """
    normalizer = getattr(state, "normalizer", None)
    if normalizer is None:
        normalizer = per_sample.shape[0]
    return per_sample.sum() / normalizer


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, state: Optional[Any]) -> torch.Tensor:
    return batch_mean(F.cross_entropy(logits.float(), labels, reduction="none"), state)


def classification_loss(output: Any, batch: Dict[str, torch.Tensor], state: Optional[Any] = None) -> torch.Tensor:
    """Cross-entropy of the logits ``(B, K)`` in ``output`` against ``batch["label"]`` ``(B,)``.

    ``output`` may be the logits, a dict with ``"logits"`` or a tuple whose first item is the logits.
    Computed in float32 even under autocast; averaged with :func:`batch_mean`. The ``cam`` recipe's loss.
    """
    return _cross_entropy(default_logits(output), batch["label"], state)


def cicam_loss(output: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor],
               state: Optional[Any] = None) -> Dict[str, torch.Tensor]:
    """CI-CAM's ``CE(up) + CE(down)`` (Shao et al. 2021) over ``output["up"]`` and ``output["down"]``
    ``(B, K)``, in float32, each averaged with :func:`batch_mean`.

    Returns ``{"loss": ce_up + ce_down, "ce_up": ..., "ce_down": ...}`` (the two terms detached, for the log).
    """
    labels = batch["label"]
    up = _cross_entropy(output["up"], labels, state)
    down = _cross_entropy(output["down"], labels, state)
    return {"loss": up + down, "ce_up": up.detach(), "ce_down": down.detach()}
