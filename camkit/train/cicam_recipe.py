"""The ``cicam`` training recipe (Shao et al., ACM MM 2021): ``camkit train cicam``.

Model: :func:`camkit.models.cicam.build_cicam` (``"vgg16"`` = CI-CAM's VGG16 with LeakyReLU(0.2) and
non-local blocks; ``"vgg16-imagenet"``; or any camkit backbone such as ``"tiny"``, ``"resnet50"``).
Forward: ``model(image, labels=label)``, so the causal context pool is updated once per training
step (after both branches are computed, as in the released code). Loss: ``CE(up) + CE(down)``.
Top-1 and CAMs use the down branch (``output["down"]``).

Optimisation as released for VGG16 on CUB: Adam, lr 5e-4, batch 6, 100 epochs, poly schedule
``lr (1 - e/E)^0.9`` per epoch, the backbone's parameter groups (including its non-local blocks) and
the context projection at x0.1, the classifier at x1 (:func:`cicam_param_groups`). The released code
puts the projection in the backbone's group; camkit follows it (before issue 15 camkit trained the
projection at x1).

The combination used by the ``causal`` method defaults to the released code's ``"cicam-quadratic"``
(``h_r = -(r/(N-1))^2``; the top-1 class gets weight 0), not NL-CCAM's scheme; pass
``combination="nlccam-quadratic"`` as a model option or ``method_options={"causal": {"weights": ...}}``
at explanation time for the other one (see :mod:`camkit.methods.combinational`).

On the synthetic benchmark the ``synthetic-cpu`` preset uses exactly the ``cam`` recipe's
optimisation (SGD, step schedule, the same lr), so that a comparison with a vanilla CAM model differs
only in the model and the loss.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from camkit.train.losses import cicam_loss
from camkit.train.recipes import (
    CAM_CONFIG, SYNTHETIC_CPU_PRESET, Recipe, TrainConfig, pretrained_and_new_groups, register_recipe,
)

__all__ = ["cicam_loss", "cicam_forward", "cicam_logits", "cicam_param_groups", "build_cicam_model",
           "CICAM_CONFIG", "CICAM_FULL_LR_PREFIXES"]

#: The layers CI-CAM trains at the full lr; everything else (``model.features``: the backbone, its
#: non-local blocks and extra convs; and the context projection, as in the released code) is at the
#: reduced lr.
CICAM_FULL_LR_PREFIXES = ("classifier",)


def build_cicam_model(backbone: str = "vgg16", num_classes: int = 200, pretrained=None, **options: Any) -> nn.Module:
    """:func:`camkit.models.cicam.build_cicam` (``options``: ``input_size``, ``update_rate``,
    ``combination`` and the backbone's own options)."""
    from camkit.models.cicam import build_cicam
    return build_cicam(backbone, num_classes=num_classes, pretrained=pretrained, **options)


def cicam_forward(model: nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``model(image, labels=label)``: the pool updates only in training mode."""
    return model(batch["image"], labels=batch["label"])


def cicam_logits(output: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The down branch's logits ``(B, K)``."""
    return output["down"]


def cicam_param_groups(model: nn.Module, config: TrainConfig) -> List[Dict[str, Any]]:
    """:func:`~camkit.train.recipes.pretrained_and_new_groups` split at :data:`CICAM_FULL_LR_PREFIXES`,
    with ``lr`` meaning the classifier's lr: the classifier at x1 (group ``"new"``), everything in
    ``model.features`` and the context projection at x``1 / lr_classifier_ratio`` (group ``"backbone"``;
    the released 0.1 is ``lr_classifier_ratio = 10``, the synthetic preset uses 1)."""
    groups = pretrained_and_new_groups(model, config, new_prefixes=CICAM_FULL_LR_PREFIXES,
                                       pretrained_name="backbone")
    ratio = float(config.lr_classifier_ratio)
    return [dict(group, lr_scale=group["lr_scale"] / ratio) for group in groups]


#: Defaults: the released VGG16/CUB settings (backbone at x0.1 via ``lr_classifier_ratio=10``).
CICAM_CONFIG: TrainConfig = CAM_CONFIG.replace(
    epochs=100, batch_size=6, lr=5e-4, lr_classifier_ratio=10.0, weight_decay=0.0,
    optimizer="adam", lr_schedule="poly", lr_power=0.9)

_PRESETS = {
    "cub-vgg16": dict(epochs=100, batch_size=6, lr=5e-4, lr_classifier_ratio=10.0, weight_decay=0.0,
                      optimizer="adam", lr_schedule="poly", lr_power=0.9, resize_size=256, crop_size=224),
    # the synthetic benchmark on CPU with the tiny backbone: the cam recipe's optimisation, all layers new
    "synthetic-cpu": dict(SYNTHETIC_CPU_PRESET, optimizer=CAM_CONFIG.optimizer, lr_schedule=CAM_CONFIG.lr_schedule,
                          weight_decay=CAM_CONFIG.weight_decay, momentum=CAM_CONFIG.momentum,
                          lr_classifier_ratio=1.0),
}

register_recipe(Recipe(
    name="cicam",
    build_model=build_cicam_model,
    loss=cicam_loss,
    config=CICAM_CONFIG,
    param_groups=cicam_param_groups,
    forward=cicam_forward,
    logits=cicam_logits,
    presets=_PRESETS,
    description="CI-CAM (Shao et al. 2021): causal context pool + two branches, CE(up) + CE(down); "
                "maps from the down branch's combinational CAM (method 'causal').",
), overwrite=True)
