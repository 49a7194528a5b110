"""Finding the classifier head that CAM needs, and checking that CAM decomposes the logits.

CAM is exact when the logits are ``W @ GAP(A) + b`` for the captured layer ``A``: a linear layer
after global average pooling, or a 1x1 convolution before it (the two commute). The head is found
automatically as the ``nn.Linear`` (or 1x1 ``nn.Conv2d``) whose input size equals the layer's channel
count and whose output size equals the number of logits; when several match, the last one
registered wins.

A model may pool with a drop-in for GAP instead, a module with the class attribute
``is_global_pool = True`` mapping ``(B, C, h, w) -> (B, C, 1, 1)``, e.g. thresholded average pooling
(:class:`camkit.models.ThresholdedAvgPool`). The check then accepts ``W @ pool(A) + b`` for any such
module of the model; the CAM is still ``sum_k W[c, k] A_k`` on the unpooled layer output (as in Bae et
al.'s TAP), only the logits are no longer its spatial mean.
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
from torch import nn

HeadLike = Union[nn.Linear, nn.Conv2d, torch.Tensor]


class HeadNotFoundError(ValueError):
    """CAM needs a linear classifier head and none fits the layer."""


class CAMHeadWarning(UserWarning):
    """The logits are not ``W @ GAP(A) + b`` for the layer, so CAM is not their decomposition."""


def resolve_head(model: nn.Module, head):
    """``head`` as given to :class:`camkit.Explainer`, checked before any forward: a module name
    becomes that module; a module must be an ``nn.Linear`` or a 1x1 ``nn.Conv2d``, a tensor a 2-D float
    ``(K, C)`` weight (its shape is checked against the layer once it is known); ``None`` passes.

    Raises:
        HeadNotFoundError: a name that is not a module, or a module or tensor that cannot be a head.
        TypeError: anything else.
    """
    if head is None:
        return None
    if isinstance(head, torch.Tensor):
        if head.dim() != 2 or not head.is_floating_point():
            raise HeadNotFoundError(f"a head tensor must be the (K, C) float weight of the classifier, got "
                                    f"shape {tuple(head.shape)} {head.dtype}")
        return head
    if isinstance(head, nn.Module):
        _check_head_module(head, type(head).__name__)
        return head
    if not isinstance(head, str):
        raise TypeError(f"head must be None (found automatically), a module name, an nn.Linear, a 1x1 "
                        f"nn.Conv2d or a (K, C) weight tensor, got {type(head).__name__}")
    modules = dict(model.named_modules())
    if head not in modules:
        import difflib

        close = difflib.get_close_matches(head, [name for name in modules if name], n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise HeadNotFoundError(f"head={head!r} is not a module of the model{hint}")
    _check_head_module(modules[head], f"head={head!r}")
    return modules[head]


def _check_head_module(module: nn.Module, what: str) -> None:
    """Raise unless ``module`` is an ``nn.Linear`` or a 1x1, ungrouped ``nn.Conv2d``."""
    if isinstance(module, nn.Linear):
        return
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        return
    shape = (f" with kernel {module.kernel_size} and groups={module.groups}"
             if isinstance(module, nn.Conv2d) else "")
    raise HeadNotFoundError(f"{what} is a {type(module).__name__}{shape}; CAM needs an nn.Linear or a 1x1 "
                            f"nn.Conv2d (or pass a (K, C) weight tensor)")


def find_head(model: nn.Module, channels: int, num_classes: int, head: Optional[HeadLike] = None
              ) -> HeadLike:
    """The classifier mapping ``channels`` pooled features to ``num_classes`` logits.

    Raises:
        HeadNotFoundError: no ``nn.Linear(channels, num_classes)`` or 1x1
            ``nn.Conv2d(channels, num_classes)`` exists and ``head`` was not given.
    """
    if head is not None:
        return head
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and (module.in_features, module.out_features) == (
                channels, num_classes):
            found = module
        elif (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
              and (module.in_channels, module.out_channels) == (channels, num_classes)):
            found = module
    if found is None:
        raise HeadNotFoundError(
            f"CAM needs a linear classifier applied to the global-average-pooled layer output "
            f"({channels} channels -> {num_classes} logits), but the model has no nn.Linear or 1x1 "
            f"nn.Conv2d of that shape. Pick the layer that feeds the classifier, or pass head= (an "
            f"nn.Linear, a 1x1 nn.Conv2d or a ({num_classes}, {channels}) weight tensor), or use a "
            f"gradient method such as 'gradcam'.")
    return found


def global_pools(model: Optional[nn.Module]) -> list:
    """The modules of ``model`` that replace GAP (class attribute ``is_global_pool``), in order."""
    if model is None:
        return []
    return [module for module in model.modules() if getattr(type(module), "is_global_pool", False)]


def head_weight_matrix(head: HeadLike, activations: torch.Tensor, logits: torch.Tensor,
                       layer: str, model: Optional[nn.Module] = None) -> torch.Tensor:
    """The ``(K, C)`` weight of ``head``, after checking it against the logits.

    Args:
        activations: ``(B, C, h, w)`` captured layer output.
        logits: ``(B, K)``.
        model: the explained model, whose GAP drop-ins (:func:`global_pools`) the check also accepts.

    Warns :class:`CAMHeadWarning` when ``logits != W @ pool(A) + b`` for GAP and every GAP drop-in of
    ``model`` (then the map is still ``sum_k W[c, k] A_k`` but no longer the exact decomposition of
    the logit).
    """
    num_classes, channels = logits.shape[1], activations.shape[1]
    if isinstance(head, torch.Tensor):
        weight, bias = head, None
    elif isinstance(head, (nn.Linear, nn.Conv2d)):
        weight, bias = head.weight, head.bias
    else:
        raise TypeError(f"head must be an nn.Linear, a 1x1 nn.Conv2d or a (K, C) tensor, got "
                        f"{type(head).__name__}")
    weight = weight.detach().reshape(weight.shape[0], -1)
    if tuple(weight.shape) != (num_classes, channels):
        raise HeadNotFoundError(f"the head weight has shape {tuple(weight.shape)} but layer {layer!r} "
                                f"has {channels} channels and the model {num_classes} logits; "
                                f"expected ({num_classes}, {channels})")
    weight = weight.to(device=activations.device, dtype=torch.promote_types(activations.dtype, torch.float32))
    if isinstance(head, torch.Tensor):
        return weight
    reference = logits.detach().to(weight.dtype)
    tolerance = 1e-3 * (1 + reference.abs().max())
    features = activations.detach().to(weight.dtype)
    pooled_candidates = [features.mean(dim=(2, 3))]
    if features.dim() == 4:
        with torch.no_grad():
            pooled_candidates += [pool(features).flatten(1) for pool in global_pools(model)]
    gaps = []
    for pooled in pooled_candidates:
        predicted = pooled @ weight.T
        if bias is not None:
            predicted = predicted + bias.detach().to(predicted)
        gaps.append(float((predicted - reference).abs().max()))
        if gaps[-1] <= tolerance:
            return weight
    drop_ins = " (nor W @ pool(A) + b for the model's GAP drop-ins)" if len(gaps) > 1 else ""
    warnings.warn(f"the logits are not W @ GAP(A) + b{drop_ins} for layer {layer!r} with the detected head "
                  f"(max difference {gaps[0]:.3g}); CAM at this layer "
                  f"is not the decomposition of the logits. Pick the layer that feeds the "
                  f"classifier or pass head=", CAMHeadWarning, stacklevel=4)
    return weight
