"""Combinational CAM (NL-CCAM, Yang et al. WACV 2020) and the ``causal`` method (CI-CAM, Shao et al. 2021).

A combinational CAM orders the class maps ``M_k = W_k . F`` (no bias) by the branch's logits,
takes a weighted sum over the ranks, and subtracts the per-image minimum::

    ccam(m) = sum_r h_r * M_(r)(m)  -  min_m' sum_r h_r * M_(r)(m')

where ``M_(r)`` is the map of the class ranked ``r`` (``r = 0`` is the top class). The weight vectors
``h`` are offered by name (:func:`combination_weights`):

``"nlccam-quadratic"``
    NL-CCAM's own "quadratic" scheme: ``linspace(1, 0, thr)**2`` for the top ``thr`` ranks, then
    ``-linspace(0, -1, N - thr)**2`` for the rest. NL-CCAM's evaluation uses ``thr = 100`` of
    ``N = 200`` CUB classes; camkit's default is ``thr = N // 2``.
``"cicam-quadratic"``
    What CI-CAM's released code calls "quadratic": ``h_r = -(r / (N - 1))**2``, i.e.
    ``-linspace(0, -1, N)**2``. **This differs from NL-CCAM's scheme**: the top-1 class gets weight 0,
    so the map is built only from the *negated* maps of the lower-ranked classes (the top class enters
    only through the ranking). The CI-CAM paper describes the combination as NL-CCAM's; camkit follows
    the released code for the CI-CAM recipe (its default) and offers NL-CCAM's scheme by name.
``"linear"``
    ``linspace(1, -1, N)``.
``"top1-minus-bottom"``
    ``M_(0) - mean of the M lowest-ranked maps`` (``num_bottom = M``, default 1: top-1 minus bottom-1),
    NL-CCAM's "t1b1" and CI-CAM's fall-back scheme.
``"sum_1"``
    CI-CAM's ImageNet scheme: ``M_(0)`` minus a ramp ``linspace(0, 2, M) / M`` over the ``M`` lowest
    ranks (``num_bottom``, default 20; the lowest rank gets ``2 / M``; the negative weights sum to 1).
    If ``N < M``, ``M = N`` is used.
``"top1"``
    ``M_(0)`` only (plain CAM of the first-ranked class, minus its minimum).

A 1-D tensor or sequence of ``N`` numbers is accepted as custom weights.

**Ranking and the GT-known protocol.** CI-CAM's released "GT-known" localisation is label-free: the
combination always uses the *predicted* ranking, whatever the ground-truth class. camkit's GT-known
must depend on the label, so by default the explained target class is moved to rank 0 and the other
classes keep their logit order (``ranking="target"``). With the default target (top-1 prediction) both
rankings coincide. The released, label-free behaviour is available as ``ranking="predicted"``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

__all__ = ["COMBINATION_SCHEMES", "combination_weights", "combinational_cam", "class_maps", "causal"]

COMBINATION_SCHEMES = ("nlccam-quadratic", "cicam-quadratic", "linear", "top1-minus-bottom", "sum_1", "top1")

Weights = Union[str, Sequence[float], torch.Tensor]


def combination_weights(num_classes: int, weights: Weights = "cicam-quadratic", *,
                        threshold: Optional[int] = None, num_bottom: Optional[int] = None,
                        dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Weights over ranks ``(N,)``; entry ``r`` multiplies the map of the class ranked ``r`` (0 = top).

    ``threshold`` is NL-CCAM's ``thr`` (``"nlccam-quadratic"`` only; default ``N // 2``);
    ``num_bottom`` is ``M`` for ``"top1-minus-bottom"`` (default 1) and ``"sum_1"`` (default 20).
    """
    n = int(num_classes)
    if n < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not isinstance(weights, str):
        h = torch.as_tensor(weights, dtype=dtype, device=device).flatten()
        if h.numel() != n:
            raise ValueError(f"custom combination weights have {h.numel()} entries; the model has {n} classes "
                             "(give one weight per rank)")
        return h
    kw = dict(dtype=dtype, device=device)
    if weights == "nlccam-quadratic":
        thr = n // 2 if threshold is None else int(threshold)
        if not 0 <= thr <= n:
            raise ValueError(f"threshold (NL-CCAM's thr) must be in [0, {n}], got {threshold}")
        top = torch.linspace(1, 0, thr, **kw) ** 2
        rest = -(torch.linspace(0, -1, n - thr, **kw) ** 2)
        return torch.cat([top, rest])
    if weights == "cicam-quadratic":
        return -(torch.linspace(0, -1, n, **kw) ** 2)
    if weights == "linear":
        return torch.linspace(1, -1, n, **kw)
    if weights == "top1":
        h = torch.zeros(n, **kw)
        h[0] = 1
        return h
    if weights == "top1-minus-bottom":
        m = 1 if num_bottom is None else int(num_bottom)
        if not 1 <= m <= n:
            raise ValueError(f"num_bottom must be in [1, {n}] for 'top1-minus-bottom', got {num_bottom}")
        h = torch.zeros(n, **kw)
        h[0] = 1
        h[n - m:] -= 1.0 / m
        return h
    if weights == "sum_1":
        m = min(20 if num_bottom is None else int(num_bottom), n)
        if m < 1:
            raise ValueError(f"num_bottom must be >= 1 for 'sum_1', got {num_bottom}")
        h = torch.zeros(n, **kw)
        h[0] = 1
        h[n - m:] -= torch.linspace(0, 2, m, **kw) / m
        return h
    raise ValueError(f"unknown combination weights {weights!r}; choose one of {COMBINATION_SCHEMES} "
                     "or pass one weight per rank")


def class_maps(features: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
    """Class maps without bias: ``(B, C, h, w)``, ``(K, C)`` -> ``(B, K, h, w)``, ``M_k = W_k . F``."""
    if features.dim() != 4 or head_weight.dim() != 2 or head_weight.shape[1] != features.shape[1]:
        raise ValueError(f"class_maps expects features (B, C, h, w) and head weight (K, C) with the same C; "
                         f"got {tuple(features.shape)} and {tuple(head_weight.shape)}")
    return torch.einsum("kc,bchw->bkhw", head_weight.to(features.dtype), features)


def _rank_of_class(logits: torch.Tensor, targets: Optional[torch.Tensor]) -> torch.Tensor:
    """Rank of every class ``(B, T, K)`` (0 = first); the target, if given, is moved to rank 0."""
    b, k = logits.shape
    if targets is None:
        score = logits.detach().unsqueeze(1)                                   # (B, 1, K)
    else:
        score = logits.detach().unsqueeze(1).expand(b, targets.shape[1], k).clone()
        score.scatter_(2, targets.unsqueeze(2), float("inf"))
    order = torch.sort(score, dim=2, descending=True, stable=True).indices      # class at each rank
    return torch.argsort(order, dim=2)                                          # rank of each class


def combinational_cam(class_maps: torch.Tensor, logits: torch.Tensor, weights: Weights = "cicam-quadratic", *,
                      targets: Optional[torch.Tensor] = None, threshold: Optional[int] = None,
                      num_bottom: Optional[int] = None) -> torch.Tensor:
    """Combinational CAM: class maps ordered by ``logits``, weighted over ranks, minus the minimum.

    Args:
        class_maps: ``(B, N, h, w)``, the maps ``W_k . F`` of every class (no bias).
        logits: ``(B, N)``, the branch's logits; they define the ranking (ties keep class order).
        weights: a scheme name (see the module docstring) or ``N`` weights per rank.
        targets: ``None`` (pure logit ranking, as the released code), ``(B,)`` or ``(B, T)`` long:
            the class moved to rank 0 for each map; the other classes keep their logit order.
        threshold, num_bottom: scheme parameters, see :func:`combination_weights`.

    Returns:
        ``(B, h, w)`` when ``targets`` is ``None`` or ``(B,)``; ``(B, T, h, w)`` for ``(B, T)`` targets.
        Every map has minimum 0.
    """
    if class_maps.dim() != 4 or logits.dim() != 2 or class_maps.shape[:2] != logits.shape:
        raise ValueError(f"combinational_cam expects class maps (B, N, h, w) and logits (B, N); "
                         f"got {tuple(class_maps.shape)} and {tuple(logits.shape)}")
    squeeze = targets is None or targets.dim() == 1
    if targets is not None:
        targets = targets.to(device=logits.device, dtype=torch.long)
        targets = targets.unsqueeze(1) if targets.dim() == 1 else targets
        if targets.dim() != 2 or targets.shape[0] != logits.shape[0]:
            raise ValueError(f"targets must be (B,) or (B, T) with B={logits.shape[0]}, got {tuple(targets.shape)}")
    h = combination_weights(logits.shape[1], weights, threshold=threshold, num_bottom=num_bottom,
                            dtype=class_maps.dtype, device=class_maps.device)
    per_class = h[_rank_of_class(logits, targets)]                              # (B, T, N)
    ccam = torch.einsum("btn,bnhw->bthw", per_class, class_maps)
    ccam = ccam - ccam.amin(dim=(2, 3), keepdim=True)
    return ccam[:, 0] if squeeze else ccam


def causal(inputs) -> torch.Tensor:
    """The ``causal`` method: the de-confounded combinational CAM, ``(B, T, h, w)``.

    **On a CI-CAM model** (:class:`camkit.models.cicam.CICAM`) use ``output="down"`` and the layer
    ``"enhanced"`` (the default: the last spatial layer), whose output is the enhanced feature ``F_e``.
    The class maps are ``W . F_e`` (shared head, no bias), ranked by the down-branch logits.

    **Post-hoc, on any GAP + linear classifier**, pass ``context=camkit.causal.fit_context(...)``: the
    layer's activations ``F`` are enhanced with the fitted causal context pool using the model's top-1
    class ``c*`` (its logits play the up branch), ``F_e = F * (1 + Conv1x1(onehot(c*) x Q[c*]))``;
    the down logits are ``W . GAP(F_e) + b`` (``b``, the head bias, is stored in the context) and rank
    the class maps ``W . F_e``.

    Without a context on a plain classifier this is NL-CCAM's combinational CAM of that layer.

    ``method_options={"causal": {...}}`` may set ``weights`` (scheme name or per-rank weights; default
    the model's or context's ``combination``, else ``"cicam-quadratic"``), ``threshold``, ``num_bottom``
    and ``ranking`` (``"target"``, default: the explained class is rank 0; ``"predicted"``: the
    released code's label-free ranking).
    """
    options = dict(inputs.options or {})
    context = options.get("context")
    weight = inputs.head_weight
    if weight is None:
        raise ValueError("the 'causal' method needs the model's linear head after global average pooling; "
                         "pass head=<the nn.Linear> to camkit.explain")
    features = inputs.activations
    if context is not None:
        if inputs.layer is not None and inputs.layer != context.layer:
            raise ValueError(f"this causal context was fitted on layer {context.layer!r}, not {inputs.layer!r}; "
                             f"explain that layer (layers={context.layer!r}) or fit a context for this one")
        features, logits = context.enhance_and_classify(features, inputs.logits, weight)
        default_weights = context.combination
    else:
        logits = inputs.logits
        default_weights = getattr(inputs.model, "combination", "cicam-quadratic")
        if not isinstance(default_weights, (str, list, tuple, torch.Tensor)):
            default_weights = "cicam-quadratic"
    ranking = options.get("ranking", "target")
    if ranking not in ("target", "predicted"):
        raise ValueError(f"ranking must be 'target' or 'predicted' (label-free, as the released CI-CAM "
                         f"code), got {ranking!r}")
    targets = inputs.targets
    label_free = ranking == "predicted" or targets is None
    maps = class_maps(features, weight)
    ccam = combinational_cam(maps, logits.to(maps.dtype), options.get("weights") or default_weights,
                             targets=None if label_free else targets, threshold=options.get("threshold"),
                             num_bottom=options.get("num_bottom"))
    if label_free:                                  # one map per image, repeated for each target
        per_image = 1 if targets is None else targets.shape[1]
        ccam = ccam.unsqueeze(1).expand(ccam.shape[0], per_image, *ccam.shape[1:])
    return ccam


from camkit.methods import register as _register  # noqa: E402

_register("causal", needs=("head",),
          options=("weights", "threshold", "num_bottom", "ranking", "context"),
          description="CI-CAM's causal-context-corrected combinational CAM: the down branch of a CI-CAM model, "
                      "or of any GAP classifier with context=camkit.causal.fit_context(...)",
          reference="Shao et al., Improving Weakly-Supervised Object Localization via Causal Intervention, "
                    "ACM MM 2021; Yang et al., Combinational Class Activation Maps, WACV 2020")(causal)
