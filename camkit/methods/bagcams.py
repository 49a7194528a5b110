"""BagCAMs (Zhu et al., ECCV 2022), as the authors' released code computes it."""
import torch

from camkit.methods.gradient import gradcam_plus_plus_alpha
from camkit.methods.registry import LayerInputs, register

#: The weightings of BagCAMs' ablation (Table 8 of the paper): how a channel's regional terms are weighted.
BAG_WEIGHTINGS = ("bag", "mean", "gradcam++")


def _regional_terms(guided: torch.Tensor, activations: torch.Tensor, weighting: str) -> torch.Tensor:
    """The regional terms ``v_k(m) A_k(m)`` ``(B, T, C, h, w)``, before the ReLU and the channel sum."""
    if weighting == "bag":
        terms = guided * activations
        return (1 + terms.mean(dim=(-2, -1), keepdim=True)) * terms
    if weighting == "mean":
        return guided.mean(dim=(-2, -1), keepdim=True) * activations
    if weighting == "gradcam++":
        alpha = gradcam_plus_plus_alpha(guided, activations.squeeze(1))
        return (alpha * guided.relu()).sum(dim=(-2, -1), keepdim=True) * activations
    raise ValueError(f"method_options['bagcams']['weighting'] must be one of {BAG_WEIGHTINGS}, got {weighting!r}")


def bagcams_terms(inputs: LayerInputs) -> torch.Tensor:
    """BagCAMs' summed terms ``ReLU(v_k(m) A_k(m))`` (see :func:`bagcams`): ``(B, T, C, h, w)``."""
    activations = inputs.activations.unsqueeze(1)                          # (B, 1, C, h, w)
    return _regional_terms(inputs.guided_gradients, activations, inputs.options.get("weighting", "bag")).relu()


@register("bagcams", needs=("guided_gradients",), options=("weighting",), weighted_activations=bagcams_terms,
          description="sum_k ReLU(t_k g^_k A_k), t_k = 1 + mean_m(g^_k A_k), g^ = guided d log(S_c)/dA",
          reference="Zhu et al., Bagging Regional Classification Activation Maps for Weakly "
                    "Supervised Object Localization, ECCV 2022")
def bagcams(inputs: LayerInputs) -> torch.Tensor:
    """BagCAMs following the authors' code rather than the paper's prose.

    ``g^`` is the gradient of ``log(S_c)`` backpropagated with guided ReLUs (negative gradients
    clamped to zero at every ``nn.ReLU`` / ``nn.ReLU6`` downstream of the layer). The bag weight of
    channel ``k`` is ``t_k = 1 + mean_m(g^_k A_k)`` and the map is ``sum_k ReLU(t_k g^_k(m) A_k(m))``,
    with the ReLU applied to each term before the channel sum.

    ``d log(S)/dA = (1/S) dS/dA``: when the target logit ``S_c`` is negative every gradient flips
    sign before the guided clamping, so the map highlights evidence *against* the class. The
    authors' code does the same (its forward ``log`` is NaN but its backward is finite); camkit
    keeps that behaviour and flags such targets in ``Explanation.negative_target_logit``.

    Options:
        weighting: the ablation of the paper's Table 8, the map being ``sum_k ReLU(v_k(m) A_k(m))``:
            ``"bag"`` (default) ``v_k(m) = t_k g^_k(m)``; ``"mean"`` ``v_k = mean_m(g^_k)`` (Grad-CAM's
            global average of the same guided gradients); ``"gradcam++"`` ``v_k = sum_m alpha_k(m)
            ReLU(g^_k(m))`` with Grad-CAM++'s eq. 19 ``alpha`` of ``g^``.

    Returns:
        ``(B, T, h, w)`` raw maps.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(2, 3, 224, 224), methods="bagcams", layers="layer3")
        exp["bagcams"].shape   # (2, 224, 224), min-max normalised to [0, 1]
    """
    return bagcams_terms(inputs).sum(dim=2)
