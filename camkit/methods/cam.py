"""CAM (Zhou et al., CVPR 2016): the classifier row of the target applied to the feature map."""
import torch

from camkit.methods.registry import LayerInputs, channel_weighted, channel_weighted_sum, register


def cam_weights(inputs: LayerInputs) -> torch.Tensor:
    """CAM's channel weights: the targets' classifier rows ``W[c]`` (clamped at 0 with the NWC option)."""
    weights = inputs.class_weights
    return weights.clamp(min=0) if inputs.options.get("clamp_negative_weights", False) else weights


@register("cam", needs=("head",), options=("clamp_negative_weights",),
          weighted_activations=channel_weighted(cam_weights),
          description="sum_k W[c,k] A_k: the linear head after global average pooling, no ReLU, no bias",
          reference="Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016")
def cam(inputs: LayerInputs) -> torch.Tensor:
    """``sum_k W[c, k] * A_k(m)`` with no ReLU and no bias, as in wsolevaluation and torchcam.

    Options:
        clamp_negative_weights: replace ``W[c, k] < 0`` by 0 first (NWC, Bae et al., ECCV 2020,
            "Rethinking Class Activation Mapping for Weakly Supervised Object Localization").

    Returns:
        ``(B, T, h, w)`` raw maps.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(2, 3, 224, 224), methods="cam", layers="layer4")
        exp["cam"].shape   # (2, 224, 224), min-max normalised to [0, 1]
    """
    return channel_weighted_sum(cam_weights(inputs), inputs.activations)
