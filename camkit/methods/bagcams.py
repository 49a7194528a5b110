"""BagCAMs (Zhu et al., ECCV 2022), as the authors' released code computes it."""
import torch

from camkit.methods.registry import LayerInputs, register


def bagcams_terms(inputs: LayerInputs) -> torch.Tensor:
    """BagCAMs' summed terms ``ReLU(t_k g^_k(m) A_k(m))`` (see :func:`bagcams`): ``(B, T, C, h, w)``."""
    terms = inputs.guided_gradients * inputs.activations.unsqueeze(1)  # (B, T, C, h, w)
    bag_weights = 1 + terms.mean(dim=(-2, -1), keepdim=True)
    return (bag_weights * terms).relu()


@register("bagcams", needs=("guided_gradients",), options=(), weighted_activations=bagcams_terms,
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

    Returns:
        ``(B, T, h, w)`` raw maps.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(2, 3, 224, 224), methods="bagcams", layers="layer3")
        exp["bagcams"].shape   # (2, 224, 224), min-max normalised to [0, 1]
    """
    return bagcams_terms(inputs).sum(dim=2)
