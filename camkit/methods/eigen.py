"""Eigen-CAM and EigenGrad-CAM (Muhammad & Yeasin, IJCNN 2020): the first principal direction of a
layer's channels.

For one image, ``X`` is ``A`` (Eigen-CAM) or ``g * A`` (EigenGrad-CAM) reshaped to ``(hw, C)``; with
``X = U S V^T`` the map is the projection ``X v_1`` on the first right singular vector, reshaped to
``(h, w)``. An SVD fixes ``v_1`` only up to sign, so the sign is chosen to make the projection of the
*uncentred* ``X`` sum to a positive value (``v_1 . sum_m X(m) > 0``).

**The mean is not removed by default**, as in the paper, which factorises ``X`` itself: for the
non-negative activations after a ReLU, ``v_1`` is then the dominant (non-negative) direction and the
map highlights where the features are strong. A centred ``X`` has a projection that sums to zero, so
half of it is cut by any later ReLU. ``center=True`` removes each channel's mean over positions first,
as pytorch-grad-cam's ``get_2d_projection`` does (which leaves the sign to LAPACK; camkit still fixes
it as above, so a peer map may be the negation of camkit's).
"""
import torch

from camkit.methods.registry import LayerInputs, register


def first_component_projection(features: torch.Tensor, center: bool = False) -> torch.Tensor:
    """Projection of ``(..., C, h, w)`` features on their first right singular vector: ``(..., h, w)``.

    The sign makes ``v_1 . sum_m X(m)`` positive (the uncentred map's sum); ``center`` removes each
    channel's mean over positions before the SVD.
    """
    *lead, channels, height, width = features.shape
    x = features.reshape(*lead, channels, height * width).transpose(-1, -2)     # (..., hw, C)
    factorised = x - x.mean(dim=-2, keepdim=True) if center else x
    v1 = torch.linalg.svd(factorised, full_matrices=False).Vh[..., 0, :]         # (..., C)
    sign = torch.where((x.sum(dim=-2) * v1).sum(dim=-1) < 0, -1.0, 1.0).to(x.dtype)
    projection = (factorised @ v1.unsqueeze(-1)).squeeze(-1) * sign.unsqueeze(-1)
    return projection.reshape(*lead, height, width)


def _center(inputs: LayerInputs) -> bool:
    center = inputs.options.get("center", False)
    if not isinstance(center, bool):
        raise ValueError(f"the 'center' option is True or False (remove each channel's mean first), got {center!r}")
    return center


@register("eigencam", needs=(), options=("center",), aliases=("eigen-cam",),
          description="projection of A (hw x C) on its first right singular vector, sign making the "
                      "sum positive; class-agnostic; option center (pytorch-grad-cam's form)",
          reference="Muhammad & Yeasin, Eigen-CAM: Class Activation Map using Principal Components, IJCNN 2020")
def eigencam(inputs: LayerInputs) -> torch.Tensor:
    """Eigen-CAM: ``A`` as ``(hw, C)`` projected on its first right singular vector (see the module).

    The map does not depend on the target: every target of an image gets the same map.

    Returns:
        ``(B, T, h, w)`` raw maps (no ReLU).

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(2, 3, 224, 224), methods="eigencam", layers="layer4")
        exp["eigencam"].shape   # (2, 224, 224), min-max normalised to [0, 1]
    """
    maps = first_component_projection(inputs.activations, _center(inputs))      # (B, h, w)
    per_image = 1 if inputs.targets is None else inputs.targets.shape[1]
    return maps.unsqueeze(1).expand(maps.shape[0], per_image, *maps.shape[1:])


@register("eigengradcam", needs=("gradients",), options=("center",), aliases=("eigengrad-cam",),
          description="projection of g*A (hw x C) on its first right singular vector, sign making the "
                      "sum positive; option center (pytorch-grad-cam's form)",
          reference="Muhammad & Yeasin, Eigen-CAM, IJCNN 2020 (the gradient-weighted variant of "
                    "pytorch-grad-cam)")
def eigengradcam(inputs: LayerInputs) -> torch.Tensor:
    """EigenGrad-CAM: ``g * A`` as ``(hw, C)`` projected on its first right singular vector.

    Returns:
        ``(B, T, h, w)`` raw maps (no ReLU), one per target.

    Example::

        model = torchvision.models.resnet18().eval()
        exp = camkit.explain(model, torch.randn(2, 3, 224, 224), methods="eigengradcam", layers="layer4")
        exp["eigengradcam"].shape   # (2, 224, 224), min-max normalised to [0, 1]
    """
    return first_component_projection(inputs.gradients * inputs.activations.unsqueeze(1), _center(inputs))
