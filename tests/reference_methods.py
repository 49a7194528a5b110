"""Slow float64 reference implementations of the CAM methods, written straight from DESIGN.md.

These are the *truth side* of the engine tests. They share no code with ``camkit``: the model is
deep-copied and cast to float64, split at the requested layer with a forward hook that swaps the
layer's output for a fresh leaf tensor, and every gradient is a plain ``torch.autograd.grad`` of one
scalar (one image, one class at a time). Each method first forms its per-channel terms ``(C, h, w)``
exactly as the definition writes them, then sums over channels. Clarity beats speed here.

Notation (DESIGN.md, "Method semantics"): ``A`` is the activation at the layer, ``(C, h, w)`` for one
image, channels ``k`` and positions ``m``; ``S_c`` is the target logit; ``g = dS_c/dA``, ``(C, h, w)``.

=========== ==================================================================================
CAM         ``sum_k W[c,k] A_k(m)``; no ReLU, no bias. ``clamp_negative_weights`` uses
            ``max(W[c,k], 0)`` instead (NWC, Bae et al. 2020).
Grad-CAM    ``ReLU(sum_k mean_m(g_k) A_k)``.
Grad-CAM++  ``alpha = g^2 / (2 g^2 + (sum_m A_k(m)) g^3)``, ``alpha = 0`` where ``g = 0``;
            ``w_k = sum_m alpha ReLU(g)``; map ``ReLU(sum_k w_k A_k)`` (eq. 19, exponential score).
PCS         ``ReLU(sum_k g_k(m) A_k(m))`` (= HiResCAM).
BagCAMs     ``g_hat`` = gradient of ``log(S_c)`` backpropagated with guided ReLUs (at every
            ``nn.ReLU`` / ``nn.ReLU6`` module downstream of the layer the incoming gradient is
            clamped at zero before the usual ReLU mask); ``t_k = 1 + mean_m(g_hat_k A_k)``;
            map ``sum_k ReLU(t_k g_hat_k(m) A_k(m))``.
=========== ==================================================================================

The gradient of ``log(S_c)`` is taken literally with autograd, i.e. the backward pass is seeded with
``1 / S_c``. For ``S_c < 0`` that seed is negative, so the guided clamps then keep the *other* sign
of the gradient than they would for ``S_c > 0`` (the engine is expected to flag that case).

Post-processing (shared by every method): bilinear upsampling with ``align_corners=False`` to the
input size (written out from the definition below), then per-image min-max normalisation; a
constant map becomes all zeros.
"""
import copy
import math

import torch
from torch import nn

METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")


# --------------------------------------------------------------------------------------------------
# The model side: float64 copy, split at a layer, guided ReLUs.
# --------------------------------------------------------------------------------------------------
class _GuidedClampFunction(torch.autograd.Function):
    """``clamp(x, 0, upper)`` whose backward passes ``clamp(grad, min=0) * 1[0 < x < upper]``."""

    @staticmethod
    def forward(ctx, x, upper):
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(min=0.0) if upper is None else x.clamp(0.0, upper)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        passes = x > 0
        if ctx.upper is not None:
            passes = passes & (x < ctx.upper)
        return grad_output.clamp(min=0.0) * passes.to(grad_output.dtype), None


class GuidedReLU(nn.Module):
    """Drop-in for ``nn.ReLU`` (``upper=None``) or ``nn.ReLU6`` (``upper=6``) with a guided backward."""

    def __init__(self, upper=None):
        super().__init__()
        self.upper = upper

    def forward(self, x):
        return _GuidedClampFunction.apply(x, self.upper)


def float64_copy(model, guided=False):
    """A deep float64 copy of ``model`` (same training flags); with ``guided=True`` every
    ``nn.ReLU`` / ``nn.ReLU6`` child module is replaced by a :class:`GuidedReLU` of the same name."""
    copied = copy.deepcopy(model).double()
    for parameter in copied.parameters():
        parameter.requires_grad_(False)  # only the split leaf needs a graph
    if guided:
        for parent in list(copied.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, nn.ReLU6):
                    setattr(parent, child_name, GuidedReLU(upper=6.0))
                elif isinstance(child, nn.ReLU):
                    setattr(parent, child_name, GuidedReLU(upper=None))
    return copied


def split_forward(model, layer, image, call=None):
    """Run ``model`` on one image with the output of ``layer`` replaced by a fresh leaf.

    Args:
        model: a float64 model (see :func:`float64_copy`).
        layer: module name as in ``model.named_modules()``.
        image: ``(1, 3, H, W)`` float64.
        call: which call of a module that runs several times per forward (0-based; negative counts
            from the end). ``None`` requires the module to run exactly once.

    Returns:
        ``(A, logits)``: the leaf activation ``(1, C, h, w)`` (requires grad; everything after the
        layer is a function of it) and the logits ``(K,)``.
    """
    module = dict(model.named_modules())[layer]
    if call is not None and call < 0:
        counter = module.register_forward_hook(lambda *args: calls.append(None))
        calls = []
        try:
            with torch.no_grad():
                model(image)
        finally:
            counter.remove()
        call = len(calls) + call
    seen, captured = [], []

    def swap_output_for_leaf(_module, _inputs, output):
        seen.append(None)
        if call is not None and len(seen) - 1 != call:
            return None
        leaf = output.detach().clone().requires_grad_(True)
        captured.append(leaf)
        # Hand a copy downstream so that an in-place op after the layer cannot touch the leaf.
        return leaf.clone()

    handle = module.register_forward_hook(swap_output_for_leaf)
    try:
        with torch.enable_grad():
            logits = model(image)
    finally:
        handle.remove()
    if call is None:
        assert len(seen) == 1, f"layer {layer!r} ran {len(seen)} times; pass call="
    assert len(captured) == 1, f"call {call} of layer {layer!r} not found ({len(seen)} calls)"
    assert logits.dim() == 2 and logits.shape[0] == 1, f"expected (1, K) logits, got {tuple(logits.shape)}"
    return captured[0], logits[0]


def activation_logits_gradients(model, layer, image, classes, guided=False, log_score=False, call=None):
    """Activation, logits and one gradient per class at ``layer`` for one image.

    Args:
        model: any ``nn.Module``; it is copied to float64 here (``guided`` swaps ReLUs).
        layer: module name.
        image: ``(3, H, W)`` or ``(1, 3, H, W)``; cast to float64.
        classes: iterable of class indices, or of callables ``logits (1, K) -> (1,)`` scores.
        guided: guided ReLUs downstream of the layer.
        log_score: differentiate ``log(S_c)`` (autograd seeds the backward with ``1 / S_c``).
        call: see :func:`split_forward`.

    Returns:
        ``A`` ``(C, h, w)``, ``logits`` ``(K,)``, list of gradients ``(C, h, w)``, one per class.
        All float64 and detached.
    """
    return gradients_of_float64_model(float64_copy(model, guided=guided), layer, image, classes, log_score,
                                      call)


def gradients_of_float64_model(model64, layer, image, classes, log_score=False, call=None):
    """:func:`activation_logits_gradients` on an already prepared :func:`float64_copy`."""
    x = image.detach().to(torch.float64)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    A, logits = split_forward(model64, layer, x, call=call)
    gradients = []
    for c in classes:
        score = c(logits.unsqueeze(0))[0] if callable(c) else logits[int(c)]
        if log_score:
            score = torch.log(score)  # NaN value for S_c < 0, but its gradient is still 1 / S_c.
        (g,) = torch.autograd.grad(score, A, retain_graph=True)
        gradients.append(g[0].detach())
    return A[0].detach(), logits.detach(), gradients


# --------------------------------------------------------------------------------------------------
# The methods: one image, one class. A, g: (C, h, w) float64 -> map (h, w).
# Each method is "per-channel terms (C, h, w), then combine": the terms are also what sets the
# floating-point error scale of a fast implementation (see term_magnitude). Channel k of every
# (C, h, w) tensor below is that channel's term; nothing is shared across images or classes.
# --------------------------------------------------------------------------------------------------
def cam_terms(A, class_weight, clamp_negative_weights=False):
    """``W[c,k] A_k(m)`` for each channel k; ``class_weight`` is the head row ``W[c]`` ``(C,)``."""
    C = A.shape[0]
    assert class_weight.shape == (C,), f"head row has {tuple(class_weight.shape)}, layer has {C} channels"
    weight = class_weight.to(torch.float64)
    if clamp_negative_weights:
        weight = weight.clamp(min=0.0)
    return weight[:, None, None] * A


def gradcam_terms(A, g):
    """``mean_m(g_k) A_k`` for each channel k."""
    return g.mean(dim=(1, 2))[:, None, None] * A


def gradcam_plus_plus_alpha(A, g):
    """``alpha_k(m) = g^2 / (2 g^2 + sum_m(A_k) g^3)``, literally, and ``alpha = 0`` where ``g = 0``.
    ``A, g``: ``(C, h, w)``; returns ``(C, h, w)``."""
    sum_A = A.sum(dim=(1, 2), keepdim=True)
    g2, g3 = g ** 2, g ** 3
    nonzero = g != 0
    denominator = torch.where(nonzero, 2.0 * g2 + sum_A * g3, torch.ones_like(g))
    return torch.where(nonzero, g2 / denominator, torch.zeros_like(g))


def gradcam_plus_plus_terms(A, g):
    """``w_k A_k`` with ``w_k = sum_m alpha_k(m) ReLU(g_k(m))`` (Grad-CAM++, eq. 19, exponential score)."""
    weight = (gradcam_plus_plus_alpha(A, g) * g.clamp(min=0.0)).sum(dim=(1, 2))
    return weight[:, None, None] * A


def pcs_terms(A, g):
    """``g_k(m) A_k(m)`` for each channel k."""
    return g * A


def bagcams_terms(A, g_hat):
    """``ReLU(t_k g_hat_k(m) A_k(m))`` with ``t_k = 1 + mean_m(g_hat_k A_k)``; ``g_hat`` must already be
    the guided gradient of ``log(S_c)``."""
    t = 1.0 + (g_hat * A).mean(dim=(1, 2), keepdim=True)
    return (t * g_hat * A).clamp(min=0.0)


def cam(A, class_weight, clamp_negative_weights=False):
    """CAM: ``sum_k W[c,k] A_k(m)``; no ReLU, no bias."""
    return cam_terms(A, class_weight, clamp_negative_weights).sum(0)


def gradcam(A, g):
    """Grad-CAM: ``ReLU(sum_k mean_m(g_k) A_k)``."""
    return gradcam_terms(A, g).sum(0).clamp(min=0.0)


def gradcam_plus_plus(A, g):
    """Grad-CAM++: ``ReLU(sum_k w_k A_k)``, ``w_k`` from :func:`gradcam_plus_plus_terms`."""
    return gradcam_plus_plus_terms(A, g).sum(0).clamp(min=0.0)


def pcs(A, g):
    """PCS / HiResCAM: ``ReLU(sum_k g_k(m) A_k(m))``."""
    return pcs_terms(A, g).sum(0).clamp(min=0.0)


def bagcams(A, g_hat):
    """BagCAMs: ``sum_k ReLU(t_k g_hat_k(m) A_k(m))`` (ReLU per term, then the channel sum)."""
    return bagcams_terms(A, g_hat).sum(0)


def term_magnitude(terms):
    """``sum_k |term_k(m)|`` ``(h, w)``: the scale of the rounding error of any implementation that
    sums the channel terms (cancellation can make the map itself much smaller than this)."""
    return terms.abs().sum(0)


# --------------------------------------------------------------------------------------------------
# Post-processing.
# --------------------------------------------------------------------------------------------------
def _bilinear_axis_weights(in_size, out_size):
    """``(out_size, in_size)`` matrix of 1-D linear interpolation, ``align_corners=False``.

    Output sample ``i`` sits at source coordinate ``(i + 0.5) * in/out - 0.5``, clamped below at 0;
    it mixes source pixels ``floor(src)`` and ``min(floor(src) + 1, in - 1)`` linearly.
    """
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    scale = in_size / out_size
    for i in range(out_size):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        lam = src - i0
        weights[i, i0] += 1.0 - lam
        weights[i, i1] += lam
    return weights


def upsample_bilinear(raw, size):
    """Bilinear (``align_corners=False``) resize of a ``(h, w)`` map to ``size = (H, W)``."""
    h, w = raw.shape
    H, W = size
    rows = _bilinear_axis_weights(h, H)  # (H, h)
    cols = _bilinear_axis_weights(w, W)  # (W, w)
    return rows @ raw.to(torch.float64) @ cols.T


def min_max(raw):
    """Per-map min-max to ``[0, 1]``; a constant map becomes zeros."""
    low, high = raw.min(), raw.max()
    if not high > low:
        return torch.zeros_like(raw)
    return (raw - low) / (high - low)


def postprocess(raw, size, upsample=True, normalize=True):
    """``(h, w)`` raw map -> upsampled to ``size`` if asked -> min-max if asked."""
    out = raw
    if upsample:
        out = upsample_bilinear(out, size)
    if normalize:
        out = min_max(out)
    return out


# --------------------------------------------------------------------------------------------------
# Whole-batch driver.
# --------------------------------------------------------------------------------------------------
def reference_raw_maps(model, images, layer, targets, methods=METHODS, head_weight=None,
                       clamp_negative_weights=False, with_magnitude=False, call=None):
    """Raw reference maps at layer resolution for a batch, one image and one class at a time.

    Args:
        model: the model (any dtype); copied to float64 internally, never modified.
        images: ``(B, 3, H, W)``.
        layer: module name.
        targets: ``(B, T)`` entries, each a class index or a row-wise callable
            ``logits (1, K) -> (1,)`` score (nested lists or a tensor); or one callable for all images
            (``T = 1``). CAM maps of callable targets are NaN (CAM needs a class).
        methods: names from :data:`METHODS`.
        head_weight: ``(K, C)`` linear head, needed for ``"cam"``.
        clamp_negative_weights: CAM with negative head weights set to 0.
        with_magnitude: also return ``{method: (B, T, h, w)}`` of :func:`term_magnitude`.
        call: which call of a module that runs several times (see :func:`split_forward`).

    Returns:
        ``{method: (B, T, h, w) float64}`` (and the magnitudes, if asked).
    """
    if callable(targets):
        targets = [[targets]] * images.shape[0]
    elif isinstance(targets, torch.Tensor):
        targets = targets.reshape(images.shape[0], -1).tolist()
    terms_of = {
        "cam": lambda A, g, c: cam_terms(A, head_weight.detach().to(torch.float64)[c], clamp_negative_weights),
        "gradcam": lambda A, g, c: gradcam_terms(A, g),
        "gradcam++": lambda A, g, c: gradcam_plus_plus_terms(A, g),
        "pcs": lambda A, g, c: pcs_terms(A, g),
        "bagcams": lambda A, g, c: bagcams_terms(A, g),
    }
    combine = {"cam": lambda t: t.sum(0), "bagcams": lambda t: t.sum(0)}
    maps = {method: [] for method in methods}
    magnitudes = {method: [] for method in methods}
    model64 = float64_copy(model)
    model64_guided = float64_copy(model, guided=True) if "bagcams" in methods else None
    for b in range(images.shape[0]):
        classes = list(targets[b])
        A, _, grads = gradients_of_float64_model(model64, layer, images[b], classes, call=call)
        guided = None
        if model64_guided is not None:
            _, _, guided = gradients_of_float64_model(model64_guided, layer, images[b], classes,
                                                      log_score=True, call=call)
        for method in methods:
            if method not in terms_of:
                raise ValueError(f"unknown method {method!r}")
            if method == "cam":
                assert head_weight is not None, "CAM needs head_weight"
            per_class, per_class_magnitude = [], []
            for i, c in enumerate(classes):
                if method == "cam" and callable(c):  # CAM needs a class: NaN marks "not defined"
                    per_class.append(torch.full(A.shape[1:], float("nan"), dtype=torch.float64))
                    per_class_magnitude.append(per_class[-1])
                    continue
                g = guided[i] if method == "bagcams" else grads[i]
                terms = terms_of[method](A, g, c)
                per_class.append(combine.get(method, lambda t: t.sum(0).clamp(min=0.0))(terms))
                per_class_magnitude.append(term_magnitude(terms))
            maps[method].append(torch.stack(per_class))
            magnitudes[method].append(torch.stack(per_class_magnitude))
    maps = {method: torch.stack(v) for method, v in maps.items()}
    if with_magnitude:
        return maps, {method: torch.stack(v) for method, v in magnitudes.items()}
    return maps


def postprocess_batch(raw, size, upsample=True, normalize=True):
    """Apply :func:`postprocess` to every ``(h, w)`` map of a ``(..., h, w)`` stack."""
    flat = raw.reshape(-1, *raw.shape[-2:])
    done = torch.stack([postprocess(m, size, upsample=upsample, normalize=normalize) for m in flat])
    return done.reshape(*raw.shape[:-2], *done.shape[-2:])


def reference_maps(model, images, layer, method, targets, head_weight=None,
                   clamp_negative_weights=False, upsample=True, normalize=True):
    """``(B, T, H, W)`` (or ``(B, T, h, w)`` without upsampling) float64 maps of one method."""
    raw = reference_raw_maps(model, images, layer, targets, (method,), head_weight,
                             clamp_negative_weights)[method]
    return postprocess_batch(raw, tuple(images.shape[-2:]), upsample=upsample, normalize=normalize)


def reference_logits(model, images):
    """``(B, K)`` float64 logits of a float64 copy of ``model``."""
    with torch.no_grad():
        return float64_copy(model)(images.detach().to(torch.float64))


def slow_standardize(x, eps=1e-5):
    """CI-CAM's pool BatchNorm from its definition: standardise each ``x[n]`` over its positions."""
    out = torch.empty_like(x, dtype=torch.float64)
    for n in range(x.shape[0]):
        values = x[n].double().flatten().tolist()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        out[n] = (x[n].double() - mean) / math.sqrt(var + eps)
    return out


# --------------------------------------------------------------------------------------------------
# Issue 13's methods, one image and one class at a time, float64, from their formulas.
# --------------------------------------------------------------------------------------------------
def xgradcam(A, g):
    """XGrad-CAM: ``ReLU(sum_k w_k A_k)``, ``w_k = sum_m (A_k(m) / sum_m' A_k(m')) g_k(m)`` (0 if the sum is 0)."""
    weights = []
    for k in range(A.shape[0]):
        total = A[k].sum()
        weights.append(0.0 * total if total == 0 else (A[k] / total * g[k]).sum())
    return (torch.stack(weights)[:, None, None] * A).sum(0).clamp(min=0.0)


def layercam(A, g):
    """LayerCAM: ``ReLU(sum_k ReLU(g_k(m)) A_k(m))``."""
    return (g.clamp(min=0.0) * A).sum(0).clamp(min=0.0)


def eigen_projection(X, center=False):
    """``X`` ``(C, h, w)`` as ``(hw, C)`` projected on its first right singular vector, from the
    eigenvectors of ``X^T X`` (not an SVD), sign making ``v . sum_m X(m) > 0``."""
    C, h, w = X.shape
    rows = X.reshape(C, h * w).T.to(torch.float64)
    factor = rows - rows.mean(0) if center else rows
    _, vectors = torch.linalg.eigh(factor.T @ factor)
    v = vectors[:, -1]
    if (rows.sum(0) @ v) < 0:
        v = -v
    return (factor @ v).reshape(h, w)


def ablation_weights(model64, layer, image, c):
    """``w_k = (S_c - S_c^(k)) / S_c``, ``S_c^(k)`` with channel ``k`` of ``layer``'s output zeroed:
    one float64 forward of ``C`` copies of the image, copy ``k`` with its channel ``k`` zeroed."""
    module = dict(model64.named_modules())[layer]
    x = image.detach().to(torch.float64).reshape(1, *image.shape[-3:])
    with torch.no_grad():
        score = model64(x)[0, c]
        sizes = []
        handle = module.register_forward_hook(lambda m, i, o: sizes.append(o.shape[1]))
        model64(x)
        handle.remove()
        keep = 1.0 - torch.eye(sizes[0], dtype=torch.float64)[:, :, None, None]   # copy k: channel k off
        handle = module.register_forward_hook(lambda m, i, o: o * keep)
        try:
            ablated = model64(x.expand(sizes[0], -1, -1, -1))[:, c]
        finally:
            handle.remove()
    return (score - ablated) / score


def score_gains(model64, A, image, c, masked_inputs):
    """``mean_i softmax(f(x_i))_c - softmax(f(0))_c`` for each channel ``k``'s masked inputs
    ``masked_inputs(x, k)`` (lists of the same length), in one float64 forward."""
    x = image.detach().to(torch.float64).reshape(1, *image.shape[-3:])
    with torch.no_grad():
        baseline = torch.softmax(model64(torch.zeros_like(x)), dim=1)[0, c]
        per_channel = [torch.stack(masked_inputs(x[0], k)) for k in range(A.shape[0])]
        probabilities = torch.softmax(model64(torch.cat(per_channel)), dim=1)[:, c]
    return (probabilities - baseline).reshape(A.shape[0], -1).mean(dim=1)


def channel_mask(A_k, size):
    """Score-CAM's ``H_k``: bilinear upsampling (align_corners=False) then min-max (constant -> 0)."""
    return min_max(upsample_bilinear(A_k, size))


def weighted_relu_map(weights, A):
    """``ReLU(sum_k w_k A_k)`` and its term magnitude ``sum_k |w_k A_k|``."""
    terms = weights[:, None, None] * A
    return terms.sum(0).clamp(min=0.0), term_magnitude(terms)
