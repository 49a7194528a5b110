"""KD-CI-CAM's loss terms (Shao et al., arXiv 2301.01060) as pure functions of tensors.

Each returns a scalar: the sum of per-sample terms divided by ``state.normalizer`` (see
:func:`camkit.train.losses.batch_mean`), so a batch split over processes gives the global mean.
Computed in float32 (float64 inputs stay float64).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from camkit.train.losses import batch_mean

__all__ = ["foreground_loss", "difference_loss", "area_loss", "logit_distillation_loss",
           "released_logit_distillation_loss", "activation_distillation_loss"]


def _f(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def foreground_loss(s_fg: torch.Tensor, labels: torch.Tensor, state: Optional[Any] = None) -> torch.Tensor:
    """L_fore = CE(s_fg, y): logits ``(B, K)`` of the foreground-masked image against labels ``(B,)``."""
    return batch_mean(F.cross_entropy(_f(s_fg), labels, reduction="none"), state)


def difference_loss(s_fg: torch.Tensor, s_bg: torch.Tensor, labels: torch.Tensor,
                    state: Optional[Any] = None) -> torch.Tensor:
    """L_diff = CE(s_fg - s_bg, y), logits ``(B, K)`` each: the foreground explains the class, the
    background must not."""
    if s_fg.shape != s_bg.shape:
        raise ValueError(f"s_fg {tuple(s_fg.shape)} and s_bg {tuple(s_bg.shape)} must have one shape")
    return batch_mean(F.cross_entropy(_f(s_fg) - _f(s_bg), labels, reduction="none"), state)


def area_loss(maps: torch.Tensor, state: Optional[Any] = None) -> torch.Tensor:
    """L_area: per sample, the mean over positions of ``map - min(map)``; maps ``(B, H, W)``."""
    if maps.dim() != 3:
        raise ValueError(f"area_loss takes maps (B, H, W), got shape {tuple(maps.shape)}")
    flat = _f(maps).flatten(1)
    per = (flat - flat.min(dim=1, keepdim=True).values).mean(dim=1)
    return batch_mean(per, state)


def logit_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                            state: Optional[Any] = None) -> torch.Tensor:
    """L_ld = T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) per sample (Hinton et al.), logits ``(B, K)``.

    The released code feeds probabilities to ``KLDivLoss`` and has no T²; camkit follows the
    definition. The teacher logits are detached.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_ps = F.log_softmax(_f(student) / temperature, dim=1)
    log_pt = F.log_softmax(_f(teacher).detach() / temperature, dim=1)
    per = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    return batch_mean(per * temperature ** 2, state)


def released_logit_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                                     state: Optional[Any] = None) -> torch.Tensor:
    """The released student's logit term, kept only to measure it: ``KLDivLoss(reduction="batchmean")``
    called with the student's *probabilities* where log-probabilities are expected, and no T².

    Per sample ``sum_k q_k (log q_k - p_k)`` with ``q = softmax(z_t/T)``, ``p = softmax(z_s/T)``, logits
    ``(B, K)``. It is not a divergence (it is not 0 at ``p = q`` and its minimiser is not ``q``); use
    :func:`logit_distillation_loss`. The teacher logits are detached.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = F.softmax(_f(student) / temperature, dim=1)
    log_q = F.log_softmax(_f(teacher).detach() / temperature, dim=1)
    per = (log_q.exp() * (log_q - p)).sum(dim=1)
    return batch_mean(per, state)


def activation_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                                 normalize: str = "softmax", state: Optional[Any] = None) -> torch.Tensor:
    """L_ad: per sample, MSE (mean over all elements) of temperature-normalised maps ``(B, H, W)`` or
    ``(B, N, H, W)`` (one map per class, e.g. the down branch's class maps ``W . F_e``).

    ``normalize="softmax"`` (the paper): exp(a/T)/Σ exp over the positions ``(H, W)`` of each map;
    ``"sigmoid"`` (the authors' code): sigmoid(a/T) elementwise. The teacher map is detached.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student.shape != teacher.shape or student.dim() not in (3, 4):
        raise ValueError(f"maps must both be (B, H, W) or both (B, N, H, W), got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    s, t = _f(student).flatten(-2) / temperature, _f(teacher).detach().flatten(-2) / temperature
    if normalize == "softmax":
        s, t = s.softmax(dim=-1), t.softmax(dim=-1)
    elif normalize == "sigmoid":
        s, t = s.sigmoid(), t.sigmoid()
    else:
        raise ValueError(f"normalize must be 'softmax' or 'sigmoid', got {normalize!r}")
    return batch_mean(((s - t) ** 2).flatten(1).mean(dim=1), state)
