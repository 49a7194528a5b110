"""Target specifications: which class (or score) each map explains.

Accepted by :func:`camkit.explain` as ``target=``:

* ``None``: the top-1 predicted class of each image;
* an ``int``: the same class for every image;
* a class name (``"tabby"``) or ``B`` names, when the class names are known (``class_names=`` of
  :class:`camkit.Explainer`, or :func:`camkit.load_model`'s); matched case-insensitively, and an
  unknown name is refused with the closest names;
* a sequence or tensor of ``B`` ints: one class per image;
* a ``(B, T)`` integer tensor: ``T`` classes per image (``T`` maps each);
* :class:`TopK` ``(k)``: the ``k`` highest-scoring classes of each image (``k`` maps each);
* a callable ``logits (B, K) -> scores (B,)``: explain any differentiable score (no class index,
  so methods that need the classifier row, such as CAM, are unavailable).
"""
from __future__ import annotations

import difflib
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch


TARGET_FORMS = "None (top-1), an int, B ints, a class name or B names (with class_names), a (B, T) int tensor, camkit.TopK(k) or a callable logits -> (B,)"


@dataclass(frozen=True)
class TopK:
    """Explain the ``k`` highest-scoring classes of every image, from one forward pass."""

    k: int

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, numbers.Integral) or self.k < 1:
            raise ValueError(f"TopK needs a positive int k (the number of classes to explain per image), "
                             f"got {self.k!r} ({type(self.k).__name__}); e.g. TopK(3)")
        object.__setattr__(self, "k", int(self.k))


class ResolvedTargets(NamedTuple):
    """``classes``: ``(B, T)`` long or ``None``; ``scores``: ``(B, T)`` differentiable scores;
    ``per_image``: whether the user asked for several maps per image (keep the ``T`` axis)."""

    classes: Optional[torch.Tensor]
    scores: torch.Tensor
    per_image: bool


def names_to_classes(target, class_names: Optional[Sequence[str]]):
    """Class names in ``target`` -> their indices in ``class_names``; any other target is returned as is.

    Args:
        target: a class name (``str``) or a list / tuple of names, one per image.
        class_names: the model's ``K`` class names, or ``None`` when unknown.

    Returns:
        an ``int`` for one name, a list of ``B`` ints for ``B`` names, else ``target`` unchanged.

    Raises:
        TypeError: a name was given but ``class_names`` is ``None``.
        ValueError: a name that is not a class, with the closest class names.
    """
    names = _class_name_list(target)
    if names is None:
        return target
    if class_names is None:
        raise TypeError(f"target={_short(target)} names a class, but this model's class names are unknown; "
                        f"pass class_names= (camkit.load_model(...).class_names gives them) or a class index")
    lowered = {}
    for index, name in enumerate(class_names):
        lowered.setdefault(str(name).lower(), index)
    classes = [_class_index(name, lowered) for name in names]
    return classes[0] if isinstance(target, str) else classes


def _class_name_list(target) -> Optional[list]:
    """``[target]`` for a string, the list for a non-empty list / tuple of strings, else ``None``."""
    if isinstance(target, str):
        return [target]
    if isinstance(target, (list, tuple)) and target and all(isinstance(item, str) for item in target):
        return list(target)
    return None


def _class_index(name: str, lowered: dict) -> int:
    key = name.strip().lower()
    if key in lowered:
        return lowered[key]
    close = difflib.get_close_matches(key, list(lowered), n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(repr(c) for c in close)}" if close else "no close match"
    raise ValueError(f"unknown class name {name!r} ({hint}); give one of the model's class names or a class index")


def check_target(target, batch: int) -> None:
    """Raise for a target that is wrong whatever the model outputs, before any forward pass.

    Checks the type, the shape against the ``batch`` size, emptiness and negative indices; whether
    the classes exist (``< K``) is known only from the logits (:func:`resolve_targets`).
    """
    if target is not None and not isinstance(target, TopK) and not _is_score_function(target):
        _as_class_tensor(target, batch, None)


def resolve_targets(target, logits: torch.Tensor) -> ResolvedTargets:
    """Turn a target specification into class indices and the scores to differentiate.

    Args:
        target: see the module docstring.
        logits: ``(B, K)`` model outputs.
    """
    batch, num_classes = logits.shape
    if _is_score_function(target):
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
            raise ValueError(f"TopK({target.k}) asks for {target.k} classes per image but the model has "
                             f"{num_classes}; use k <= {num_classes}")
        classes = logits.topk(target.k, dim=1).indices
        per_image = True
    else:
        classes = _as_class_tensor(target, batch, logits.device)
        per_image = classes.dim() == 2
        if classes.dim() == 1:
            classes = classes.unsqueeze(1)
    bad = classes >= num_classes
    if bad.any():
        raise IndexError(f"target class {classes[bad][0].item()} is out of range: the model has "
                         f"{num_classes} classes; give indices 0..{num_classes - 1}")
    scores = logits.gather(1, classes)
    return ResolvedTargets(classes, scores, per_image)


def _is_score_function(target) -> bool:
    return callable(target) and not isinstance(target, (TopK, torch.Tensor))


def _as_class_tensor(target, batch: int, device) -> torch.Tensor:
    """``(B,)`` or ``(B, T)`` long class indices ``>= 0`` from an int, a sequence or a tensor."""
    if isinstance(target, (bool, float, str, bytes)) or not isinstance(target, (numbers.Integral, Sequence,
                                                                                 torch.Tensor, np.ndarray)):
        raise TypeError(f"target={target!r} ({type(target).__name__}) is not a target; give {TARGET_FORMS}")
    if isinstance(target, numbers.Integral):
        classes = torch.full((batch,), int(target), dtype=torch.long, device=device)
    else:
        try:
            classes = torch.as_tensor(target, device=device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"cannot read target {_short(target)} as class indices ({error}); give "
                            f"{TARGET_FORMS}") from None
        if classes.numel() == 0:
            raise ValueError(f"target {_short(target)} has shape {tuple(classes.shape)}: no class to explain; "
                             f"give one class per image ({batch},) or T >= 1 classes per image ({batch}, T), "
                             f"or None for the top-1 class")
        if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
            raise TypeError(f"target classes must be integers, got dtype {classes.dtype}; give class "
                            f"indices such as target=3 or torch.tensor([3, 1])")
        if classes.dim() == 0:
            classes = classes.expand(batch).clone()
        elif classes.dim() > 2 or classes.shape[0] != batch:
            raise ValueError(f"target has shape {tuple(classes.shape)} but the batch has {batch} images; "
                             f"give one class per image ({batch},) or T classes per image ({batch}, T)")
    if (classes < 0).any():
        raise IndexError(f"target class {classes[classes < 0][0].item()} is negative; class indices "
                         f"count from 0")
    return classes.long()


def _short(target) -> str:
    text = repr(target)
    return text if len(text) <= 60 else text[:57] + "..."
