"""The explanation engine: one forward, one backward, many maps.

``camkit.explain(model, images, methods=..., layers=..., target=...)`` hooks the requested layers for
one call, runs one forward, resolves the targets, computes one ``torch.autograd.grad`` to all
captured layers (plus a guided one only for BagCAMs), evaluates every method on every layer in
torch, and upsamples and normalises all maps of a layer in one batched call.

The user's model is left as it was found: hooks are removed in ``finally``; gradients are taken with
``torch.autograd.grad`` (no parameter ``.grad`` is written); ``requires_grad`` is never touched; by
default the model runs in eval mode for the call (so BatchNorm statistics are not updated and dropout
is off) and every module's ``training`` flag is restored afterwards.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from camkit import postprocess, smoothing, tokens
from camkit.dense_targets import is_output_target, output_scores
from camkit.explanation import Explanation
from camkit.fusion import checked_rule, fuse as fuse_layers
from camkit.presets import UNSET, preset_setting
from camkit.shape_cache import ShapeCache
from camkit.capture import DEFAULT_GUIDED_MODULES, ActivationCapture, CallCountChanged
from camkit.heads import CAMHeadWarning, HeadNotFoundError, find_head, head_weight_matrix, resolve_head
from camkit.inputs import Preprocess, as_batch, as_photo_batch, run_model
from camkit.outputs import as_logits, check_output_adapter, select_output
from camkit.layers import (LayerError, LayerSpec, input_rank, is_stage_selection, last_spatial_layer, resolve_layer,
                           resolve_layers, selection_labels)
from camkit.methods import NAMED_ONLY_NEEDS, STANDARD_METHODS, LayerInputs, get_method, list_methods
from camkit.methods.fam import check_foreground_model
from camkit.methods.perturbation import ModelForward
from camkit.targets import ResolvedTargets, check_target, names_to_classes, resolve_targets


#: Input shapes an :class:`Explainer` remembers (auto-chosen layer, calls per forward): the most
#: recently used ones; older shapes are probed again when they come back.
SHAPE_CACHE_SIZE = 16


class Explainer:
    """A reusable explainer for one model; hooks exist only during a call.

    Args:
        model: any ``nn.Module`` returning ``(B, K)`` logits (or see ``output``).
        methods: a method name or a list of names (``camkit.list_methods()``); the default: see
            ``preset``. ``None`` means the standard set, :data:`camkit.methods.STANDARD_METHODS`
            (CAM, Grad-CAM, Grad-CAM++, PCS, BagCAMs), with CAM optional: where the classifier is not
            one linear layer after global average pooling (e.g. torchvision's MobileNetV3, whose head
            is Linear-Hardswish-Dropout-Linear), or the target is a callable score, CAM is skipped
            with a :class:`camkit.CAMHeadWarning` and a note in ``Explanation.notes`` and left out
            of ``Explanation.methods``, and the other methods still run. A CAM named explicitly
            raises :class:`camkit.HeadNotFoundError` when it fits none of the layers. ``"all"`` is every
            registered one-pass method (the standard set first), with the head methods optional as for
            ``None``; the perturbation methods (``camkit.list_methods(needs="forward")``: Score-CAM,
            Ablation-CAM, ... up to one extra forward per channel) and FAM's ``fam`` run only when named.
        layers: module names (``"name"`` or ``"name@k"`` for the k-th call of a reused module),
            modules, or ``None``: the model's ``explain_layer`` name if it has one (FAM's ``"features"``),
            else the last layer with spatial output (chosen per input shape, in ``Explanation.layers``).
            ``"all-stages"`` is the last layer of every spatial resolution, ``"last-stages:N"`` that of
            the ``N`` deepest ones and ``"stage:K"`` that of the ``K``-th (negative from the deepest:
            ``"stage:-2"`` is the second deepest), chosen per input shape (:func:`camkit.layers.stage_layers`).
        head: the classifier used by CAM: an ``nn.Linear``, a 1x1 ``nn.Conv2d``, its module name, or
            a ``(K, C)`` tensor. ``None`` finds it automatically.
        output: how to get logits from the model output: ``None`` (the output is the logits), a key
            of a dict output or field name of a dataclass / named-tuple output, an index into a
            tuple/list output, or a callable ``output -> (B, K)``.
        preprocess: turns PIL images / uint8 arrays / paths into ``(3, H, W)`` tensors and back for
            display. Default: :class:`camkit.Preprocess` (224x224, ImageNet mean and std). Tensor
            inputs are taken as already preprocessed; their display pictures (``images_rgb``,
            figures) undo *this* preprocess's mean and std, so give the one that made them.
        class_names: names of the ``K`` classes, for display and for class-name targets
            (``target="tabby"``).
        eval_mode: run the model in eval mode during the call (restored afterwards). With ``False``
            the model runs as it is: in train mode BatchNorm updates its running statistics and mixes
            the images of a batch, and dropout is random, so maps are neither reproducible nor
            per-image.
        guided_modules: module types that BagCAMs' guided backward passes through.
        method_options: ``{method: {option: value}}``, e.g. ``{"cam": {"clamp_negative_weights": True}}``.
        context: a fitted causal context for the ``causal`` method (see :mod:`camkit.causal`).
        reshape: how to read a layer output as a ``(B, C, *grid)`` map: ``None`` infers it
            (:mod:`camkit.tokens`: ViT/DeiT tokens lose their class and distillation tokens, Swin's
            ``(B, h, w, C)`` is permuted), a callable ``(B, ...) -> (B, C, *grid)`` for every layer
            (as pytorch-grad-cam's ``reshape_transform``), or ``{layer key: callable}``. Gradients go
            through the same callable, so every method works on the result.
        aug_smooth: ``True`` or a :class:`camkit.smoothing.AugSmooth`: average the maps of scaled and
            flipped copies on the input frame (targets resolved on the input; needs ``upsample=True``).
        eigen_smooth: replace each map by the first principal component of the method's weighted
            activations (see :mod:`camkit.smoothing`); refused for methods that are not channel sums.
        fuse: a fusion rule (``"max"``, ``"mean"``, ``"layercam"``): calls return
            ``camkit.fuse(exp, rule=fuse)``, the layers' maps and the fused ones (needs ``upsample=True``).
        preset: instead of ``methods``, ``layers`` and ``fuse``, a named setting (:mod:`camkit.presets`).
            With none of the four given, ``"recommended"``: BagCAMs at the last layer of the second deepest
            resolution (``methods="bagcams", layers="stage:-2|last"``), the best in ``docs/methods.md``;
            ``"classic"`` is Grad-CAM at the last layer, ``methods``' default with ``layers`` or ``fuse``.

    Arguments are checked here, and images and targets at the start of a call, before any hook
    is attached: a wrong value raises an error that says what to give instead and leaves the model
    untouched. Per input shape (shape, dtype and device) the explainer remembers the layer chosen
    for ``layers=None`` and how often each captured module runs per forward; it keeps the
    :data:`SHAPE_CACHE_SIZE` most recently used shapes (leaving a ``with`` block forgets them all).
    """

    def __init__(self, model: nn.Module, methods: Union[str, Sequence[str], None] = UNSET,
                 layers=None, head=None, output=None, preprocess: Optional[Callable] = None,
                 class_names: Optional[Sequence[str]] = None, eval_mode: bool = True,
                 guided_modules=DEFAULT_GUIDED_MODULES, method_options: Optional[dict] = None,
                 context: Any = None, reshape=None, aug_smooth=False, eigen_smooth: bool = False,
                 fuse: Optional[str] = None, preset: Optional[str] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        preset, methods, layers, fuse = preset_setting(preset, methods, layers, fuse)
        self.fuse = fuse if fuse is None else checked_rule(fuse, "fuse")
        self.model = model
        self.preset = preset
        self.methods, self.optional_methods = _method_selection(methods)
        self.layers = layers
        self.head = resolve_head(model, head)
        self.output = check_output_adapter(output)
        self.preprocess = _checked_preprocess(preprocess)
        self.class_names = class_names
        self.eval_mode = eval_mode
        self.guided_modules = _guided_module_types(guided_modules)
        self.method_options = _checked_method_options(method_options)
        self.context = context
        self.reshape = tokens.checked_reshape(reshape)
        self.aug_smooth = smoothing.checked_aug_smooth(aug_smooth)
        smoothing.check_eigen_smooth([get_method(n) for n in self.methods], eigen_smooth)
        self.eigen_smooth = eigen_smooth
        self._auto_layer = ShapeCache(SHAPE_CACHE_SIZE)     # per input shape (see _shape_key)
        self._call_totals = ShapeCache(SHAPE_CACHE_SIZE)

    def __enter__(self) -> "Explainer":
        return self

    def __exit__(self, *exc) -> None:
        self._auto_layer.clear()
        self._call_totals.clear()

    def __call__(self, images, target=None, methods=None, layers=None, upsample: bool = True,
                 normalize: bool = True) -> Explanation:
        """Explain ``images``; ``methods`` and ``layers`` override the explainer's for this call
        (``None`` keeps the explainer's; methods named here are never optional).

        Args:
            images: ``(B, C, H, W)`` or ``(C, H, W)`` preprocessed tensor, or PIL image(s), uint8
                ``(H, W, 3)`` array(s) or file path(s) (through ``preprocess``).
            target: ``None`` (top-1), an int, ``B`` ints, a class name or ``B`` names (with
                ``class_names``), a ``(B, T)`` tensor, ``camkit.TopK(k)`` or a callable
                ``logits -> (B,)`` (see :mod:`camkit.targets`).
            upsample: resize maps to the input size; ``False`` keeps the layer resolution.
            normalize: per-map min-max to ``[0, 1]``; ``False`` returns raw maps.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError("camkit.explain cannot run under torch.inference_mode(): gradient-based "
                               "maps need autograd, which inference mode disables for good. Call it "
                               "outside the inference_mode block (torch.no_grad() is fine).")
        if self.fuse is not None and not upsample:
            raise ValueError(f"fuse={self.fuse!r} combines the layers' maps on the input frame: use upsample=True")
        if self.fuse is not None:
            exp = _copy_with(self, fuse=None)(images, target, methods, layers, upsample, normalize)
            return fuse_layers(exp, rule=self.fuse, normalize=normalize)
        if methods is None:
            names, optional = self.methods, self.optional_methods
        elif _is_all(methods):
            names, optional = _method_selection(methods)
        else:
            names, optional = _method_names(methods), frozenset()
        method_list = [get_method(name) for name in names]
        smoothing.check_eigen_smooth(method_list, self.eigen_smooth)
        if self.aug_smooth is not None:
            return self._aug_smoothed(images, target, methods, layers, upsample, normalize)
        batch, display, photos, frames = as_photo_batch(images, self.preprocess, input_rank(self.model))
        device = _model_device(self.model, batch.device)
        batch = batch.to(device)
        _check_input(batch)
        target = names_to_classes(target, self.class_names)
        check_target(target, batch.shape[0])
        specs = self._resolve_layers(batch, selection := layers if layers is not None else self.layers)
        _check_reshape_keys(self.reshape, specs)
        needs = set().union(*(m.needs for m in method_list))
        if "foreground" in needs:               # before any hook: the model and layer must have a map
            check_foreground_model(self.model, [spec.module for spec in specs], [spec.key for spec in specs])

        shape_key = _shape_key(batch)
        try:
            activations, logits, targets, gradients, guided, unguided = self._passes(
                batch, specs, needs, target, self._call_totals.get(shape_key))
        except CallCountChanged:        # the forward is data-dependent: capture without the counts
            self._call_totals.pop(shape_key, None)
            activations, logits, targets, gradients, guided, unguided = self._passes(batch, specs, needs, target)
        activations, gradients, guided, grids = self._as_maps(specs, activations, gradients, guided, batch)
        head_optional = all(m.name in optional for m in method_list if "head" in m.needs)
        head_weights, notes = self._head_weights(needs, specs, activations, logits, targets, head_optional)
        maps = {}
        for spec, activation, grad, guided_grad, grid in zip(specs, activations, gradients, guided, grids):
            head_weight = head_weights.get(spec.key)
            layer_methods = [m for m in method_list if "head" not in m.needs or head_weight is not None]
            if not layer_methods:                      # only head methods, skipped here (see notes)
                continue
            inputs = LayerInputs(
                activations=_compute_dtype(activation.detach()), logits=logits.detach(),
                targets=targets.classes, model=self.model,
                gradients=_compute_dtype(grad), guided_gradients=_compute_dtype(guided_grad),
                head_weight=head_weight, layer=spec.key,
                class_weights=None if head_weight is None else head_weight[targets.classes],
                forward=self._model_forward(batch, spec) if "forward" in needs else None)
            with _eval_mode(self.model, self.eval_mode):   # extra forwards run as the first one
                raw = tokens.unfold_from_2d(torch.stack(
                    [smoothing.method_map(m, _with_options(inputs, m.name, self), self.eigen_smooth)
                     for m in layer_methods]), grid)
            if upsample:
                raw = postprocess.upsample(raw, tuple(batch.shape[2:]))
            if normalize:
                raw = postprocess.normalize(raw, len(grid))
            if not targets.per_image:
                raw = raw.squeeze(2)
            for method, method_maps in zip(layer_methods, raw):
                maps[(method.name, spec.key)] = method_maps
        method_list = [m for m in method_list
                       if m.name not in optional or any(key[0] == m.name for key in maps)]
        explanation = self._explanation(maps, logits, targets, method_list, specs, batch, display)
        explanation.notes.extend(notes + tokens.zero_gradient_notes([spec.key for spec in specs], gradients))
        explanation.photos, explanation.frames = photos, frames
        explanation.layer_labels = {**selection_labels(self.model, selection, [spec.key for spec in specs]),
                                    **{spec.key: spec.label for spec in specs if spec.label}}
        if unguided:
            explanation.notes.append(
                "BagCAMs: no nn.ReLU/nn.ReLU6 module (guided_modules) ran after the captured layer(s), so "
                "its backward was not guided (e.g. SiLU/GELU or functional relu); pass guided_modules=. "
                "In a GELU network (ViT, Swin) there is no ReLU to guide: BagCAMs is then the same formula "
                "with the unguided gradient of log(S)")
        return explanation

    def _aug_smoothed(self, images, target, methods, layers, upsample, normalize) -> Explanation:
        """:class:`camkit.smoothing.AugSmooth` maps: targets resolved on the input, then every view."""
        if not upsample:
            raise ValueError("aug_smooth averages maps on the input frame: use upsample=True")
        batch, display = as_batch(images, self.preprocess)
        batch = batch.to(_model_device(self.model, batch.device))
        _check_input(batch)
        target = names_to_classes(target, self.class_names)
        check_target(target, batch.shape[0])
        with torch.no_grad(), _eval_mode(self.model, self.eval_mode):
            logits = as_logits(run_model(self.model, batch), self.output, batch.shape[0])
        resolved = resolve_targets(target, logits)
        classes = resolved.classes if resolved.per_image or resolved.classes is None else resolved.classes[:, 0]
        single = _copy_with(self, aug_smooth=None)
        maps, first = smoothing.aug_smoothed_maps(
            lambda view, view_target: single(view, view_target, methods, layers, True, normalize), batch,
            target if classes is None else classes, self.aug_smooth, normalize)
        size = batch.shape[0]
        return dataclasses.replace(first, maps=maps, logits=logits, images=batch, images_rgb=display,
                                   targets=None if first.targets is None else first.targets[:size],
                                   negative_target_logit=first.negative_target_logit[:size])

    def _passes(self, batch, specs, needs, target, call_totals=None):
        """The forward and the backward(s): activations, logits, targets, gradients, guided
        gradients (lists over ``specs``) and whether a guided backward ran without any clamp."""
        need_grads = bool(needs & {"gradients", "guided_gradients"})
        with _eval_mode(self.model, self.eval_mode), \
                ActivationCapture(self.model, specs,
                                  guided_modules=self.guided_modules if "guided_gradients" in needs else None,
                                  start_graph_at_capture=need_grads, call_totals=call_totals) as capture:
            if not need_grads:
                torch.set_grad_enabled(False)
            output = run_model(self.model, batch)
            activations = [capture.activation(spec) for spec in specs]
            logits, targets = _logits_and_targets(output, self.output, target, batch.shape[0])
            capture.end_forward()
            self._call_totals[_shape_key(batch)] = capture.call_totals
            gradients = guided = [None] * len(specs)
            if "gradients" in needs:
                gradients = _gradients(targets.scores, activations, specs,
                                       retain_graph="guided_gradients" in needs)
            if "guided_gradients" in needs:
                capture.guided = True
                guided = _gradients(targets.scores, activations, specs, retain_graph=False,
                                    output_scale=1 / targets.scores.detach())
        unguided = "guided_gradients" in needs and capture.guided_clamps == 0
        return activations, logits, targets, gradients, guided, unguided

    def _as_maps(self, specs, activations, gradients, guided, batch):
        """Every layer's output and gradients as 2-D channel-first tensors, and each layer's grid
        (see :func:`camkit.tokens.as_method_inputs`)."""
        patch, size = tokens.patch_size(self.model), tuple(batch.shape[2:])
        results = []
        for spec, activation, grad, guided_grad in zip(specs, activations, gradients, guided):
            reshape = self.reshape.get(spec.key) if isinstance(self.reshape, dict) else self.reshape
            try:
                results.append(tokens.as_method_inputs(spec.key, activation.detach(), grad, guided_grad,
                                                       size, patch, reshape))
            except ValueError as error:
                raise LayerError(str(error)) from None
        return [list(column) for column in zip(*results)]

    def _model_forward(self, batch: torch.Tensor, spec) -> ModelForward:
        """What the perturbation methods need for their extra forwards of ``spec``'s layer."""
        total = self._call_totals.get(_shape_key(batch))[spec.module]
        return ModelForward(self.model, batch.detach(), spec, spec.call if spec.call >= 0 else total + spec.call,
                            lambda output, size: as_logits(output, self.output, size))

    def _head_weights(self, needs, specs, activations, logits, targets, optional: bool
                      ) -> Tuple[dict, List[str]]:
        """``{layer key: (K, C) head weight}`` for the layers where the head fits, and notes.

        A head method (CAM) is skipped, with a warning and a note, at layers the classifier does not
        fit (e.g. ``layer3`` of a ResNet) as long as it fits at least one requested layer; when it
        fits none, :class:`HeadNotFoundError` is raised, unless the head methods are ``optional``
        (they came from the standard set), which are then skipped everywhere.
        """
        if "head" not in needs:
            return {}, []
        if targets.classes is None:
            message = ("CAM needs a class index per map, but target is a callable score; "
                       "give class targets or drop 'cam' from methods")
            if not optional:
                raise ValueError(message)
            warnings.warn(f"CAM skipped: {message}", CAMHeadWarning, stacklevel=4)
            return {}, [f"CAM skipped: {message}"]
        weights, errors = {}, {}
        for spec, activation in zip(specs, activations):
            try:
                head = find_head(self.model, activation.shape[1], logits.shape[1], self.head)
                weights[spec.key] = head_weight_matrix(head, activation, logits, spec.key, self.model)
            except HeadNotFoundError as error:   # without its traceback: its frames hold this call's tensors
                errors[spec.key] = error.with_traceback(None)
        if not weights and not optional:
            raise next(iter(errors.values()))
        notes = [f"CAM skipped at layer {key!r}: {error}" for key, error in errors.items()]
        for note in notes:
            warnings.warn(note, CAMHeadWarning, stacklevel=4)
        return weights, notes

    def _resolve_layers(self, batch: torch.Tensor, layers) -> List[LayerSpec]:
        if is_stage_selection(layers):           # probed once per input shape, as for layers=None
            key = (_shape_key(batch), layers)
            if self._auto_layer.get(key) is None:
                self._auto_layer[key] = resolve_layers(self.model, layers, batch)
            return self._auto_layer.get(key)
        if layers is not None:
            return resolve_layers(self.model, layers, batch)
        if isinstance(getattr(self.model, "explain_layer", None), str):      # e.g. FAM's trunk output
            return [resolve_layer(self.model, self.model.explain_layer)]
        key = _shape_key(batch)
        specs = self._auto_layer.get(key)
        if specs is None:
            name, calls = last_spatial_layer(self.model, batch)
            specs = self._auto_layer[key] = [resolve_layer(self.model, name)]
            if self._call_totals.get(key) is None:     # the probe's counts: capture only the last call
                self._call_totals[key] = calls
        return specs

    def _explanation(self, maps, logits, targets: ResolvedTargets, method_list, specs, batch,
                     display) -> Explanation:
        classes = targets.classes
        negative = targets.scores.detach() <= 0        # also for a callable target's scores
        if not targets.per_image:
            negative = negative.squeeze(1)
            classes = None if classes is None else classes.squeeze(1)
        notes = []
        if any(m.name == "bagcams" for m in method_list) and negative.any():
            note = (f"{int(negative.sum())} target logit(s) are <= 0: BagCAMs' gradient of log(S) "
                    f"flips sign there (see Explanation.negative_target_logit)")
            notes.append(note)
            warnings.warn(note, RuntimeWarning, stacklevel=3)
        return Explanation(maps=maps, logits=logits.detach(), targets=classes,
                           methods=[m.name for m in method_list], layers=[s.key for s in specs],
                           images=batch, images_rgb=display, negative_target_logit=negative,
                           class_names=self.class_names, notes=notes)


def explain(model: nn.Module, images, methods: Union[str, Sequence[str], None] = UNSET, layers=None,
            target=None, upsample: bool = True, normalize: bool = True, **options) -> Explanation:
    """Explain ``images`` with ``model``: ``Explainer(model, methods, layers, **options)(images, target)``.

    Example::

        exp = camkit.explain(model, images, methods=("cam", "gradcam", "gradcam++", "pcs", "bagcams"),
                             layers=("layer3", "layer4"))
        exp.maps[("gradcam", "layer4")]   # (B, H, W) in [0, 1]

    With no ``methods``, ``layers``, ``fuse`` or ``preset``: camkit's recommended map, ``exp["bagcams"]``
    (:mod:`camkit.presets`); ``methods=None`` runs the standard set with CAM optional.
    See :class:`Explainer` for ``options`` (``head``, ``output``, ``preprocess``, ``fuse``, ...).
    """
    return Explainer(model, methods=methods, layers=layers, **options)(
        images, target=target, upsample=upsample, normalize=normalize)


# -- helpers ------------------------------------------------------------------------------------

def _shape_key(batch: torch.Tensor) -> tuple:
    """What per-input-shape caches are keyed by: the image shape, dtype and device."""
    return tuple(batch.shape[1:]), batch.dtype, batch.device


def _copy_with(explainer: Explainer, **changes) -> Explainer:
    """A shallow copy of ``explainer`` (same model, options and caches) with ``changes`` set."""
    copied = copy.copy(explainer)
    for name, value in changes.items():
        setattr(copied, name, value)
    return copied


def _method_selection(methods) -> Tuple[List[str], FrozenSet[str]]:
    """The method names and those that may be skipped: ``None`` is the standard set, whose head
    methods (CAM) are optional, and so is ``"all"``: every registered one-pass method for any model (those
    with a need in ``NAMED_ONLY_NEEDS``, perturbation methods and FAM's map, must be named); methods
    named explicitly are all required."""
    if methods is None or _is_all(methods):
        names = list(STANDARD_METHODS) + ([] if methods is None else
                                         [m for m in list_methods() if m not in STANDARD_METHODS
                                          and not get_method(m).needs & NAMED_ONLY_NEEDS])
        return names, frozenset(name for name in names if "head" in get_method(name).needs)
    return _method_names(methods), frozenset()


def _is_all(methods) -> bool:
    return isinstance(methods, str) and methods.lower() == "all"


def _method_names(methods) -> List[str]:
    """Canonical names of ``methods`` (a name or a list of names); raises for anything else."""
    if isinstance(methods, str):
        names = [methods]
    elif isinstance(methods, (list, tuple)):
        names = list(methods)
    else:
        raise TypeError(f"methods must be a method name, a list of names, or None for the standard set; "
                        f"got {type(methods).__name__}. E.g. methods=('gradcam', 'pcs') "
                        f"(camkit.list_methods() lists them)")
    if not names:
        raise ValueError("methods is empty; give at least one (camkit.list_methods() lists them)")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"methods are named by strings, got {name!r} ({type(name).__name__}) in "
                            f"methods={methods!r}; camkit.list_methods() lists the names")
        if "," in name:
            raise ValueError(f"unknown method {name!r}: give several methods as a list, e.g. "
                             f"methods={[part.strip() for part in name.split(',') if part.strip()]}")
    canonical = [get_method(name).name for name in names]
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"methods lists a method twice: {names}")
    return canonical


def _checked_preprocess(preprocess):
    """``preprocess`` as given to :class:`Explainer`: ``None`` is :class:`camkit.Preprocess` ()."""
    if preprocess is None:
        return Preprocess()
    if not callable(preprocess):
        raise TypeError(f"preprocess must be a callable image -> (3, H, W) tensor such as "
                        f"camkit.Preprocess(224), got {type(preprocess).__name__}")
    return preprocess


def _guided_module_types(guided_modules) -> Tuple[type, ...]:
    """``guided_modules`` as a tuple of ``nn.Module`` subclasses (one type, a list, or ``None``)."""
    if guided_modules is None:
        return ()
    types = (guided_modules,) if isinstance(guided_modules, type) else guided_modules
    if not isinstance(types, (list, tuple)) or not all(
            isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise TypeError(f"guided_modules must be nn.Module subclasses, e.g. (nn.ReLU, nn.ReLU6), got "
                        f"{guided_modules!r}")
    return tuple(types)


def _checked_method_options(method_options) -> Dict[str, dict]:
    """``{canonical method name: options}``: names go through the registry (aliases such as
    ``hirescam`` work, a misspelt method raises) and options are checked against the method's."""
    if method_options is None:
        return {}
    if not isinstance(method_options, Mapping):
        raise TypeError(f"method_options must be a dict {{method: {{option: value}}}}, e.g. "
                        f"{{'cam': {{'clamp_negative_weights': True}}}}; got {type(method_options).__name__}")
    checked = {}
    for name, options in method_options.items():
        method = get_method(name)
        if not isinstance(options, Mapping):
            raise TypeError(f"method_options[{name!r}] must be a dict of options, got "
                            f"{type(options).__name__}")
        if method.name in checked:
            raise ValueError(f"method_options gives options for {method.name!r} twice (once by an alias)")
        unknown = sorted(set(options) - method.options) if method.options is not None else []
        if unknown:
            accepted = ", ".join(sorted(method.options)) or "no options"
            raise ValueError(f"method_options[{name!r}] has unknown option(s) {', '.join(map(repr, unknown))}; "
                             f"{method.name!r} takes {accepted}")
        checked[method.name] = dict(options)
    return checked


def _with_options(inputs: LayerInputs, name: str, explainer: Explainer) -> LayerInputs:
    options = dict(explainer.method_options.get(name, {}))
    if explainer.context is not None:
        options.setdefault("context", explainer.context)
    inputs.options = options
    return inputs


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback


def _check_input(batch: torch.Tensor) -> None:
    if batch.shape[0] == 0:
        raise ValueError(f"the input batch is empty (shape {tuple(batch.shape)}); give at least one image")
    finite = torch.isfinite(batch).flatten(1).all(dim=1)
    if not finite.all():
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(f"the input contains NaN or infinite values (image index {bad[:10]}); "
                         f"check the preprocessing")


def _compute_dtype(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if tensor is None or tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.float()


@contextmanager
def _eval_mode(model: nn.Module, enabled: bool):
    flags = {module: module.training for module in model.modules()}
    try:
        if enabled:
            model.eval()
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def _check_reshape_keys(reshape, specs) -> None:
    if isinstance(reshape, Mapping):
        unknown = sorted(set(reshape) - {spec.key for spec in specs})
        if unknown:
            raise LayerError(f"reshape= names layer(s) {unknown} that are not explained; its keys must be "
                             f"among the layers {[spec.key for spec in specs]}")


def _logits_and_targets(output, adapter, target, batch_size: int):
    """The logits and resolved targets of a forward. A dense target (:mod:`camkit.dense_targets`)
    scores the selected model output itself; its ``(B, 1)`` scores stand in for the logits."""
    if is_output_target(target):
        selected = output if adapter is None else select_output(output, adapter)[0]
        scores = output_scores(target, selected, batch_size)
        return scores.detach().unsqueeze(1), ResolvedTargets(None, scores.unsqueeze(1), False)
    logits = as_logits(output, adapter, batch_size)
    return logits, resolve_targets(target, logits)  # in the forward's grad mode: scores need it


def _gradients(scores: torch.Tensor, activations: List[torch.Tensor], specs: List[LayerSpec],
               retain_graph: bool, output_scale: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """``d scores[:, t] / d activation`` for every target ``t``: a list of ``(B, T, C, h, w)``.

    Images are independent in eval mode, so one backward of the batch sum gives every image's
    gradient. Several targets per image use batched ``grad_outputs`` (vmap over the backward), with
    a loop of backwards as the fallback for models that vmap cannot handle.
    """
    if not scores.requires_grad:
        raise RuntimeError("the target scores do not depend differentiably on the captured layers: the "
                           "model's output has no autograd history (is part of its forward under "
                           "torch.no_grad() or detached?)")
    batch, num_targets = scores.shape
    scale = torch.ones_like(scores) if output_scale is None else output_scale

    def backward(grad_outputs, batched, retain):
        grads = torch.autograd.grad(scores, activations, grad_outputs=grad_outputs, retain_graph=retain,
                                    allow_unused=True, is_grads_batched=batched)
        for spec, grad in zip(specs, grads):
            if grad is None:
                raise RuntimeError(f"the target scores do not depend on layer {spec.key!r}: it is not "
                                   f"on the differentiable path from the input to the logits")
        return grads

    if num_targets == 1:
        return [g.unsqueeze(1) for g in backward(scale, False, retain_graph)]
    eye = torch.eye(num_targets, dtype=scores.dtype, device=scores.device)
    batched_outputs = eye[:, None, :] * scale[None]  # (T, B, T)
    try:  # keep the graph: the fallback below needs it if vmap fails part-way
        grads = backward(batched_outputs, True, True)
        return [g.transpose(0, 1) for g in grads]
    except RuntimeError as error:
        if "do not depend" in str(error):
            raise
    per_target = [backward(batched_outputs[t], False, True) for t in range(num_targets)]
    return [torch.stack([grads[i] for grads in per_target], dim=1) for i in range(len(specs))]
