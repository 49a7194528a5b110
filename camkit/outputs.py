"""Model outputs to logits: the ``output=`` adapter of :class:`camkit.Explainer`.

A model may return ``(B, K)`` logits, or a dict, dataclass, named tuple, tuple or list holding them;
``output=`` is then a key or field name, an index, or a callable ``output -> (B, K)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional, Tuple

import torch

__all__ = ["check_output_adapter", "as_logits", "select_output", "field_names"]


def check_output_adapter(output):
    """``output`` as given to :class:`Explainer`, after checking its type."""
    if output is None or callable(output) or isinstance(output, str) or (
            isinstance(output, int) and not isinstance(output, bool)):
        return output
    raise TypeError(f"output must be None (the model returns the logits), a key or field name (str), an "
                    f"index (int) or a callable output -> (B, K) logits; got {output!r} "
                    f"({type(output).__name__})")


def as_logits(output, adapter, batch_size: int) -> torch.Tensor:
    """The ``(B, K)`` logits in the model ``output``, through ``adapter`` (see ``Explainer(output=)``)."""
    source = "the model"
    if adapter is not None:
        output, source = select_output(output, adapter)
    if isinstance(output, Mapping):
        raise TypeError(f"the model returns a dict with keys {list(output)}; pass output=KEY "
                        f"(or a callable) to say which entry holds the (B, K) logits")
    fields = field_names(output)
    if fields is not None:
        raise TypeError(f"the model returns a {type(output).__name__} with fields {list(fields)}; pass "
                        f"output=FIELD (or a callable) to say which field holds the (B, K) logits")
    if isinstance(output, (tuple, list)):
        raise TypeError(f"the model returns a {type(output).__name__} of {len(output)} items; pass "
                        f"output=INDEX (or a callable) to say which item holds the (B, K) logits")
    if (not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != batch_size
            or output.shape[1] == 0):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"expected (B, K) = ({batch_size}, K) logits with K >= 1 from {source}, got "
                         f"{shape}; pass output= (a key, index or callable) to adapt the model output")
    return output


def select_output(output, adapter) -> Tuple[Any, str]:
    """``adapter`` applied to the model ``output``, and how to name the result in errors."""
    if callable(adapter):
        return adapter(output), "the output= callable"
    what = f"output={adapter!r}"
    if isinstance(output, torch.Tensor):
        raise TypeError(f"{what} selects an entry of the model output, but the model returns a tensor of "
                        f"shape {tuple(output.shape)}; drop output= (a (B, K) tensor is taken as the "
                        f"logits) or pass a callable")
    if isinstance(output, Mapping):
        if adapter not in output:
            raise ValueError(f"{what}: the model's {type(output).__name__} output has no such key; its "
                             f"keys are {list(output)}")
        return output[adapter], f"output[{adapter!r}]"
    fields = field_names(output)
    if isinstance(adapter, str) and fields is not None:
        if adapter not in fields:
            raise ValueError(f"{what}: the model's {type(output).__name__} output has no field "
                             f"{adapter!r}; its fields are {list(fields)}")
        return getattr(output, adapter), f"output.{adapter}"
    if isinstance(adapter, int) and isinstance(output, (tuple, list)):
        if not -len(output) <= adapter < len(output):
            raise ValueError(f"{what} is out of range: the model returns a {type(output).__name__} of "
                             f"{len(output)} items (indices 0..{len(output) - 1})")
        return output[adapter], f"output[{adapter}]"
    kind = "a key or field name" if isinstance(adapter, str) else "an index"
    raise TypeError(f"{what} is {kind}, which a {type(output).__name__} model output does not have; pass "
                    f"output= a key (dict), a field name (dataclass, named tuple), an index (tuple, list) "
                    f"or a callable")


def field_names(output) -> Optional[Tuple[str, ...]]:
    """The field names of a dataclass instance or named tuple, else ``None``."""
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return tuple(f.name for f in dataclasses.fields(output))
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return tuple(output._fields)
    return None
