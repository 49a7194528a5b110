"""The method registry: ``register``, ``get_method``, ``list_methods`` and the :class:`LayerInputs` a
method receives. Method modules import this module; ``camkit.methods`` imports them (registering them).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional

import torch
from torch import nn

from camkit.constants import STANDARD_METHODS  # noqa: F401  (re-exported; torch-free for the CLI's help)

#: What a method may ask the engine for: ``"gradients"`` (one backward), ``"guided_gradients"`` (a guided
#: backward of log-scores), ``"head"`` (the classifier weights), ``"forward"`` (extra forwards of
#: perturbed inputs: the engine passes a :class:`camkit.methods.perturbation.ModelForward`) and
#: ``"foreground"`` (the model's own foreground map, FAM's: the engine checks the model and the layer
#: before any hook, and such a method runs only when named, never in ``methods="all"``).
NEEDS = frozenset({"gradients", "guided_gradients", "head", "forward", "foreground"})

#: Needs whose methods ``methods="all"`` leaves out (they must be named).
NAMED_ONLY_NEEDS = frozenset({"forward", "foreground"})


@dataclass
class LayerInputs:
    """Everything a method may use for one layer.

    Attributes:
        activations: ``(B, C, h, w)`` layer output ``A``.
        gradients: ``(B, T, C, h, w)`` ``dS_t/dA`` for each target score, or ``None``.
        guided_gradients: ``(B, T, C, h, w)`` guided ``d log(S_t)/dA``, or ``None``.
        head_weight: ``(K, C)`` classifier weight, or ``None``.
        class_weights: ``(B, T, C)`` classifier rows of the targets, or ``None``.
        logits: ``(B, K)`` model outputs.
        targets: ``(B, T)`` class indices, or ``None`` for a callable target.
        model: the explained model.
        layer: the layer key (``"name"`` or ``"name@k"``).
        forward: for methods that need ``"forward"``, the model, the input batch, the layer and the
            output adapter for extra forwards (:class:`camkit.methods.perturbation.ModelForward`).
        options: this method's options (``explain(..., method_options={name: {...}})``), plus
            ``"context"`` when ``explain(..., context=...)`` is given.
    """

    activations: torch.Tensor
    logits: torch.Tensor
    targets: Optional[torch.Tensor]
    model: nn.Module
    gradients: Optional[torch.Tensor] = None
    guided_gradients: Optional[torch.Tensor] = None
    head_weight: Optional[torch.Tensor] = None
    class_weights: Optional[torch.Tensor] = None
    options: dict = field(default_factory=dict)
    layer: Optional[str] = None
    forward: Optional[object] = None


@dataclass(frozen=True)
class Method:
    """A registered method: ``fn(LayerInputs) -> (B, T, h, w)`` raw maps.

    ``options`` is the set of option names it accepts, or ``None`` when it does not say (unchecked).
    ``weighted_activations``, for a method whose map is a sum over channels, gives the summed terms
    ``fn(LayerInputs) -> (B, T, C, h, w)`` (e.g. ``w_k A_k`` for Grad-CAM): what ``eigen_smooth``
    projects on its first principal component; ``None`` when the method is not such a sum.
    """

    name: str
    fn: Callable[[LayerInputs], torch.Tensor]
    needs: FrozenSet[str]
    description: str = ""
    reference: str = ""
    options: Optional[FrozenSet[str]] = None
    weighted_activations: Optional[Callable[[LayerInputs], torch.Tensor]] = None


_REGISTRY: Dict[str, Method] = {}
_ALIASES: Dict[str, str] = {}


def register(name: str, needs: Iterable[str] = (), description: str = "", reference: str = "",
             aliases: Iterable[str] = (), options: Optional[Iterable[str]] = None,
             weighted_activations: Optional[Callable[[LayerInputs], torch.Tensor]] = None):
    """Decorator that registers a method function under ``name`` (and ``aliases``).

    ``options``: the option names the method reads (``method_options={name: {...}}``); others are
    refused. ``None`` accepts any. ``weighted_activations``: see :class:`Method` (``eigen_smooth``).
    """
    needs = frozenset(needs)
    options = None if options is None else frozenset(options)
    unknown = needs - NEEDS
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}; choose from {sorted(NEEDS)}")

    def decorator(fn):
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"a method named {name!r} is already registered")
        _REGISTRY[name] = Method(name, fn, needs, description, reference, options, weighted_activations)
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return decorator


def get_method(name: str) -> Method:
    """The registered method ``name`` (case-insensitive; aliases accepted)."""
    if not isinstance(name, str):
        raise TypeError(f"a method is named by a string, got {type(name).__name__}")
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key in _REGISTRY:
        return _REGISTRY[key]
    choices = sorted(_REGISTRY) + sorted(_ALIASES)
    close = difflib.get_close_matches(key, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown method {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))}")


def list_methods(details: bool = False, needs: Optional[str] = None) -> List:
    """Names of all registered methods, sorted; with ``details=True`` one dict per method instead.

    ``needs`` keeps the methods whose needs include it (e.g. ``list_methods(needs="forward")``: the
    methods that run extra forwards of perturbed inputs). Each dict has ``name``, ``aliases`` (sorted),
    ``needs`` (sorted, from :data:`NEEDS`: ``"head"`` means a linear classifier after global average
    pooling), ``options`` (sorted, or ``None`` when unchecked), ``description`` and ``reference``.
    """
    if needs is not None and needs not in NEEDS:
        raise ValueError(f"unknown need {needs!r}; choose from {sorted(NEEDS)}")
    chosen = sorted((name, method) for name, method in _REGISTRY.items() if needs is None or needs in method.needs)
    if not details:
        return [name for name, _ in chosen]
    return [{"name": name, "aliases": sorted(a for a, target in _ALIASES.items() if target == name),
             "needs": sorted(method.needs),
             "options": None if method.options is None else sorted(method.options),
             "description": method.description, "reference": method.reference}
            for name, method in chosen]


def describe_methods() -> List[Method]:
    """All registered methods, with their descriptions and references."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def channel_weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[b, t, k] * activations[b, k]``: ``(B, T, C) x (B, C, h, w) -> (B, T, h, w)``."""
    return torch.einsum("btc,bchw->bthw", weights, activations)


def channel_weighted(weights: Callable[[LayerInputs], torch.Tensor]) -> Callable[[LayerInputs], torch.Tensor]:
    """The ``weighted_activations`` of a method ``sum_k w_k A_k`` from its ``(B, T, C)`` weights
    function: ``inputs -> w[b, t, k] * A[b, k]``, ``(B, T, C, h, w)``."""
    def weighted_activations(inputs: LayerInputs) -> torch.Tensor:
        return weights(inputs)[..., None, None] * inputs.activations.unsqueeze(1)
    return weighted_activations
