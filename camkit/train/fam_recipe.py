"""The ``fam`` training recipe (Meng et al., ICCV 2021): ``camkit train fam``.

Model: :func:`camkit.models.build_fam` on any camkit backbone (its head dropped), with the model
options ``templates`` (N = 3), ``parts`` (K = 5; 0 drops the part module), ``memory`` (False: three
1x1 convs instead of the memory), ``attention`` (``"softmax"`` or the printed ``"literal"``),
``lambda_spa`` (0.04), ``lambda_div`` (0.01) and ``class_weights`` (``None`` or K numbers, see
:func:`camkit.train.fam_losses.balanced_class_weights`), plus the backbone's own options. They are
model options so that a checkpoint records them.
Forward: ``model(image, return_maps=True)``. Loss: :func:`camkit.train.fam_losses.fam_loss`,
``L_cls + lambda_spa L_spa + lambda_div L_div``. Top-1 uses ``output["logits"]``; localisation the
``fam`` method (the foreground map ``M``), at the trunk output ``"features"``.

Presets: ``"synthetic-cpu"`` is exactly the ``cam`` recipe's (so a comparison with a vanilla CAM model
differs only in the model and the loss); ``"paper-input"`` is the paper's input pipeline (resize 256,
random crop 224, flip) with the ``cam`` recipe's wsolevaluation-style optimisation, because the
optimiser settings of the paper are not in the sources camkit followed (issue 17 gives none): pass
``--lr``/``--epochs``/``--set`` for a faithful reproduction.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from camkit.train.fam_losses import fam_loss
from camkit.train.recipes import CAM_CONFIG, SYNTHETIC_CPU_PRESET, Recipe, TrainConfig, register_recipe

__all__ = ["build_fam_model", "fam_forward", "fam_loss", "FAM_CONFIG", "FAM_PRESETS"]


def build_fam_model(backbone: str = "tiny", num_classes: int = 4, pretrained=None, **options: Any) -> nn.Module:
    """:func:`camkit.models.build_fam` (see the module docstring for ``options``)."""
    from camkit.models.fam import build_fam
    return build_fam(backbone, num_classes=num_classes, pretrained=pretrained, **options)


def fam_forward(model: nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``model(image, return_maps=True)``: logits, foreground map, part maps and part features."""
    return model(batch["image"], return_maps=True)


#: Defaults: the paper's input pipeline with the ``cam`` recipe's optimisation (see the module docstring).
FAM_CONFIG: TrainConfig = CAM_CONFIG.replace(resize_size=256, crop_size=224, flip=True)

FAM_PRESETS: Dict[str, Dict[str, Any]] = {
    "paper-input": dict(resize_size=256, crop_size=224, flip=True),
    "synthetic-cpu": dict(SYNTHETIC_CPU_PRESET),
}

register_recipe(Recipe(
    name="fam",
    build_model=build_fam_model,
    loss=fam_loss,
    config=FAM_CONFIG,
    forward=fam_forward,
    presets=FAM_PRESETS,
    eval_methods=("fam",),
    description="FAM (Meng et al. 2021): object-aware memory attention -> class-agnostic foreground map M, "
                "part-aware classifier; L_cls + 0.04 L_spa + 0.01 L_div; maps from method 'fam'.",
), overwrite=True)
