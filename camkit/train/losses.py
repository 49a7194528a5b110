"""Loss functions for the training recipes: pure functions ``loss(output, batch, state)``.

See :mod:`camkit.train.recipes` for the contract: ``output`` is the model output, ``batch`` a dict with
``"image"`` ``(B, 3, H, W)`` and ``"label"`` ``(B,)``, ``state`` a :class:`~camkit.train.recipes.StepState`.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F

__all__ = ["classification_loss"]


def classification_loss(output: Any, batch: Dict[str, torch.Tensor], state: Any = None) -> torch.Tensor:
    """Mean cross-entropy of the logits ``(B, K)`` in ``output`` against ``batch["label"]`` ``(B,)``.

    ``output`` may be the logits, a dict with ``"logits"`` or a tuple whose first item is the logits.
    Computed in float32 even under autocast.
    """
    from camkit.train.recipes import default_logits
    logits = default_logits(output)
    return F.cross_entropy(logits.float(), batch["label"])
