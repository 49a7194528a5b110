"""Gradient-weighted methods: Grad-CAM, Grad-CAM++, PCS (= HiResCAM), XGrad-CAM and LayerCAM.

Notation: ``A`` is the layer output ``(B, C, h, w)``, ``g = dS_c/dA`` is ``(B, T, C, h, w)``.
"""
import torch

from camkit.methods.registry import LayerInputs, channel_weighted, channel_weighted_sum, register


def gradcam_weights(inputs: LayerInputs) -> torch.Tensor:
    """Grad-CAM's channel weights ``mean_m(g_k)``: ``(B, T, C)``."""
    return inputs.gradients.mean(dim=(-2, -1))


@register("gradcam", needs=("gradients",), options=(), aliases=("grad-cam",),
          weighted_activations=channel_weighted(gradcam_weights),
          description="ReLU(sum_k mean_m(g_k) A_k): channels weighted by their average gradient",
          reference="Selvaraju et al., Grad-CAM, ICCV 2017")
def gradcam(inputs: LayerInputs) -> torch.Tensor:
    """Grad-CAM: ``ReLU(sum_k mean_m(g_k) * A_k)``, channels weighted by their mean gradient.

    Returns:
        ``(B, T, h, w)`` raw maps.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(2, 3, 224, 224), methods="gradcam", layers="layer4")
        exp["gradcam"].shape   # (2, 224, 224), min-max normalised to [0, 1]
    """
    return channel_weighted_sum(gradcam_weights(inputs), inputs.activations).relu()


def gradcam_plus_plus_weights(inputs: LayerInputs) -> torch.Tensor:
    """Grad-CAM++'s channel weights ``sum_m alpha ReLU(g)`` (see :func:`gradcam_plus_plus`): ``(B, T, C)``."""
    grads = inputs.gradients
    return (gradcam_plus_plus_alpha(grads, inputs.activations) * grads.relu()).sum(dim=(-2, -1))


def gradcam_plus_plus_alpha(grads: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Eq. 19's ``alpha = g^2 / (2 g^2 + (sum_m A_k(m)) g^3)`` ``(B, T, C, h, w)`` from ``g``
    ``(B, T, C, h, w)`` and ``A`` ``(B, C, h, w)``; 0 where the denominator is 0."""
    activation_sums = activations.sum(dim=(-2, -1))[:, None, :, None, None]  # (B, 1, C, 1, 1)
    grads_squared = grads.square()
    denominator = 2 * grads_squared + activation_sums * grads_squared * grads
    safe = denominator != 0
    return torch.where(safe, grads_squared / torch.where(safe, denominator, torch.ones_like(denominator)),
                       torch.zeros_like(denominator))


@register("gradcam++", needs=("gradients",), options=(), aliases=("gradcampp", "grad-cam++"),
          weighted_activations=channel_weighted(gradcam_plus_plus_weights),
          description="eq. 19 of Grad-CAM++ (exponential score): alpha = g^2/(2g^2 + sum_m(A) g^3), "
                      "w_k = sum_m alpha ReLU(g)",
          reference="Chattopadhay et al., Grad-CAM++, WACV 2018")
def gradcam_plus_plus(inputs: LayerInputs) -> torch.Tensor:
    """Grad-CAM++ from eq. 19 of Chattopadhay et al. under the exponential-score assumption.

    ``alpha = g^2 / (2 g^2 + (sum_m A_k(m)) g^3)``; ``alpha = 0`` where the denominator is 0 (always
    where ``g = 0``; no epsilon is added anywhere else). ``w_k = sum_m alpha * ReLU(g)`` and the map
    is ``ReLU(sum_k w_k A_k)``.

    Returns:
        ``(B, T, h, w)`` raw maps.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(2, 3, 224, 224), methods="gradcam++", layers="layer4")
        exp["gradcam++"].shape   # (2, 224, 224), min-max normalised to [0, 1]
    """
    return channel_weighted_sum(gradcam_plus_plus_weights(inputs), inputs.activations).relu()


def pcs_terms(inputs: LayerInputs) -> torch.Tensor:
    """PCS's summed terms ``g_k(m) A_k(m)``: ``(B, T, C, h, w)``."""
    return inputs.gradients * inputs.activations.unsqueeze(1)


@register("pcs", needs=("gradients",), options=(), aliases=("hirescam",), weighted_activations=pcs_terms,
          description="ReLU(sum_k g_k(m) A_k(m)): pixel-level class selection, equal to HiResCAM",
          reference="Tan et al., Increasing the Discriminative Power of Class Activation Maps "
                    "(pixel-level class selection), 2020; Draelos & Carin, HiResCAM, 2020")
def pcs(inputs: LayerInputs) -> torch.Tensor:
    """PCS / HiResCAM: ``ReLU(sum_k g_k(m) * A_k(m))``, the position-specific score contribution.

    Returns:
        ``(B, T, h, w)`` raw maps.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(2, 3, 224, 224), methods="pcs", layers="layer4")
        exp["pcs"].shape   # (2, 224, 224), min-max normalised to [0, 1]
    """
    return pcs_terms(inputs).sum(dim=2).relu()


@register("xgradcam", needs=("gradients",), options=(), aliases=("xgrad-cam",),
          description="ReLU(sum_k w_k A_k), w_k = sum_m (A_k(m) / sum_m' A_k(m')) g_k(m): "
                      "activation-weighted gradients (w_k = 0 where sum_m A_k = 0)",
          reference="Fu et al., Axiom-based Grad-CAM (XGrad-CAM), BMVC 2020")
def xgradcam(inputs: LayerInputs) -> torch.Tensor:
    """XGrad-CAM: ``w_k = sum_m (A_k(m) / sum_m' A_k(m')) g_k(m)``, map ``ReLU(sum_k w_k A_k)``.

    A channel whose activations sum to 0 gets ``w_k = 0`` (no epsilon; pytorch-grad-cam adds 1e-7 to
    the denominator, which differs only for such channels when their activations are not all zero).

    Returns:
        ``(B, T, h, w)`` raw maps.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(2, 3, 224, 224), methods="xgradcam", layers="layer4")
        exp["xgradcam"].shape   # (2, 224, 224), min-max normalised to [0, 1]
    """
    activations = inputs.activations
    sums = activations.sum(dim=(-2, -1), keepdim=True)                      # (B, C, 1, 1)
    safe = sums != 0
    shares = torch.where(safe, activations / torch.where(safe, sums, torch.ones_like(sums)),
                         torch.zeros_like(activations))
    weights = (inputs.gradients * shares.unsqueeze(1)).sum(dim=(-2, -1))   # (B, T, C)
    return channel_weighted_sum(weights, activations).relu()


@register("layercam", needs=("gradients",), options=(), aliases=("layer-cam",),
          description="ReLU(sum_k ReLU(g_k(m)) A_k(m)): activations weighted by their positive gradient",
          reference="Jiang et al., LayerCAM: Exploring Hierarchical Class Activation Maps for "
                    "Localization, IEEE TIP 2021")
def layercam(inputs: LayerInputs) -> torch.Tensor:
    """LayerCAM: ``ReLU(sum_k ReLU(g_k(m)) * A_k(m))``, a position-wise positive-gradient weighting.

    Returns:
        ``(B, T, h, w)`` raw maps.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(2, 3, 224, 224), methods="layercam", layers="layer3")
        exp["layercam"].shape   # (2, 224, 224), min-max normalised to [0, 1]
    """
    return (inputs.gradients.relu() * inputs.activations.unsqueeze(1)).sum(dim=2).relu()
