"""Ablation-CAM (Desai & Ramaswamy, WACV 2020): channels weighted by the score lost without them."""
import torch

from camkit.methods.perturbation import checked_batch_size, perturbed_logits, target_classes
from camkit.methods.registry import LayerInputs, channel_weighted_sum, register


def _zero_one_channel(channels: int, n: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(N, C, 1, 1)`` masks of ones with channel ``n[i]`` of mask ``i`` set to zero."""
    masks = torch.ones(n.numel(), channels, 1, 1, dtype=like.dtype, device=like.device)
    masks[torch.arange(n.numel(), device=n.device), n] = 0
    return masks


@register("ablationcam", needs=("forward",), options=("batch_size",), aliases=("ablation-cam",),
          description="ReLU(sum_k w_k A_k), w_k = (S_c - S_c^(k)) / S_c, S_c^(k) the target logit with "
                      "channel k of the layer set to zero (extra forwards); option batch_size",
          reference="Desai & Ramaswamy, Ablation-CAM: Visual Explanations for Deep Convolutional "
                    "Network via Gradient-free Localization, WACV 2020")
def ablationcam(inputs: LayerInputs) -> torch.Tensor:
    """Ablation-CAM: ``w_k = (S_c - S_c^(k)) / S_c``, map ``ReLU(sum_k w_k A_k)``.

    ``S_c^(k)`` is the target logit of a forward whose layer output has channel ``k`` zeroed (a
    forward hook inside the call); ``C`` ablated copies per image in chunks of ``batch_size`` (default
    32). The model runs up to the layer once per image and chunk, and only the part after it on the
    chunk's copies (see :func:`camkit.methods.perturbation.perturbed_logits`). A target logit ``S_c < 0`` flips every weight's sign, as in the paper's formula.
    pytorch-grad-cam zeroes the channel only when the layer's minimum is 0 and otherwise sets it to
    ``min - 1e7``; camkit always zeroes it, as the paper.

    Returns:
        ``(B, T, h, w)`` raw maps.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(1, 3, 64, 64), methods="ablationcam", layers="layer4")
        exp["ablationcam"].shape   # (1, 64, 64), min-max normalised to [0, 1]
    """
    classes = target_classes(inputs.targets, "ablationcam")
    activations = inputs.activations
    channels = activations.shape[1]
    logits = perturbed_logits(inputs.forward, channels, batch_size=checked_batch_size(inputs.options, "ablationcam"),
                              layer_masks_of=lambda b, n: _zero_one_channel(channels, n, activations),
                              reference=inputs.logits)
    ablated = logits.gather(2, classes.unsqueeze(1).expand(-1, channels, -1)).transpose(1, 2)  # (B, T, C)
    original = inputs.logits.to(ablated.dtype).gather(1, classes).unsqueeze(2)                 # (B, T, 1)
    return channel_weighted_sum((original - ablated) / original, activations).relu()
