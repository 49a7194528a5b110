"""Extra forwards for the perturbation methods (Score-CAM, SS-CAM, IS-CAM, Ablation-CAM, SmoothGrad-CAM++).

A method that declares ``needs=("forward",)`` receives a :class:`ModelForward` in
``LayerInputs.forward``. Every extra forward goes through :func:`perturbed_logits`, the one batched
helper: it runs ``B x N`` perturbed copies of the input batch in chunks of ``batch_size`` on the
model's device under ``torch.no_grad()``, either with the input replaced (``inputs_of``) or with the
layer's output multiplied by a mask (``layer_masks_of``, through a forward hook that lives only for
the call and is removed in ``finally``). Parameters, ``requires_grad``, ``.grad`` and training flags
are never touched (the engine runs methods in the mode of its own forward, eval by default).
SmoothGrad-CAM++ needs gradients at the layer for perturbed inputs: :func:`perturbed_layer_gradients`
chunks the same ``(b, n)`` pairs and differentiates with ``torch.autograd.grad`` to a per-call leaf.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from camkit.layers import LayerSpec

__all__ = ["ModelForward", "perturbed_logits", "perturbed_layer_gradients", "target_classes", "checked_batch_size"]

IndexFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelForward:
    """What a method needs for extra forwards of one layer.

    Attributes:
        model: the explained model (left untouched).
        images: ``(B, C, H, W)`` the input batch, on the model's device.
        layer: the explained layer.
        call: the layer module's call index in a forward, resolved to ``>= 0``.
        logits_of: ``model output -> (N, K)`` logits (the engine's ``output=`` adapter).
    """

    model: nn.Module
    images: torch.Tensor
    layer: LayerSpec
    call: int
    logits_of: Callable[[Any], torch.Tensor]


def target_classes(targets: Optional[torch.Tensor], method: str) -> torch.Tensor:
    """The ``(B, T)`` target classes, or a clear error for a callable target (no class to score)."""
    if targets is None:
        raise ValueError(f"{method!r} scores perturbed inputs by a class's output, but target is a "
                         f"callable score; give class targets (an int, B ints, a (B, T) tensor or TopK)")
    return targets


def checked_batch_size(options: dict, method: str, default: int = 32) -> int:
    """The ``batch_size`` option (forwards per chunk), refused unless a positive int."""
    size = options.get("batch_size", default)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"method_options[{method!r}]['batch_size'] must be a positive int (forwards per "
                         f"chunk), got {size!r}")
    return size


def perturbed_logits(forward: ModelForward, count: int, *, batch_size: int,
                     inputs_of: Optional[IndexFn] = None,
                     layer_masks_of: Optional[IndexFn] = None,
                     reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits of ``count`` perturbed forwards per image: ``(B, count, K)``.

    Pairs ``(b, n)`` (image ``b``, perturbation ``n``) run in chunks of ``batch_size`` under
    ``torch.no_grad()``. For each chunk of pairs, given as two ``(N,)`` long index tensors:

    * ``inputs_of(b, n) -> (N, C, H, W)`` is the input batch (default: ``images[b]``);
    * ``layer_masks_of(b, n) -> (N, ...)``, if given, multiplies the layer's output ``(N, C, h, w)``
      at its ``call`` (broadcasting), through a forward hook removed when the chunk is done.

    With ``layer_masks_of``, unchanged inputs and ``reference`` (the ``(B, K)`` unperturbed logits),
    the part of the model before the layer runs once per image and chunk instead of once per pair
    (:func:`_masked_after_layer`); a model for which that is not the same computation falls back to
    the copies, with a ``RuntimeWarning`` that says why it is slow.
    """
    if inputs_of is None and layer_masks_of is not None and reference is not None:
        logits = _masked_after_layer(forward, count, batch_size, layer_masks_of, reference)
        if logits is not None:
            return logits
        warnings.warn(f"the model does not take its layer {forward.layer.name!r}'s output of one image times "
                      f"a batch of masks (its forward reshapes by the input's batch size, e.g. "
                      f"x.view(inputs.size(0), -1), or fails on it), so each of the {count} masked outputs per "
                      f"image runs the whole model, not just the part after the layer; a forward that flattens "
                      f"with x.flatten(1) instead makes this much faster", RuntimeWarning, stacklevel=2)
    images = forward.images
    pairs_b, pairs_n = _pairs(images, count)
    chunks = []
    with torch.no_grad():
        for start in range(0, pairs_b.numel(), batch_size):
            b, n = pairs_b[start:start + batch_size], pairs_n[start:start + batch_size]
            batch = images[b] if inputs_of is None else inputs_of(b, n)
            mask = None if layer_masks_of is None else layer_masks_of(b, n)
            chunks.append(_forward_once(forward, batch, mask))
    return torch.cat(chunks).reshape(images.shape[0], count, -1)


def _masked_after_layer(forward: ModelForward, count: int, batch_size: int, layer_masks_of: IndexFn,
                        reference: torch.Tensor) -> Optional[torch.Tensor]:
    """``(B, count, K)`` logits with the layer's output masked, each image run alone up to the layer.

    The layer's ``(1, C, h, w)`` output of image ``b`` times ``(N, C, 1, 1)`` masks is an ``(N, C, h,
    w)`` batch from the layer on, so the model before the layer runs once per chunk, not ``N`` times
    (for Ablation-CAM at ResNet-50's ``layer4``: once per 32 channels, not 32 times). Whatever the model
    computes after the layer from tensors before it (a skip connection) is then a ``(1, ...)`` tensor
    that broadcasts, exactly as ``N`` identical copies would. A model that does not broadcast so (it
    reshapes by the input's batch size, say) is caught on the first chunk, where an unmasked row is
    compared with ``reference``: then ``None``, and the caller runs the copies.
    """
    images = forward.images
    rows = []
    with torch.no_grad():
        for b in range(images.shape[0]):
            for start in range(0, count, batch_size):
                n = torch.arange(start, min(start + batch_size, count), device=images.device)
                mask = layer_masks_of(torch.full_like(n, b), n)
                if b == 0 and start == 0:
                    logits = _checked_first_chunk(forward, images[:1], mask, reference[0])
                    if logits is None:
                        return None
                else:
                    logits = _forward_once(forward, images[b:b + 1], mask)
                rows.append(logits)
    return torch.cat(rows).reshape(images.shape[0], count, -1)


def _checked_first_chunk(forward: ModelForward, image: torch.Tensor, mask: torch.Tensor,
                         reference: torch.Tensor) -> Optional[torch.Tensor]:
    """The first chunk of :func:`_masked_after_layer` with an unmasked row in front, or ``None`` when the
    model fails on it or the unmasked row is not the ``(K,)`` ``reference``."""
    try:
        logits = _forward_once(forward, image, torch.cat([torch.ones_like(mask[:1]), mask]))
    except (RuntimeError, ValueError):
        return None
    reference = reference.to(logits.dtype)
    tolerance = 1e-3 * float(reference.abs().max()) + 1e-6
    if not torch.allclose(logits[0], reference, rtol=1e-3, atol=tolerance):
        return None
    return logits[1:]


def _forward_once(forward: ModelForward, batch: torch.Tensor, layer_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``(N, K)`` logits of ``batch``, the layer's output multiplied by ``layer_mask`` if given (``N``
    is the mask's first size: a ``(1, ...)`` batch broadcasts to the mask's rows at the layer)."""
    if layer_mask is None:
        return forward.logits_of(forward.model(batch), batch.shape[0])
    calls = [0]

    def mask_output(_module, _inputs, output):
        call, calls[0] = calls[0], calls[0] + 1
        return output * layer_mask.to(output.dtype) if call == forward.call else None

    handle = forward.layer.module.register_forward_hook(mask_output)
    try:
        return forward.logits_of(forward.model(batch), max(batch.shape[0], layer_mask.shape[0]))
    finally:
        handle.remove()


def _pairs(images: torch.Tensor, count: int):
    pairs_b = torch.arange(images.shape[0], device=images.device).repeat_interleave(count)
    return pairs_b, torch.arange(count, device=images.device).repeat(images.shape[0])


def perturbed_layer_gradients(forward: ModelForward, count: int, classes: torch.Tensor, *, batch_size: int,
                              inputs_of: IndexFn) -> torch.Tensor:
    """Gradients of the target logits to the layer for ``count`` perturbed inputs per image.

    ``inputs_of(b, n) -> (N, C, H, W)`` as in :func:`perturbed_logits`; ``classes`` ``(B, T)``.
    The layer's output at its ``call`` is replaced by a detached leaf for the forward (a hook removed
    in ``finally``), so nothing upstream is recorded and no parameter gets a ``.grad``.

    Returns:
        ``(B, count, T, C, h, w)``.
    """
    pairs_b, pairs_n = _pairs(forward.images, count)
    chunks = []
    for start in range(0, pairs_b.numel(), batch_size):
        b, n = pairs_b[start:start + batch_size], pairs_n[start:start + batch_size]
        with torch.no_grad():
            batch = inputs_of(b, n)
        chunks.append(_layer_gradients(forward, batch, classes[b]))
    grads = torch.cat(chunks)
    return grads.reshape(forward.images.shape[0], count, *grads.shape[1:])


def _layer_gradients(forward: ModelForward, batch: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``(N, T, C, h, w)`` gradients of ``logits[i, classes[i, t]]`` to the layer's output."""
    leaves, calls = [], [0]

    def leaf_output(_module, _inputs, output):
        call, calls[0] = calls[0], calls[0] + 1
        if call != forward.call:
            return None
        leaves.append(output.detach().requires_grad_(True))
        torch.set_grad_enabled(True)
        return leaves[-1].clone()          # an in-place op downstream changes the clone, not the leaf

    handle = forward.layer.module.register_forward_hook(leaf_output)
    grad_mode = torch.is_grad_enabled()
    try:
        torch.set_grad_enabled(False)      # nothing upstream of the layer is recorded
        scores = forward.logits_of(forward.model(batch), batch.shape[0]).gather(1, classes)
    finally:
        handle.remove()
        torch.set_grad_enabled(grad_mode)
    grads = [torch.autograd.grad(scores[:, t].sum(), leaves[0], retain_graph=t + 1 < scores.shape[1])[0]
             for t in range(scores.shape[1])]
    return torch.stack(grads, dim=1)
