"""SmoothGrad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with gradients averaged over noisy inputs."""
import torch

from camkit.methods.perturbation import checked_batch_size, perturbed_layer_gradients, target_classes
from camkit.methods.registry import LayerInputs, channel_weighted_sum, register


@register("smoothgradcam++", needs=("forward",), options=("batch_size", "num_samples", "noise_level", "seed"),
          aliases=("smoothgradcampp", "smooth-grad-cam++"),
          description="Grad-CAM++ with D1, D2, D3 = means of g, g^2, g^3 over num_samples noisy inputs "
                      "(std = noise_level x the image's range), seeded (extra forwards and backwards)",
          reference="Omeiza et al., Smooth Grad-CAM++: An Enhanced Inference Level Visualization "
                    "Technique for Deep Convolutional Neural Network Models, 2019")
def smoothgradcam_plus_plus(inputs: LayerInputs) -> torch.Tensor:
    """SmoothGrad-CAM++: ``alpha = D2 / (2 D2 + (sum_m A_k(m)) D3)`` (0 where the denominator is 0),
    ``w_k = sum_m alpha_k(m) ReLU(D1_k(m))``, map ``ReLU(sum_k w_k A_k)``.

    ``D1, D2, D3`` are the means of ``g, g^2, g^3`` over ``n = num_samples`` (default 8) inputs
    ``X + e_i``, ``g`` the gradient of the target logit at the layer and ``A`` the clean input's
    activation. ``e_i = s * z_i`` with ``s = noise_level * (max X - min X)`` per image (default 0.15,
    SmoothGrad's convention) and ``z_i ~ N(0, 1)`` from a CPU generator seeded with ``seed``
    (default 0), shared by every image so that a batch gives its singles' maps. torchcam's
    ``SmoothGradCAMpp`` uses an absolute std, ``sum_m A g^3`` in alpha and the last sample's ``g``
    for the ReLU; camkit follows the paper's equations.

    Returns:
        ``(B, T, h, w)`` raw maps; ``num_samples`` forwards and backwards per image.

    Example::

        exp = camkit.explain(model, images, methods="smoothgradcam++", layers="layer4",
                             method_options={"smoothgradcam++": {"num_samples": 4, "seed": 1}})
        exp["smoothgradcam++"].shape   # (B, H, W)
    """
    name = "smoothgradcam++"
    classes = target_classes(inputs.targets, name)
    samples = inputs.options.get("num_samples", 8)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"method_options[{name!r}]['num_samples'] must be a positive int, got {samples!r}")
    images, activations = inputs.forward.images, inputs.activations
    generator = torch.Generator().manual_seed(int(inputs.options.get("seed", 0)))
    noise = torch.randn(samples, *images.shape[1:], generator=generator, dtype=images.dtype).to(images.device)
    spread = float(inputs.options.get("noise_level", 0.15)) * (
        images.flatten(1).amax(dim=1) - images.flatten(1).amin(dim=1))                  # (B,)
    grads = perturbed_layer_gradients(
        inputs.forward, samples, classes, batch_size=checked_batch_size(inputs.options, name, 8),
        inputs_of=lambda b, n: images[b] + spread[b].reshape(-1, 1, 1, 1) * noise[n]).to(activations.dtype)
    d1, d2, d3 = grads.mean(dim=1), grads.square().mean(dim=1), grads.pow(3).mean(dim=1)   # (B, T, C, h, w)
    sums = activations.sum(dim=(-2, -1))[:, None, :, None, None]
    denominator = 2 * d2 + sums * d3
    safe = denominator != 0
    alpha = torch.where(safe, d2 / torch.where(safe, denominator, torch.ones_like(denominator)),
                        torch.zeros_like(denominator))
    return channel_weighted_sum((alpha * d1.relu()).sum(dim=(-2, -1)), activations).relu()
