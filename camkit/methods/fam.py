"""The ``fam`` method: FAM's class-agnostic foreground map ``M`` (Meng et al., ICCV 2021).

Not a class activation map: ``M`` is read off the model, the same map for every target. It needs a
model with ``foreground_from_features(X) -> (B, 1, h, w)`` (:class:`camkit.models.FAM`) explained at
its trunk output ``model.features`` (the default layer of a FAM model), and runs only when named
(need ``"foreground"``: it is not in ``methods="all"``). The engine checks both before any hook.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from camkit.methods.registry import LayerInputs, register

__all__ = ["fam", "check_foreground_model"]


def check_foreground_model(model: nn.Module, layer_modules: Sequence[nn.Module], layer_keys: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``model`` has a foreground map and every layer is its trunk output."""
    if not callable(getattr(model, "foreground_from_features", None)) or not isinstance(
            getattr(model, "features", None), nn.Module):
        raise ValueError(f"the 'fam' method returns FAM's foreground map, but {type(model).__name__} has none "
                         f"(no foreground_from_features / features); explain a camkit.models.FAM "
                         f"(camkit train fam, camkit.models.build_fam) or use a CAM method such as 'cam'")
    wrong = [key for module, key in zip(layer_modules, layer_keys) if module is not model.features]
    if wrong:
        raise ValueError(f"the 'fam' method reads the foreground map off the trunk output 'features', not "
                         f"layer(s) {wrong}; pass layers='features' (the default for a FAM model) or drop 'fam'")


@register("fam", needs=("foreground",), options=(),
          description="FAM's class-agnostic foreground map M = sigmoid(w_ij . x_ij) (the same for every target)",
          reference="Meng et al., Foreground Activation Maps for Weakly Supervised Object Localization, ICCV 2021")
def fam(inputs: LayerInputs) -> torch.Tensor:
    """``M`` of the FAM model at its trunk output ``X`` (``inputs.activations`` ``(B, C, h, w)``).

    Returns:
        ``(B, T, h, w)``: ``M`` in ``(0, 1)`` repeated for the ``T`` targets. The engine upsamples it
        (bilinear) and, with ``normalize=True`` (default), min-max normalises it like every map; FAM's
        fixed threshold 0.5 applies to the raw map (``normalize=False``).

    Example::

        model = camkit.models.build_fam("tiny", num_classes=4)
        exp = camkit.explain(model, images, methods="fam", normalize=False)
        exp["fam"].shape   # (B, H, W) in (0, 1)
    """
    with torch.no_grad():
        foreground = inputs.model.foreground_from_features(inputs.activations)
    count = 1 if inputs.targets is None else inputs.targets.shape[1]
    return foreground.to(inputs.activations.dtype).expand(-1, count, -1, -1)
