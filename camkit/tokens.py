"""Layer outputs as channel-first maps: token sequences, channel-last grids and any spatial rank.

Methods work on channel-first maps ``(B, C, *grid)``. A captured output is read as one of these
layouts (:func:`infer_layout`), from its shape, the input's spatial size and the model's patch size:

``"channels-first"``
    ``(B, C, *grid)`` with as many grid axes as the input has (``(B, C, L)`` signals,
    ``(B, C, h, w)`` images, ``(B, C, D, H, W)`` volumes and videos), and more than one position.
``"channels-last"``
    ``(B, h, w, C)`` on an image input (Swin): ``(h, w)`` is a downscaling of the input by one
    factor and ``(w, C)`` is not. A shape that reads both ways is taken as channels-first.
``"tokens"``
    ``(B, N, C)`` on an image input (ViT, DeiT): ``N = k + h * w`` with ``k`` = 0, 1 (class token)
    or 2 (class and distillation tokens) leading extra tokens, which are dropped. The grid is the
    input size divided by the patch size (the stride of the first ``nn.Conv2d`` whose kernel equals
    its stride, e.g. ``conv_proj`` or ``patch_embed.proj``); without one, a square grid.

:func:`to_spatial` applies a layout to a tensor with any number of leading axes, so the gradients
``(B, T, ...)`` are reshaped exactly as the activations. A user ``reshape=`` callable replaces this.
"""
from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

EXTRA_TOKENS = (0, 1, 2)   # none, a class token, class and distillation tokens (DeiT)


class Layout(NamedTuple):
    """How to read a layer output: ``kind`` (see the module docstring), the ``grid`` of positions and
    the number of leading ``extra_tokens`` dropped from a token sequence."""

    kind: str
    grid: Tuple[int, ...]
    extra_tokens: int = 0

    def describe(self) -> str:
        """E.g. ``"tokens 1+14x14"`` or ``"channels-last 7x7"``, as :func:`camkit.list_layers` shows it."""
        grid = "x".join(map(str, self.grid))
        if self.kind == "tokens":
            return f"tokens {self.extra_tokens}+{grid}" if self.extra_tokens else f"tokens {grid}"
        return f"{self.kind} {grid}"


def patch_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The stride of the model's patch embedding: the first ``nn.Conv2d`` with kernel = stride > 1."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == tuple(module.stride) \
                and max(module.stride) > 1:
            return tuple(module.stride)
    return None


def _downscale(size: int, cells: int) -> Optional[int]:
    """The integer factor ``s`` that turns ``size`` into ``cells`` positions (floor or ceil), else None."""
    if cells < 1 or cells > size:
        return None
    factor = max(1, round(size / cells))
    return factor if cells in (size // factor, math.ceil(size / factor)) else None


def _is_grid(input_size: Tuple[int, int], grid: Tuple[int, int]) -> bool:
    factors = [_downscale(s, g) for s, g in zip(input_size, grid)]
    return factors[0] is not None and factors[0] == factors[1]


def _token_grid(tokens: int, input_size: Tuple[int, ...], patch: Optional[Tuple[int, int]]
                ) -> Optional[Tuple[int, Tuple[int, int]]]:
    for extra in EXTRA_TOKENS:
        count = tokens - extra
        if count < 2:
            continue
        if patch is not None:
            grid = (input_size[0] // patch[0], input_size[1] // patch[1])
            if grid[0] * grid[1] == count:
                return extra, grid
        else:
            side = math.isqrt(count)
            if side * side == count:
                return extra, (side, side)
    return None


def infer_layout(shape: Tuple[int, ...], input_size: Tuple[int, ...],
                 patch: Optional[Tuple[int, int]] = None) -> Optional[Layout]:
    """The :class:`Layout` of an output of ``shape`` for an input of spatial size ``input_size``
    (``(L,)``, ``(H, W)`` or ``(D, H, W)``), or ``None`` when it is not a map (e.g. ``(B, C)``)."""
    rank = len(input_size)
    if len(shape) == 2 + rank and math.prod(shape[2:]) > 1:
        if rank == 2 and _is_grid(input_size, shape[1:3]) and not _is_grid(input_size, shape[2:4]):
            return Layout("channels-last", tuple(shape[1:3]))
        return Layout("channels-first", tuple(shape[2:]))
    if len(shape) == 3 and rank == 2:
        found = _token_grid(shape[1], input_size, patch)
        if found is not None:
            return Layout("tokens", found[1], found[0])
    return None


def to_spatial(tensor: torch.Tensor, layout: Layout, lead: int = 1) -> torch.Tensor:
    """``tensor`` with ``lead`` leading axes (``(B, ...)`` or ``(B, T, ...)``) as ``(*lead, C, *grid)``."""
    if layout.kind == "channels-first":
        return tensor
    if layout.kind == "channels-last":
        return tensor.movedim(-1, lead)
    patches = tensor[(slice(None),) * lead + (slice(layout.extra_tokens, None),)]
    return patches.movedim(-1, lead).unflatten(-1, layout.grid)


def apply_reshape(tensor: torch.Tensor, reshape: Callable, lead: int, layer: str) -> torch.Tensor:
    """A user ``reshape`` callable ``(B, ...) -> (B, C, *grid)`` applied to ``tensor`` with ``lead``
    leading axes (the ``T`` axis of gradients is folded into the batch and back)."""
    flat = tensor.flatten(0, lead - 1) if lead > 1 else tensor
    result = reshape(flat)
    if not isinstance(result, torch.Tensor) or result.dim() < 3 or result.shape[0] != flat.shape[0]:
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise ValueError(f"reshape= for layer {layer!r} turned {tuple(flat.shape)} into {shape}; it must "
                         f"return a (B, C, *grid) tensor with the same first axis")
    return result.unflatten(0, tensor.shape[:lead]) if lead > 1 else result


def fold_to_2d(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    """``(..., *grid)`` with a 1-D or 3-D grid as a 2-D one: ``(L,) -> (1, L)``, ``(D, H, W) -> (D*H, W)``.

    The registered methods are pointwise in the positions or reduce over all of them, so they give
    the same maps on the folded grid; :func:`unfold_from_2d` restores the grid.
    """
    if rank == 2:
        return tensor
    if rank == 1:
        return tensor.unsqueeze(-2)
    return tensor.flatten(-rank, -2)


def unfold_from_2d(maps: torch.Tensor, grid: Tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`fold_to_2d`: ``(..., h, w)`` maps back to ``(..., *grid)``."""
    if len(grid) == 2:
        return maps
    return maps.reshape(*maps.shape[:-2], *grid)


def as_method_inputs(layer: str, activation: torch.Tensor, gradients: Optional[torch.Tensor],
                     guided: Optional[torch.Tensor], input_size: Tuple[int, ...],
                     patch: Optional[Tuple[int, int]], reshape: Optional[Callable]):
    """A captured output and its gradients as the 2-D channel-first tensors methods take.

    Args:
        activation: the captured output ``(B, ...)``; gradients, guided: ``(B, T, ...)`` or ``None``.
        input_size: the input's spatial size; patch: :func:`patch_size` of the model.
        reshape: a user callable ``(B, ...) -> (B, C, *grid)`` for this layer, or ``None`` to infer
            the layout.

    Returns:
        ``(activation (B, C, h, w), gradients (B, T, C, h, w) or None, guided or None, grid)``, where
        the maps of a 1-D or 3-D ``grid`` are folded to 2-D (:func:`fold_to_2d`).

    Raises:
        ValueError: when the output does not read as a map (its message names ``reshape=``).
    """
    if reshape is not None:
        def convert(tensor, lead):
            return None if tensor is None else apply_reshape(tensor, reshape, lead, layer)
    else:
        layout = infer_layout(tuple(activation.shape), input_size, patch)
        if layout is None:
            raise ValueError(
                f"layer {layer!r} outputs shape {tuple(activation.shape)}, which does not read as a map "
                f"for an input of spatial size {tuple(input_size)}: class activation maps need a (B, C, h, w) "
                f"(or (B, C, *grid)) feature map with more than one position, (B, h, w, C) or (B, N, C) tokens; "
                f"pick such a layer (camkit.list_layers(model, image) lists them) or pass reshape=")

        def convert(tensor, lead):
            return None if tensor is None else to_spatial(tensor, layout, lead)
    spatial = convert(activation, 1)
    grid = tuple(spatial.shape[2:])
    rank = len(grid)
    return (fold_to_2d(spatial, rank), None if gradients is None else fold_to_2d(convert(gradients, 2), rank),
            None if guided is None else fold_to_2d(convert(guided, 2), rank), grid)


def checked_reshape(reshape):
    """``reshape`` as given to :class:`Explainer`: ``None``, a callable or ``{layer: callable}``."""
    if reshape is None or callable(reshape):
        return reshape
    if isinstance(reshape, dict) and all(isinstance(k, str) and callable(v) for k, v in reshape.items()):
        return dict(reshape)
    raise TypeError(f"reshape must be None (infer the layout), a callable (B, ...) -> (B, C, *grid) or a dict "
                    f"{{layer name: callable}}; got {reshape!r}")


def zero_gradient_notes(layers: List[str], gradients) -> List[str]:
    """A note per layer whose gradients are identically zero for some images (flat maps there)."""
    notes = []
    for layer, grad in zip(layers, gradients):
        if grad is None:
            continue
        zero = ~grad.flatten(1).any(dim=1)
        if zero.all():
            notes.append(f"the gradients at layer {layer!r} are exactly zero, so gradient-based maps there are "
                         f"flat: the target does not depend on this layer's positions (in a class-token ViT, "
                         f"the last block's output reaches the head only through the class token; explain "
                         f"the last block's first norm, e.g. 'encoder.layers.encoder_layer_11.ln_1', which "
                         f"layers=None picks; or a dense target that nothing matched)")
        elif zero.any():
            notes.append(f"the gradients at layer {layer!r} are exactly zero for image(s) "
                         f"{zero.nonzero().flatten().tolist()}: their target does not depend on this layer "
                         f"(e.g. a detection target that no detection matches), so their maps are flat")
    return notes
