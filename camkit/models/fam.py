"""FAM, foreground activation maps (Meng et al., ICCV 2021), and thresholded average pooling (TAP).

FAM reads localization off one class-agnostic foreground map ``M`` instead of the classifier::

    X = backbone(image)                                  (B, C, h, w)
    Q = Conv1x1_{C->d}(X), d = max(1, C // 16)           queries (B, d, h, w)
    beta_ij^n = q_ij . k_n / sqrt(d)                     N memory keys k_n (d,), values v_n (C,)
    s_ij = softmax_n(beta_ij)                            (attention="softmax", camkit's default)
    w_ij = sum_n s_ij^n v_n ;  M_ij = sigmoid(w_ij . x_ij)    foreground map (B, 1, h, w)
    A = sigmoid(Conv1x1_{C->K}(X * M))                   K part maps (B, K, h, w)
    p^k = mean_ij X_ij A^k_ij                            part features (B, K, C), from X as printed
    t = softmax_k(Linear_{C->1}(p^k)) ;  o = sum_k t^k p^k ;  logits = Linear_{C->classes}(o)

Paper vs camkit: the paper prints ``s = beta / sum_n beta``, a normalisation of scores that may be
negative or sum to 0 (ill-posed); camkit uses a softmax over ``n`` by default and offers the printed
form as ``attention="literal"`` (its denominator is kept away from 0 by ``eps`` with its sign).
The authors' released code was not compared here (this module follows the paper's text).

Ablations: ``memory=False`` replaces the memory by three 1x1 convs ``C -> d -> d -> 1`` (ReLU between)
before the sigmoid; ``parts=False`` drops the part module and classifies ``o = mean_ij (X * M)_ij``
(camkit's choice: the classifier must see ``M``, else only the sparsity loss trains it and ``M -> 0``).

``model(images)`` returns the logits ``(B, K)``, so every camkit method works on FAM's classifier
without ``output=``; ``model(images, return_maps=True)`` returns the dict the ``fam`` recipe trains on
(``"logits"``, ``"foreground"`` ``(B, 1, h, w)``, ``"parts"`` ``(B, K, h, w)``, ``"part_features"``
``(B, K, C)``); ``model.foreground_map(images)`` is what ``camkit.explain(model, x, methods="fam")``
returns (upsampled and normalised like every map).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["FAM", "ThresholdedAvgPool", "build_fam", "FAM_ATTENTIONS"]

FAM_ATTENTIONS = ("softmax", "literal")


class ThresholdedAvgPool(nn.Module):
    """Thresholded average pooling (TAP, Bae et al., ECCV 2020), a drop-in for ``AdaptiveAvgPool2d(1)``.

    Per image and channel, the positions with ``x > tau * max_m x`` are averaged; a channel with no
    such position (all values equal, e.g. all zero after a ReLU) divides by 1. Input ``(B, C, h, w)``,
    output ``(B, C, 1, 1)``. The CAM of a TAP-trained model is still ``sum_k W[c, k] A_k`` on the
    unthresholded features; CAM's head check accepts ``W @ TAP(A) + b`` (``is_global_pool``), so
    ``camkit.explain(model, x, methods="cam")`` on a TAP model finds the head without a warning.
    """

    #: a drop-in for GAP: CAM's head check (:mod:`camkit.heads`) accepts ``W @ TAP(A) + b`` as the logits
    is_global_pool = True

    def __init__(self, tau: float = 0.1):
        super().__init__()
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= float(tau) < 1.0:
            raise ValueError(f"tau must be a float in [0, 1) (the fraction of each channel's maximum "
                             f"kept, 0.1 in the paper), got {tau!r}")
        self.tau = float(tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"ThresholdedAvgPool expects (B, C, h, w) features, got {tuple(x.shape)}")
        flat = x.flatten(2)
        peak = flat.amax(dim=2, keepdim=True)
        kept = (flat > self.tau * peak).to(flat.dtype)
        count = kept.sum(dim=2).clamp(min=1.0)
        return ((flat * kept).sum(dim=2) / count)[..., None, None]

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


def _check_count(value, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int ({what}), got {value!r}")
    return value


def _checked_class_weights(class_weights, num_classes: int) -> Optional[torch.Tensor]:
    if class_weights is None:
        return None
    try:
        weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError):
        weights = None
    if weights is None or weights.numel() != num_classes or not torch.isfinite(weights).all() or (weights <= 0).any():
        raise ValueError(f"class_weights must be None or {num_classes} finite positive numbers (one per class, "
                         f"e.g. camkit.train.fam_losses.balanced_class_weights(labels, {num_classes})), got "
                         f"{class_weights!r}")
    return weights


class FAM(nn.Module):
    """FAM on a feature extractor ``features: (B, 3, H, W) -> (B, C, h, w)`` (see the module docstring).

    Args:
        features: the backbone trunk; ``channels`` is its output channel count.
        num_classes: classifier outputs.
        templates: memory size ``N`` (3 in the paper). parts: ``K`` part maps (5), or ``0`` for the
            ablation without the part module. memory: ``False`` for three 1x1 convs instead.
        attention: ``"softmax"`` (default) or ``"literal"`` (``beta / sum_n beta``, as printed).
        lambda_spa, lambda_div: the loss weights read by the ``fam`` recipe (0.04, 0.01).
        class_weights: ``None`` (all 1) or ``K`` positive weights of the class-balanced cross-entropy
            (:func:`camkit.train.fam_losses.balanced_class_weights`), kept as the buffer ``class_weights``.

    ``cam_layer = explain_layer = "features"``: the trunk output ``X``, the layer that
    ``camkit.explain`` captures by default (``layers=None``) and where the ``fam`` method reads ``M``.
    """

    cam_layer = "features"
    explain_layer = "features"

    def __init__(self, features: nn.Module, channels: int, num_classes: int, templates: int = 3,
                 parts: int = 5, memory: bool = True, attention: str = "softmax",
                 lambda_spa: float = 0.04, lambda_div: float = 0.01, class_weights=None, eps: float = 1e-6,
                 new_layer_prefixes=("encoder", "keys", "values", "foreground_head", "part_conv",
                                     "importance", "classifier")):
        super().__init__()
        _check_count(channels, "channels", "the feature channels")
        _check_count(num_classes, "num_classes", "the classes")
        _check_count(templates, "templates", "the memory size N, 3 in the paper")
        if isinstance(parts, bool) or not isinstance(parts, int) or parts < 0:
            raise ValueError(f"parts must be an int >= 0 (K part maps, 5 in the paper; 0 drops the part "
                             f"module), got {parts!r}")
        if attention not in FAM_ATTENTIONS:
            raise ValueError(f"attention must be one of {FAM_ATTENTIONS}, got {attention!r}")
        for name, value in (("lambda_spa", lambda_spa), ("lambda_div", lambda_div)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a float >= 0, got {value!r}")
        weights = _checked_class_weights(class_weights, num_classes)
        self.features = features
        self.channels, self.num_classes, self.templates, self.parts = channels, num_classes, templates, parts
        self.memory, self.attention, self.eps = bool(memory), attention, float(eps)
        self.lambda_spa, self.lambda_div = float(lambda_spa), float(lambda_div)
        self.key_dim = max(1, channels // 16)
        d = self.key_dim
        if self.memory:
            self.encoder = nn.Conv2d(channels, d, 1)
            self.keys = nn.Parameter(torch.randn(templates, d) / math.sqrt(d))
            self.values = nn.Parameter(torch.randn(templates, channels) / math.sqrt(channels))
        else:
            self.foreground_head = nn.Sequential(nn.Conv2d(channels, d, 1), nn.ReLU(), nn.Conv2d(d, d, 1),
                                                 nn.ReLU(), nn.Conv2d(d, 1, 1))
        if parts:
            self.part_conv = nn.Conv2d(channels, parts, 1)
            self.importance = nn.Linear(channels, 1)
        self.classifier = nn.Linear(channels, num_classes)
        self.register_buffer("class_weights", weights)
        self.new_layer_prefixes = tuple(new_layer_prefixes)

    def template_weights(self, features: torch.Tensor) -> torch.Tensor:
        """``s_ij^n``: ``(B, N, h, w)`` weights of the memory templates at each position."""
        queries = self.encoder(features)
        beta = torch.einsum("bdhw,nd->bnhw", queries, self.keys) / math.sqrt(self.key_dim)
        if self.attention == "softmax":
            return beta.softmax(dim=1)
        total = beta.sum(dim=1, keepdim=True)
        sign = torch.where(total < 0, -torch.ones_like(total), torch.ones_like(total))
        return beta / (sign * total.abs().clamp(min=self.eps))

    def foreground_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """``M``: ``(B, 1, h, w)`` in (0, 1) from backbone features ``(B, C, h, w)``."""
        if not self.memory:
            return torch.sigmoid(self.foreground_head(features))
        weights = self.template_weights(features)
        classifiers = torch.einsum("bnhw,nc->bchw", weights, self.values)
        return torch.sigmoid((classifiers * features).sum(dim=1, keepdim=True))

    def forward(self, images: torch.Tensor, return_maps: bool = False):
        features = self.features(images)
        foreground = self.foreground_from_features(features)
        masked = features * foreground
        if self.parts:
            parts = torch.sigmoid(self.part_conv(masked))
            part_features = torch.einsum("bchw,bkhw->bkc", features, parts) / (parts.shape[-2] * parts.shape[-1])
            importance = self.importance(part_features).squeeze(-1).softmax(dim=1)
            pooled = (importance.unsqueeze(-1) * part_features).sum(dim=1)
        else:
            parts = features.new_zeros(features.shape[0], 0, *features.shape[2:])
            part_features = features.new_zeros(features.shape[0], 0, features.shape[1])
            pooled = masked.mean(dim=(2, 3))
        logits = self.classifier(pooled)
        if not return_maps:
            return logits
        return {"logits": logits, "foreground": foreground, "parts": parts, "part_features": part_features}

    def foreground_map(self, images: torch.Tensor) -> torch.Tensor:
        """FAM's class-agnostic foreground map ``M`` ``(B, 1, h, w)`` for ``images`` ``(B, 3, H, W)``."""
        return self.foreground_from_features(self.features(images))


def build_fam(backbone: str = "tiny", num_classes: int = 4, pretrained=None, templates: int = 3, parts: int = 5,
              memory: bool = True, attention: str = "softmax", lambda_spa: float = 0.04,
              lambda_div: float = 0.01, class_weights=None, **options) -> FAM:
    """A FAM model on a camkit backbone (the ``fam`` recipe's ``build_model``); ``options`` go to
    :func:`camkit.models.backbones.build_backbone`. The backbone's head is dropped
    (:class:`camkit.models.cicam.BackboneTrunk`) and its new layers stay new."""
    from camkit.models.backbones import build_backbone
    from camkit.models.cicam import BackboneTrunk
    net = build_backbone(backbone, num_classes=num_classes, pretrained=pretrained, **options)
    new = tuple(getattr(net, "new_layer_prefixes", ()))
    channels = net.fc.in_features if hasattr(net, "fc") else None
    trunk = BackboneTrunk(net)
    if channels is None:
        with torch.no_grad():
            channels = trunk(torch.zeros(1, 3, 64, 64)).shape[1]
    prefixes = ("encoder", "keys", "values", "foreground_head", "part_conv", "importance", "classifier") + tuple(
        f"features.net.{p}" for p in new if p != trunk.head_name)
    model = FAM(trunk, channels, num_classes, templates=templates, parts=parts, memory=memory,
                attention=attention, lambda_spa=lambda_spa, lambda_div=lambda_div, class_weights=class_weights,
                new_layer_prefixes=prefixes)
    model.backbone_name = backbone
    return model
