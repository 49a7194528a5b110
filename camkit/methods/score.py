"""Score-CAM and its smoothed / integrated variants (SS-CAM, IS-CAM): channels weighted by how much
the input, masked with each channel, scores the target.

Notation: ``A_k`` is channel ``k`` of the layer, ``H_k`` its upsampled (bilinear) and per-channel
min-max normalised copy at input size (a constant channel gives ``H_k = 0``), ``X`` the input,
``X_b`` the baseline (all zeros), ``p_c(x)`` the target's softmax probability and ``f_c(x)`` its logit.
The map is always ``ReLU(sum_k w_k A_k)`` at layer resolution. Every masked forward goes through
:func:`camkit.methods.perturbation.perturbed_logits` (chunks of ``batch_size``, ``torch.no_grad()``).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from camkit.methods.perturbation import checked_batch_size, perturbed_logits, target_classes
from camkit.methods.registry import LayerInputs, channel_weighted_sum, register

SCORE_FORMS = ("paper", "pytorch-grad-cam", "torchcam")


def channel_masks(channels: torch.Tensor, size, align_corners: bool = False, eps: float = 0.0) -> torch.Tensor:
    """``(N, h, w)`` channels -> ``(N, 1, H, W)`` masks: bilinear upsampling, then per-mask min-max
    ``(H - min) / (max - min + eps)``; with ``eps = 0`` a constant mask becomes zeros."""
    up = F.interpolate(channels.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=align_corners)
    low = up.amin(dim=(-2, -1), keepdim=True)
    span = up.amax(dim=(-2, -1), keepdim=True) - low + eps
    safe = span > 0
    return torch.where(safe, (up - low) / torch.where(safe, span, torch.ones_like(span)), torch.zeros_like(up))


def _gather(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``(B, N, K)`` logits, ``(B, T)`` classes -> ``(B, N, T)``."""
    return logits.gather(2, classes.unsqueeze(1).expand(-1, logits.shape[1], -1))


def _baseline_probabilities(inputs: LayerInputs, classes: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(B, 1, T)`` target probabilities of the all-zero baseline image."""
    images = inputs.forward.images
    logits = perturbed_logits(inputs.forward, 1, batch_size=batch_size,
                              inputs_of=lambda b, n: torch.zeros_like(images[b]))
    return _gather(logits.softmax(dim=-1), classes)


def _probability_gains(inputs: LayerInputs, name: str, samples: int, masked_input_of) -> torch.Tensor:
    """``(B, T, C)``: ``mean_i [p_c(x_{k,i}) - p_c(X_b)]`` over ``samples`` masked inputs per channel,
    ``masked_input_of(b, k, i) -> (N, C_in, H, W)``."""
    classes = target_classes(inputs.targets, name)
    batch_size = checked_batch_size(inputs.options, name)
    channels = inputs.activations.shape[1]
    logits = perturbed_logits(inputs.forward, channels * samples, batch_size=batch_size,
                              inputs_of=lambda b, n: masked_input_of(b, n // samples, n % samples))
    gains = _gather(logits.softmax(dim=-1), classes) - _baseline_probabilities(inputs, classes, batch_size)
    return gains.reshape(gains.shape[0], channels, samples, -1).mean(dim=2).transpose(1, 2)


def _positive_int(inputs: LayerInputs, name: str, option: str, default: int) -> int:
    value = inputs.options.get(option, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"method_options[{name!r}][{option!r}] must be a positive int, got {value!r}")
    return value


@register("scorecam", needs=("forward",), options=("batch_size", "form"), aliases=("score-cam",),
          description="ReLU(sum_k w_k A_k), w_k = p_c(X * H_k) - p_c(X_b): the softmax score gain of the "
                      "input masked by each upsampled, normalised channel (extra forwards); "
                      "options form ('paper', 'pytorch-grad-cam', 'torchcam'), batch_size",
          reference="Wang et al., Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural "
                    "Networks, CVPR Workshops 2020")
def scorecam(inputs: LayerInputs) -> torch.Tensor:
    """Score-CAM: ``w_k = p_c(X * H_k) - p_c(X_b)``, map ``ReLU(sum_k w_k A_k)``.

    ``C`` masked forwards per image, in chunks of ``batch_size`` (default 32).

    Options:
        form: ``"paper"`` (default; the increase of confidence above, upsampling with
            ``align_corners=False``); ``"pytorch-grad-cam"``: its ``ScoreCAM``, ``w = softmax_k(f_c(X * H_k))``
            over the channels of the raw *logits*, with ``align_corners=True`` upsampling and
            ``(H - min) / (max - min + 1e-8)``; ``"torchcam"``: ``w = softmax_k(f_c(X * H_k) - f_c(X))``
            with ``align_corners=False``, which equals the pytorch-grad-cam weights in exact arithmetic
            (a softmax ignores a shift common to all channels) but not its masks. Neither peer form
            subtracts a baseline probability, and their weights are all positive and sum to 1.
        batch_size: masked forwards per chunk.

    Returns:
        ``(B, T, h, w)`` raw maps.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(1, 3, 64, 64), methods="scorecam", layers="layer4")
        exp["scorecam"].shape   # (1, 64, 64), min-max normalised to [0, 1]
    """
    form = inputs.options.get("form", "paper")
    if form not in SCORE_FORMS:
        raise ValueError(f"method_options['scorecam']['form'] must be one of {SCORE_FORMS}, got {form!r}")
    images, activations = inputs.forward.images, inputs.activations
    peer = form == "pytorch-grad-cam"

    def masked(b, k, _i):
        return images[b] * channel_masks(activations[b, k], images.shape[-2:], align_corners=peer,
                                         eps=1e-8 if peer else 0.0).to(images.dtype)

    if form == "paper":
        weights = _probability_gains(inputs, "scorecam", 1, masked)
    else:
        classes = target_classes(inputs.targets, "scorecam")
        logits = perturbed_logits(inputs.forward, activations.shape[1],
                                  batch_size=checked_batch_size(inputs.options, "scorecam"),
                                  inputs_of=lambda b, n: masked(b, n, 0))
        scores = _gather(logits, classes)                                  # (B, C, T)
        if form == "torchcam":
            scores = scores - inputs.logits.gather(1, classes).unsqueeze(1)
        weights = scores.softmax(dim=1).transpose(1, 2)
    return channel_weighted_sum(weights, activations).relu()


@register("sscam", needs=("forward",), options=("batch_size", "num_samples", "std", "noise_on", "seed"),
          aliases=("ss-cam",),
          description="Score-CAM with the gain averaged over num_samples Gaussian perturbations (std) of "
                      "the input or of the masks (noise_on); seeded (extra forwards)",
          reference="Wang et al., SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization, 2020")
def sscam(inputs: LayerInputs) -> torch.Tensor:
    """SS-CAM: ``w_k = mean_i [p_c(x_{k,i}) - p_c(X_b)]``, map ``ReLU(sum_k w_k A_k)``.

    ``x_{k,i} = (X + e_i) * H_k`` (``noise_on="input"``, default) or ``X * (H_k + e_i)``
    (``noise_on="mask"``), ``e_i ~ N(0, std^2)`` (default ``std`` 2.0 for the input, as torchcam;
    give a smaller one for masks), ``i = 1..num_samples`` (default 35). The noise is drawn from a CPU
    generator seeded with ``seed`` (default 0) and shared by every image and channel, so a batch
    gives the maps of its single images. torchcam uses the logit gain and a softmax over channels
    instead (as its Score-CAM); camkit keeps the probability gain of its Score-CAM.

    Returns:
        ``(B, T, h, w)`` raw maps; ``C * num_samples`` masked forwards per image.

    Example::

        exp = camkit.explain(model, images, methods="sscam", layers="layer4",
                             method_options={"sscam": {"num_samples": 8, "seed": 1}})
        exp["sscam"].shape   # (B, H, W)
    """
    samples = _positive_int(inputs, "sscam", "num_samples", 35)
    noise_on = inputs.options.get("noise_on", "input")
    if noise_on not in ("input", "mask"):
        raise ValueError(f"method_options['sscam']['noise_on'] must be 'input' or 'mask', got {noise_on!r}")
    std = float(inputs.options.get("std", 2.0))
    images, activations = inputs.forward.images, inputs.activations
    shape = images.shape[1:] if noise_on == "input" else (1, *images.shape[2:])
    generator = torch.Generator().manual_seed(int(inputs.options.get("seed", 0)))
    noise = (std * torch.randn(samples, *shape, generator=generator, dtype=images.dtype)).to(images.device)

    def masked(b, k, i):
        masks = channel_masks(activations[b, k], images.shape[-2:]).to(images.dtype)
        if noise_on == "input":
            return (images[b] + noise[i]) * masks
        return images[b] * (masks + noise[i])

    return channel_weighted_sum(_probability_gains(inputs, "sscam", samples, masked), activations).relu()


@register("iscam", needs=("forward",), options=("batch_size", "num_samples"), aliases=("is-cam",),
          description="Score-CAM with the gain integrated along the masks (i / N) H_k, i = 1..N "
                      "(extra forwards)",
          reference="Naidu et al., IS-CAM: Integrated Score-CAM for Axiomatic-Based Explanations, 2020")
def iscam(inputs: LayerInputs) -> torch.Tensor:
    """IS-CAM: ``w_k = mean_{i=1..N} [p_c(X * (i/N) H_k) - p_c(X_b)]``, map ``ReLU(sum_k w_k A_k)``.

    A Riemann sum of the Score-CAM gain along the straight path from the baseline mask to ``H_k``
    (``N = num_samples``, default 10). torchcam's ``ISCAM`` accumulates its coefficient
    (``sum_{j <= i} j / N``, which exceeds 1) and uses a softmax over the logit gains; camkit follows
    the integral.

    Returns:
        ``(B, T, h, w)`` raw maps; ``C * num_samples`` masked forwards per image.

    Example::

        exp = camkit.explain(model, images, methods="iscam", layers="layer4",
                             method_options={"iscam": {"num_samples": 5}})
        exp["iscam"].shape   # (B, H, W)
    """
    samples = _positive_int(inputs, "iscam", "num_samples", 10)
    images, activations = inputs.forward.images, inputs.activations

    def masked(b, k, i):
        scale = ((i + 1).to(images.dtype) / samples).reshape(-1, 1, 1, 1)
        return images[b] * scale * channel_masks(activations[b, k], images.shape[-2:]).to(images.dtype)

    return channel_weighted_sum(_probability_gains(inputs, "iscam", samples, masked), activations).relu()
