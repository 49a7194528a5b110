"""Post-hoc causal-context correction (CI-CAM's backdoor adjustment) for any trained GAP classifier.

:func:`fit_context` fits, for one layer ``F`` (``(B, C, h, w)``) of a frozen classifier whose logits are
``W . GAP(F) + b``, the two pieces CI-CAM adds on top of a backbone:

1. the causal context pool ``Q`` ``(N, h, w)``, from the class maps ``(W . F_i)[y_i]`` of the correctly
   classified samples of a calibration set. ``calibration="mean"`` (default) takes the fixed point
   directly: ``Q[c] = BN(sum of class c's maps over the whole set)``, which does not depend on the batch
   order. ``calibration="ema"`` runs CI-CAM's training-time rule per batch, ``T[y_i] += (W . F_i)[y_i]``
   then ``Q <- BN(Q + lambda BN(T))`` (:class:`camkit.models.cicam.CausalContextPool`); its first
   update sets ``Q = BN(T_1)`` and later ones add only ``lambda``, so after a few dozen batches ``Q`` is
   still mostly the first batch (CI-CAM makes ~100k updates in training; ~500 wash batch 1 out);
2. the 1x1 projection ``N -> C`` of the enhancement ``F_e = F * (1 + Conv1x1(onehot(c*) x Q[c*]))``
   (``c*`` the model's top-1), trained with the down-branch loss ``CE(W . GAP(F_e) + b, y)`` while the
   backbone and the classifier stay frozen.

It returns a small :class:`CausalContext` (``Q``, the projection, the head bias), saveable with
:meth:`CausalContext.save` / :meth:`CausalContext.load`, which the ``causal`` method uses::

    context = camkit.causal.fit_context(model, "layer4", calibration_loader)
    exp = camkit.explain(model, images, methods="causal", layers="layer4", context=context)

The user's model is left as it was found: parameters and buffers bit-identical (it runs in eval mode
under ``torch.no_grad``), the ``training`` flags, ``requires_grad`` and ``.grad`` unchanged, and no
hooks left attached.

Post-hoc choices that differ from end-to-end CI-CAM (where the backbone co-adapts): the projection
starts at zero by default (``init="zeros"``), so before training ``F_e = F`` and the down branch
equals the model; ``init="default"`` uses PyTorch's default conv initialisation as the recipe does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from camkit.capture import ActivationCapture
from camkit.heads import find_head
from camkit.inputs import IMAGENET_MEAN, IMAGENET_STD
from camkit.layers import resolve_layer
from camkit.models.cicam import CausalContextPool, correct_class_sum, standardize_per_class

__all__ = ["CausalContext", "fit_context"]

_FORMAT = "camkit.causal.CausalContext/1"


class CausalContext:
    """A fitted causal context for one layer of one classifier.

    Attributes:
        pool: the :class:`~camkit.models.cicam.CausalContextPool` (``pool.pool`` is ``Q`` ``(N, h, w)``,
            ``pool.projection`` the 1x1 conv ``N -> C``).
        head_bias: ``(K,)`` bias of the classifier (zeros if it has none), for the down logits.
        layer: the name of the layer it was fitted on.
        combination: default combination weights of the ``causal`` method.
        info: fitting statistics (samples, correctly classified samples, losses per epoch, ...).
    """

    def __init__(self, pool: CausalContextPool, head_bias: torch.Tensor, layer: str = "",
                 combination: Union[str, Sequence[float]] = "cicam-quadratic", info: Optional[dict] = None):
        self.pool = pool
        self.head_bias = head_bias.detach()
        self.layer = layer
        self.combination = combination
        self.info = dict(info or {})

    @property
    def num_classes(self) -> int:
        return self.pool.num_classes

    @property
    def channels(self) -> int:
        return self.pool.channels

    def to(self, device=None, dtype=None) -> "CausalContext":
        """Move (in place) to ``device``/``dtype``; returns ``self``."""
        self.pool.to(device=device, dtype=dtype)
        self.head_bias = self.head_bias.to(device=device, dtype=dtype)
        return self

    def enhance(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``F_e = F * (1 + A)``: ``(B, C, h, w)``, ``c*`` ``(B,)`` -> ``(B, C, h, w)``."""
        if features.dim() != 4 or features.shape[1] != self.channels:
            raise ValueError(f"this causal context was fitted on layer {self.layer!r} with {self.channels} "
                             f"channels; got activations of shape {tuple(features.shape)}. Explain the same "
                             f"layer (layers={self.layer!r})")
        if self.pool.pool.device != features.device:
            self.to(device=features.device)
        with torch.no_grad():
            return self.pool(features, classes.to(features.device))

    def enhance_and_classify(self, features: torch.Tensor, logits: torch.Tensor,
                             head_weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The down branch from the model's layer output and logits.

        Args:
            features: ``(B, C, h, w)`` activations of the fitted layer.
            logits: ``(B, K)`` the model's logits (the up branch); ``c* = argmax``.
            head_weight: ``(K, C)``.

        Returns:
            ``F_e`` ``(B, C, h, w)`` and the down logits ``W . GAP(F_e) + b`` ``(B, K)``.
        """
        if head_weight.shape[0] != self.head_bias.shape[0]:
            raise ValueError(f"the head has {head_weight.shape[0]} classes but the context was fitted for "
                             f"{self.head_bias.shape[0]}")
        enhanced = self.enhance(features, logits.detach().argmax(dim=1))
        down = enhanced.mean(dim=(2, 3)) @ head_weight.to(enhanced.dtype).t()
        return enhanced, down + self.head_bias.to(device=down.device, dtype=down.dtype)

    def predict_logits(self, model: nn.Module, images: torch.Tensor, head=None, output=None) -> torch.Tensor:
        """The corrected (down-branch) logits ``(B, K)`` of ``model`` on ``images`` ``(B, 3, H, W)``.

        Runs ``model`` once in eval mode without gradients (its flags are restored), capturing the
        fitted layer; ``head``/``output`` as in :func:`fit_context`.
        """
        spec = resolve_layer(model, self.layer)
        flags = {module: module.training for module in model.modules()}
        try:
            model.eval()
            with torch.no_grad(), ActivationCapture(model, [spec], start_graph_at_capture=False) as capture:
                out = model(images)
                capture.end_forward()
                features = capture.activation(spec).detach()
        finally:
            for module, flag in flags.items():
                module.training = flag
        logits = _to_logits(out, output).detach()
        weight, _ = _head_weight_and_bias(find_head(model, features.shape[1], logits.shape[1], head))
        return self.enhance_and_classify(features.float(), logits.float(), weight.float())[1]

    # -- persistence --------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        combination = self.combination
        if isinstance(combination, torch.Tensor):
            combination = combination.tolist()
        return {"format": _FORMAT, "pool": self.pool.pool.detach().cpu(),
                "projection_weight": self.pool.projection.weight.detach().cpu(),
                "projection_bias": self.pool.projection.bias.detach().cpu(),
                "head_bias": self.head_bias.cpu(), "layer": self.layer,
                "update_rate": self.pool.update_rate, "eps": self.pool.eps,
                "combination": combination, "info": _plain(self.info)}

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any]) -> "CausalContext":
        if state.get("format") != _FORMAT:
            raise ValueError(f"not a saved camkit CausalContext (format {state.get('format')!r}, "
                             f"expected {_FORMAT!r})")
        q = state["pool"]
        channels, num_classes = state["projection_weight"].shape[:2]
        pool = CausalContextPool(num_classes, channels, tuple(q.shape[1:]), update_rate=state["update_rate"],
                                 eps=state["eps"])
        with torch.no_grad():
            pool.pool.copy_(q)
            pool.projection.weight.copy_(state["projection_weight"])
            pool.projection.bias.copy_(state["projection_bias"])
        return cls(pool, state["head_bias"], state["layer"], state["combination"], state.get("info"))

    def save(self, path: Union[str, Path]) -> None:
        """Write to ``path`` (a ``torch.save`` file of plain tensors, loadable with ``weights_only``)."""
        torch.save(self.state_dict(), str(path))

    @classmethod
    def load(cls, path: Union[str, Path], map_location="cpu") -> "CausalContext":
        """Read a context written by :meth:`save`."""
        return cls.from_state_dict(torch.load(str(path), map_location=map_location, weights_only=True))

    def __repr__(self) -> str:
        return (f"CausalContext(layer={self.layer!r}, classes={self.num_classes}, channels={self.channels}, "
                f"size={self.pool.size}, combination={self.combination!r})")


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def _as_batches(loader, batch_size: int) -> Iterable:
    """A map-style dataset -> a ``DataLoader`` of ``batch_size`` (in order); any other iterable as is."""
    dataset = torch.utils.data
    if isinstance(loader, dataset.Dataset) and not isinstance(loader, dataset.IterableDataset):
        return dataset.DataLoader(loader, batch_size=batch_size, shuffle=False)
    return loader


def _uint8_normalizer(preprocess) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> model input``: integer images ``/ 255`` then ``(x - mean) / std``; float images as is."""
    mean = getattr(preprocess, "mean", IMAGENET_MEAN)
    std = getattr(preprocess, "std", IMAGENET_STD)

    def to_input(images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():
            return images
        view = (1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(view)
        std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(view)
        return (images.float() / 255 - mean_t) / std_t

    return to_input


def _split_batch(batch) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        if "image" not in batch or "label" not in batch:
            raise KeyError(f"calibration batches that are dicts need 'image' and 'label' keys; got {sorted(batch)}")
        return batch["image"], batch["label"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError("each calibration batch must be (images, labels) or a dict with 'image' and 'label'")


def _to_logits(output, adapter) -> torch.Tensor:
    if adapter is not None:
        output = adapter(output) if callable(adapter) else output[adapter]
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise TypeError("the model output is not (B, K) logits; pass output= (a key, index or callable), "
                        "as for camkit.explain")
    return output


def _head_weight_and_bias(head) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(head, torch.Tensor):
        return head.detach().reshape(head.shape[0], -1), None
    if isinstance(head, (tuple, list)) and len(head) == 2:
        weight, bias = head
        return weight.detach().reshape(weight.shape[0], -1), None if bias is None else bias.detach()
    if isinstance(head, (nn.Linear, nn.Conv2d)):
        weight = head.weight.detach()
        return weight.reshape(weight.shape[0], -1), None if head.bias is None else head.bias.detach()
    raise TypeError(f"head must be an nn.Linear, a 1x1 nn.Conv2d, a (K, C) tensor or (weight, bias); "
                    f"got {type(head).__name__}")


def fit_context(model: nn.Module, layer, loader: Iterable, *, head=None, output=None,
                transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                epochs: int = 5, lr: float = 1e-2, update_rate: float = 0.01, eps: float = 1e-5,
                calibration: str = "mean", calibration_passes: int = 1, init: str = "zeros",
                combination="cicam-quadratic",
                cache_limit_bytes: int = 1 << 30, seed: int = 0, device=None, preprocess=None,
                batch_size: int = 32) -> CausalContext:
    """Fit a :class:`CausalContext` for ``layer`` of the frozen ``model`` on ``loader``.

    Args:
        model: a trained classifier whose logits are ``W . GAP(layer output) + b``.
        layer: the layer feeding global average pooling (a name, ``"name@k"`` or module).
        loader: an iterable of ``(images, labels)`` or dicts with ``"image"`` ``(B, 3, H, W)`` and
            ``"label"`` ``(B,)``, or a map-style dataset of such samples (camkit's own datasets, e.g.
            :func:`camkit.data.make_synthetic`), batched by ``batch_size``. Integer (uint8) images are
            divided by 255 and normalised with ``preprocess``'s mean and std; float images are taken
            as the model's input. It is iterated ``calibration_passes`` times for ``Q`` and, when
            the layer outputs do not fit in ``cache_limit_bytes``, once per training epoch.
        head: the classifier (``nn.Linear``, 1x1 ``nn.Conv2d``, ``(K, C)`` tensor or ``(weight, bias)``);
            found automatically like CAM's head when ``None``.
        output: key, index or callable that picks the ``(B, K)`` logits from the model output.
        transform: applied to each image batch on the device instead of the uint8 conversion.
        preprocess: whose ``mean`` and ``std`` normalise uint8 images (``camkit.load_model(...)
            .preprocess``); default ImageNet's.
        batch_size: the batch size used when ``loader`` is a dataset.
        epochs: training epochs of the projection (Adam, poly schedule ``lr (1 - e/E)^0.9``).
        lr: base learning rate of the projection.
        update_rate, eps: the pool's ``lambda`` and BatchNorm epsilon.
        calibration: ``"mean"`` (``Q[c]`` = the standardised sum of the correctly classified samples'
            class-``c`` maps over the whole loader: the pool's fixed point, order-free) or ``"ema"``
            (CI-CAM's per-batch update with rate ``update_rate``: dominated by the first batches
            unless the loader yields hundreds of them).
        calibration_passes: passes over ``loader`` for the estimation of ``Q`` (``"ema"``; with
            ``"mean"`` every pass adds the same sum, so one is enough).
        init: ``"zeros"`` (the down branch starts equal to the model) or ``"default"`` (PyTorch's conv
            initialisation, seeded by ``seed``).
        combination: default combination weights of the ``causal`` method for this context.
        device: where to fit; default the model's device.

    Returns:
        the fitted :class:`CausalContext` (on ``device``).
    """
    if init not in ("zeros", "default"):
        raise ValueError(f"init must be 'zeros' or 'default', got {init!r}")
    if calibration not in ("mean", "ema"):
        raise ValueError(f"calibration must be 'mean' (the pool's fixed point) or 'ema' (CI-CAM's per-batch "
                         f"update), got {calibration!r}")
    if epochs < 0 or calibration_passes < 1:
        raise ValueError("epochs must be >= 0 and calibration_passes >= 1")
    spec = resolve_layer(model, layer)
    loader = _as_batches(loader, batch_size)
    to_input = transform if transform is not None else _uint8_normalizer(preprocess)
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)

    flags = {module: module.training for module in model.modules()}
    cache: Optional[list] = []
    cached_bytes = 0
    weight = bias = None
    pool: Optional[CausalContextPool] = None
    total: Optional[torch.Tensor] = None
    samples = correct = 0

    def frozen_pass():
        """Yield (features, logits, labels) for every batch of the loader, model frozen."""
        for batch in loader:
            images, labels = _split_batch(batch)
            images = to_input(images.to(device))
            labels = torch.as_tensor(labels).to(device=device, dtype=torch.long)
            with torch.no_grad(), ActivationCapture(model, [spec], start_graph_at_capture=False) as capture:
                out = model(images)
                capture.end_forward()
                features = capture.activation(spec).detach()
            yield features.float(), _to_logits(out, output).detach().float(), labels

    try:
        model.eval()
        # 1. estimate Q with the frozen model (the model's logits play the up branch)
        for calibration_pass in range(calibration_passes):
            for features, logits, labels in frozen_pass():
                if pool is None:
                    found = find_head(model, features.shape[1], logits.shape[1], head)
                    weight, bias = _head_weight_and_bias(found)
                    weight = weight.to(device=device, dtype=torch.float32)
                    if tuple(weight.shape) != (logits.shape[1], features.shape[1]):
                        raise ValueError(f"the head weight has shape {tuple(weight.shape)}; layer {spec.key!r} "
                                         f"has {features.shape[1]} channels and the model {logits.shape[1]} "
                                         f"logits")
                    bias = (torch.zeros(logits.shape[1], device=device) if bias is None
                            else bias.to(device=device, dtype=torch.float32))
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(seed)
                        pool = CausalContextPool(logits.shape[1], features.shape[1], tuple(features.shape[2:]),
                                                 update_rate=update_rate, eps=eps, sync=False).to(device)
                    if init == "zeros":
                        nn.init.zeros_(pool.projection.weight)
                        nn.init.zeros_(pool.projection.bias)
                maps = torch.einsum("kc,bchw->bkhw", weight, features)
                if calibration == "ema":
                    pool.update(maps, logits, labels)
                else:
                    batch_total = correct_class_sum(maps, logits, labels)
                    total = batch_total if total is None else total + batch_total
                if calibration_pass == 0:
                    samples += labels.numel()
                    correct += int((logits.argmax(1) == labels).sum())
                    if cache is not None and epochs > 0:
                        size = features.numel() * features.element_size()
                        if cached_bytes + size <= cache_limit_bytes:
                            cache.append((features, logits, labels))
                            cached_bytes += size
                        else:
                            cache = None
        if pool is None:
            raise ValueError("the calibration loader yielded no batches")
        if total is not None:
            pool.pool.copy_(standardize_per_class(total, eps))
        # 2. train the projection with the down-branch loss; backbone and classifier frozen
        optimizer = torch.optim.Adam(pool.projection.parameters(), lr=lr)
        losses = []
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 - epoch / epochs) ** 0.9
            total, count = 0.0, 0
            batches = cache if cache is not None else frozen_pass()
            for features, logits, labels in batches:
                enhanced = pool(features, logits.argmax(dim=1))
                down = enhanced.mean(dim=(2, 3)) @ weight.t() + bias
                loss = F.cross_entropy(down, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * labels.numel()
                count += labels.numel()
            losses.append(total / max(count, 1))
    finally:
        for module, flag in flags.items():
            module.training = flag

    pool.projection.weight.requires_grad_(False)
    pool.projection.bias.requires_grad_(False)
    info = {"samples": samples, "correct": correct, "epochs": epochs, "lr": lr,
            "calibration": calibration, "calibration_passes": calibration_passes, "init": init, "train_loss": losses,
            "cached": cache is not None}
    return CausalContext(pool.eval(), bias, spec.key, combination, info)
