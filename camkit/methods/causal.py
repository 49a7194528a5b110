"""The ``causal`` method: CI-CAM's causal-context-corrected combinational CAM (Shao et al., ACM MM 2021).

The combination itself (weights by rank, the per-image minimum) is :mod:`camkit.methods.combinational`.
"""
from __future__ import annotations

import torch

from camkit.methods.combinational import class_maps, combinational_cam
from camkit.methods.registry import LayerInputs, register

__all__ = ["causal"]


@register("causal", needs=("head",),
          description="CI-CAM's causal-context-corrected combinational CAM: the down branch of a CI-CAM model, "
                      "or of any GAP classifier with context=camkit.causal.fit_context(...)",
          reference="Shao et al., Improving Weakly-Supervised Object Localization via Causal Intervention, "
                    "ACM MM 2021; Yang et al., Combinational Class Activation Maps, WACV 2020",
          options=("weights", "threshold", "num_bottom", "ranking", "context"))
def causal(inputs: LayerInputs) -> torch.Tensor:
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

    Returns:
        ``(B, T, h, w)`` raw maps: ``sum_r h_r M_(r)`` minus its per-image minimum.

    Example::

        context = camkit.causal.fit_context(model, "layer4", train_loader)   # any GAP classifier
        exp = camkit.explain(model, images, methods="causal", layers="layer4", context=context)
        exp["causal"].shape   # (B, H, W), min-max normalised to [0, 1]
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
