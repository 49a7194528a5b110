"""Resolve layer specifications to modules, and find layers with spatial output.

A layer is named by its module name as in ``model.named_modules()`` (``"layer4"``,
``"features.18"``), optionally with a call index: ``"_swish@1"`` is the output of the second call
of a module that runs more than once per forward (EfficientNet-Lite reuses one ReLU6 module for the
stem and the head). Without an index the **last** call is captured, which for a reused activation
module is the one nearest the classifier. An ``nn.Module`` may be given instead of a name.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from camkit.inputs import Preprocess, as_batch, run_model
from camkit.tokens import Layout, infer_layout, patch_size

LayerLike = Union[str, nn.Module]


class LayerError(ValueError):
    """A layer specification that does not name a usable layer of the model."""


@dataclass(frozen=True)
class LayerSpec:
    """One capture point: ``module``'s output at call ``call`` (negative counts from the end)."""

    name: str
    module: nn.Module
    call: int = -1
    #: why a selection chose it, for figure labels, where :func:`selection_labels` cannot tell (a fallback)
    label: Optional[str] = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """The name used in :attr:`Explanation.maps` keys."""
        return self.name if self.call == -1 else f"{self.name}@{self.call}"


def _split_call(spec: str) -> Tuple[str, int]:
    name, sep, call = spec.rpartition("@")
    if not sep:
        return spec, -1
    try:
        return name, int(call)
    except ValueError:
        raise LayerError(f"layer {spec!r}: the part after '@' must be a call index such as "
                         f"'{name}@0' or '{name}@-1'") from None


def resolve_layer(model: nn.Module, layer: LayerLike, candidates=None) -> LayerSpec:
    """Turn a name, ``"name@k"`` or module into a :class:`LayerSpec`.

    ``candidates`` is a zero-argument callable returning spatial layer names, used only to make the
    error message for a wrong name helpful.
    """
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return LayerSpec(name, module)
        raise LayerError(f"the module {type(layer).__name__} passed as a layer is not a submodule "
                         f"of the model (or is the model itself); pass a submodule or its name")
    if not isinstance(layer, str):
        raise LayerError(f"a layer must be a module name (str) or an nn.Module, got {type(layer).__name__}")
    name, call = _split_call(layer)
    modules = dict(model.named_modules())
    if name and name in modules:
        return LayerSpec(name, modules[name], call)
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    message = f"the model has no layer named {name!r}."
    if close:
        message += f" Close matches: {', '.join(close)}."
    if candidates is not None:
        found = candidates()
        if found:
            shown = ", ".join(found[-12:])
            message += f" Layers with spatial output (last ones nearest the head): {shown}."
    raise LayerError(message + " Use camkit.list_layers(model, image) to see every layer and its shape.")


class LayerEntry(tuple):
    """One row of :func:`list_layers`: the pair ``(name, output shape)``, plus :attr:`layout`
    (how the output is read as a map: channels-first, channels-last or tokens, and its grid)."""

    def __new__(cls, name: str, shape: Tuple[int, ...], layout: Optional[Layout]):
        entry = super().__new__(cls, (name, shape))
        entry.layout = layout
        return entry

    @property
    def name(self) -> str:
        return self[0]

    @property
    def shape(self) -> Tuple[int, ...]:
        return self[1]

    def __repr__(self) -> str:
        layout = "" if self.layout is None else f", {self.layout.describe()}"
        return f"({self.name!r}, {self.shape}{layout})"


def list_layers(model: nn.Module, image: torch.Tensor, spatial_only: bool = True) -> List[LayerEntry]:
    """Run one no-grad forward and list ``(layer, output shape)`` in the order outputs are produced.

    Args:
        image: ``(C, *S)`` or ``(B, C, *S)`` preprocessed input (only the first one is used), with
            ``S`` = ``(H, W)`` for images, ``(L,)`` or ``(D, H, W)`` for models whose first layer says
            so (a ``Conv1d`` / ``Conv3d``); or a PIL image / uint8 array / path (preprocessed with
            :class:`camkit.Preprocess`).
        spatial_only: keep only outputs that read as maps (:func:`camkit.tokens.infer_layout`):
            ``(B, C, *grid)`` with more than one position, Swin's ``(B, h, w, C)`` and ViT tokens
            ``(B, N, C)``; each entry's ``layout`` names which, with its grid (``tokens 1+14x14``:
            a class token and 14x14 patch tokens).

    A module called several times appears once per call, as ``"name@k"``, except for its last call,
    which is listed under its plain name (the default capture point).
    """
    return _trace(model, image, spatial_only)[0]


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower()


def input_rank(model: nn.Module) -> int:
    """The spatial rank the model's first convolution expects: 1 (``Conv1d``), 3 (``Conv3d``) or 2."""
    for module in model.modules():
        if isinstance(module, nn.Conv1d):
            return 1
        if isinstance(module, nn.Conv3d):
            return 3
        if isinstance(module, nn.Conv2d):
            return 2
    return 2


def _trace(model: nn.Module, image: torch.Tensor, spatial_only: bool = True):
    """:func:`list_layers`, ``{module: number of calls}`` and the event index at which the last
    attention call started (``None`` without attention), from the same forward."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # a tensor is checked as given; a PIL image, uint8 array or path gets the ImageNet default
    rank = input_rank(model) if isinstance(image, torch.Tensor) else 2
    batch = as_batch(image, None if isinstance(image, torch.Tensor) else Preprocess(), spatial_dims=rank)[0]
    if batch.shape[0] == 0:
        raise ValueError(f"the input batch is empty (shape {tuple(batch.shape)}); give at least one image")
    image = batch[:1]
    records: List[Tuple[str, int, Tuple[int, ...], int]] = []
    counts = {}
    modules = {}
    handles = []
    events = [0]
    attention_start = [None]

    def make_hook(name):
        def hook(module, inputs, output):
            call = counts.get(name, 0)
            counts[name] = call + 1
            events[0] += 1
            if isinstance(output, torch.Tensor):
                records.append((name, call, tuple(output.shape), events[0]))
        return hook

    def attention_pre_hook(module, inputs):
        events[0] += 1
        attention_start[0] = events[0]

    training = {m: m.training for m in model.modules()}
    try:
        for name, module in model.named_modules():
            if name:
                modules[name] = module
                handles.append(module.register_forward_hook(make_hook(name)))
                if _is_attention(module):
                    handles.append(module.register_forward_pre_hook(attention_pre_hook))
        model.eval()
        with torch.no_grad():
            run_model(model, image, shown_shape=batch.shape)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag
    input_size, patch = tuple(image.shape[2:]), patch_size(model)
    result, ends = [], []
    for name, call, shape, event in records:
        layout = infer_layout(shape, input_size, patch) if shape[:1] == (1,) else None
        if spatial_only and layout is None:
            continue
        label = name if call == counts[name] - 1 else f"{name}@{call}"
        result.append(LayerEntry(label, shape, layout))
        ends.append(event)
    return result, {modules[name]: count for name, count in counts.items()}, (ends, attention_start[0])


def call_counts(model: nn.Module, image: torch.Tensor) -> Dict[nn.Module, int]:
    """``{module: calls in one forward}`` for every named submodule that ran (one no-grad forward)."""
    return _trace(model, image, spatial_only=False)[1]


def last_spatial_layer(model: nn.Module, image: torch.Tensor) -> Tuple[str, Dict[nn.Module, int]]:
    """The default capture point (``layers=None``) and ``{module: calls per forward}`` from the same
    probe forward.

    The rule: on a model with a class token (outputs ``(B, 1 + h*w, C)`` or ``(B, 2 + h*w, C)``,
    ViT and DeiT), the last token layer that finishes before the last attention call starts: the
    last block's first norm (``encoder.layers.encoder_layer_11.ln_1`` in torchvision's ``vit_b_16``),
    whose patch tokens still reach the class token through that attention. Any later token output
    (the last block's output, the final norm) reaches the logits only through its class token, so
    its patch-token gradients are exactly zero. Otherwise (CNNs, Swin, MaxViT), the last layer in
    execution order whose output reads as a map, in any layout.
    """
    layers, calls, (ends, attention_start) = _trace(model, image, spatial_only=True)
    if not layers:
        raise LayerError("no layer of the model outputs a spatial map (B, C, h, w) for this input; "
                         "class activation maps need a convolutional feature map or patch tokens")
    with_class_token = [i for i, entry in enumerate(layers)
                        if entry.layout.kind == "tokens" and entry.layout.extra_tokens > 0]
    if with_class_token:
        before = [i for i in with_class_token if attention_start is not None and ends[i] < attention_start]
        return layers[(before or with_class_token)[-1]][0], calls
    return layers[-1][0], calls


#: ``layers=ALL_STAGES``: the last layer of every spatial resolution (see :func:`stage_layers`)
ALL_STAGES = "all-stages"
#: ``layers="last-stages:N"``: the last layer of each of the ``N`` deepest resolutions
LAST_STAGES = "last-stages:"
#: ``layers="stage:K"``: the last layer of the ``K``-th resolution (``K < 0`` counts from the deepest)
STAGE = "stage:"
#: ``layers="stage:K|last"``: the same, or the last spatial layer (``layers=None``) where the model has
#: fewer resolutions than ``K`` asks for (a ViT has one); the recommended preset's selection
OR_LAST = "|last"


#: Module types whose output is a padded copy of their input, never a stage of its own (torch's
#: ``ZeroPad*``, ``ConstantPad*``, ``ReflectionPad*``, ``ReplicationPad*``, ``CircularPad*``)
PADDING_MODULES = tuple(getattr(nn, name) for name in dir(nn) if name.endswith(("Pad1d", "Pad2d", "Pad3d")))


def stage_layers(model: nn.Module, image: torch.Tensor) -> List[str]:
    """The last layer of every spatial resolution, shallow to deep (one no-grad forward).

    The spatial outputs, in execution order, are cut into runs of one resolution ``(h, w)``; from each
    run the last output of the least nested module (fewest dots in its name) is taken, so a block
    (``features.13``, ``layer3``) is preferred to its last sub-layer, and the first layer of the next
    stage, which often still runs at the old resolution (an expansion 1x1 conv), is not picked.
    The outputs of padding modules (:data:`PADDING_MODULES`, e.g. TensorFlow "SAME" padding as in
    EfficientNet-Lite's ``static_padding``) are left out, so a padded copy neither forms a stage nor cuts
    one in two; a layer that really changes the resolution (an upsampling decoder) still does.
    """
    modules = dict(model.named_modules())
    runs: List[Tuple[Tuple[int, int], List[str]]] = []
    for label, shape in list_layers(model, image):
        if isinstance(modules.get(label.split("@")[0]), PADDING_MODULES):
            continue
        resolution = tuple(shape[2:])
        if runs and runs[-1][0] == resolution:
            runs[-1][1].append(label)
        else:
            runs.append((resolution, [label]))
    if not runs:
        raise LayerError("no layer of the model outputs a spatial map (B, C, h, w) for this input; "
                         "class activation maps need a convolutional feature map")
    picked = []
    for _, labels in runs:
        depth = min(label.count(".") for label in labels)
        last = [label for label in labels if label.count(".") == depth][-1]
        if last not in picked:
            picked.append(last)
    return picked


def last_stages_count(layers) -> Optional[int]:
    """``N`` of ``layers="last-stages:N"`` (``None`` for any other value); a malformed ``N`` raises."""
    if not isinstance(layers, str) or not layers.startswith(LAST_STAGES):
        return None
    count = layers[len(LAST_STAGES):]
    if not count.isdigit() or int(count) < 1:
        raise LayerError(f"layers={layers!r}: give the number of deepest stages as a positive integer, "
                         f"e.g. 'last-stages:2' (or 'all-stages' for every stage)")
    return int(count)


def stage_index(layers) -> Optional[int]:
    """``K`` of ``layers="stage:K"`` or ``"stage:K|last"`` (``None`` for any other value); a malformed
    ``K`` raises."""
    if not isinstance(layers, str) or not layers.startswith(STAGE):
        return None
    index = layers[len(STAGE):].removesuffix(OR_LAST)
    if not index.lstrip("-").isdigit():
        raise LayerError(f"layers={layers!r}: give the stage as an integer index into the resolutions, shallow "
                         f"to deep, e.g. 'stage:-2' for the second deepest (or 'stage:0' for the shallowest)")
    return int(index)


def is_stage_selection(layers) -> bool:
    """Whether ``layers`` is ``"all-stages"``, ``"last-stages:N"`` or ``"stage:K"`` (resolved per input
    shape)."""
    return isinstance(layers, str) and (layers == ALL_STAGES or layers.startswith((LAST_STAGES, STAGE)))


def _ordinal(rank: int, end: str) -> str:
    """``(1, "deepest") -> "deepest"``, ``(2, "deepest") -> "2nd deepest"``, ``(3, ...) -> "3rd ..."``."""
    if rank == 1:
        return end
    suffix = "th" if 10 <= rank % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix} {end}"


def selection_labels(model: nn.Module, layers, keys: Sequence[str]) -> Dict[str, str]:
    """Figure labels that say why each layer of a selection was chosen, e.g. ``{"features.13": "2nd
    deepest stage (features.13)"}`` for ``layers="stage:-2"``.

    ``layers`` is the selection as given (``None``, ``"all-stages"``, ``"last-stages:N"``,
    ``"stage:K"``), ``keys`` the layer keys it resolved to, in order. A layer named by the user gets
    no label (its name is the label); ``layers=None`` on a model with an ``explain_layer`` (FAM) is that.
    """
    keys = list(keys)
    if layers is None and isinstance(getattr(model, "explain_layer", None), str):
        return {keys[0]: f"the model's explain_layer ({keys[0]})"}
    if layers is None and len(keys) == 1:
        return {keys[0]: f"last spatial layer ({keys[0]})"}
    if not is_stage_selection(layers):
        return {}
    index = stage_index(layers)
    if index is not None:
        why = _ordinal(-index, "deepest") if index < 0 else _ordinal(index + 1, "shallowest")
        return {key: f"{why} stage ({key})" for key in keys}
    return {key: f"{_ordinal(len(keys) - i, 'deepest')} stage ({key})" for i, key in enumerate(keys)}


def resolve_layers(model: nn.Module, layers: Optional[Union[LayerLike, Sequence[LayerLike]]],
                   example: torch.Tensor) -> List[LayerSpec]:
    """Resolve ``layers`` (a name, module, sequence of them, ``None`` = last spatial layer,
    ``"all-stages"`` = :func:`stage_layers`, ``"last-stages:N"`` = its last ``N``, or ``"stage:K"`` = its
    ``K``-th, negative from the deepest; ``"stage:K|last"`` falls back to ``None``'s layer where there is
    no such stage)."""
    if layers is None:
        return [resolve_layer(model, last_spatial_layer(model, example)[0])]
    if isinstance(layers, str) and layers == ALL_STAGES:
        return [resolve_layer(model, name) for name in stage_layers(model, example)]
    count = last_stages_count(layers)
    if count is not None:
        return [resolve_layer(model, name) for name in stage_layers(model, example)[-count:]]
    index = stage_index(layers)
    if index is not None:
        stages = stage_layers(model, example)
        if not -len(stages) <= index < len(stages) and layers.endswith(OR_LAST):
            last = resolve_layers(model, None, example)[0]
            return [replace(last, label=f"last spatial layer ({last.key}; one resolution, no stage {index})")]
        if not -len(stages) <= index < len(stages):
            raise LayerError(f"layers={layers!r}: this model has {len(stages)} spatial resolution(s) for this "
                             f"input ({', '.join(stages)}), so the stage index must be in "
                             f"{-len(stages)}..{len(stages) - 1}; give a layer name or layers=None (the last one)")
        return [resolve_layer(model, stages[index])]
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not all(isinstance(l, (str, nn.Module)) for l in layers):
        raise LayerError(f"layers must be a module name, a module, a list of them or None, got {layers!r}")
    layers = list(layers)
    if not layers:
        raise LayerError("layers is empty; give at least one layer, or None for the last spatial layer")

    def candidates():
        return [name for name, _ in list_layers(model, example)]

    specs = [resolve_layer(model, layer, candidates) for layer in layers]
    keys = [spec.key for spec in specs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise LayerError(f"layers lists {', '.join(duplicated)} more than once")
    return specs
