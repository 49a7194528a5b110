"""KD-CI-CAM's two teacher recipes (Shao et al., arXiv 2301.01060): ``kd-cls-teacher``, ``kd-loc-teacher``.

Each teacher is a CI-CAM model (:func:`camkit.models.cicam.build_cicam`, as in the ``cicam`` recipe)
trained with extra terms on its own foreground and background (:mod:`camkit.train.kd_masks`):

* forward: ``model(image, labels=label)`` (one call of the possibly DDP-wrapped model: both branches,
  the context-pool update), then, in training mode only, the masks ``fg, bg`` ``(B, 1, H, W)`` from the
  down branch's combinational CAM at the crop size, and ``s_fg = classifier(GAP(features(x * fg)))``,
  ``s_bg`` likewise ``(B, K)``: backbone, GAP and the shared classifier, **no context enhancement**.
  The masked passes go through the unwrapped modules (under DDP each parameter still gets one summed
  gradient) and are separate passes, as in the released ``aux_classification`` (BatchNorm statistics
  are not mixed between x*fg and x*bg).
* ``kd-cls-teacher``: ``L = L_stu + fore_weight * CE(s_fg, y) + area_weight * L_area`` with
  ``L_stu = CE(up) + CE(down)`` and ``L_area`` the mean of the down combinational CAM (min-subtracted;
  with gradient). ``area_at="crop"`` (default) takes it on the map upsampled to the crop, as the
  released VGG16/CUB run (``--spa_loss 2``); ``"feature"`` at the feature resolution (``--spa_loss 1``).
  Defaults: the released VGG16/CUB run, ``seg_thr=0.08, fore_weight=1.0, area_weight=0.04``.
* ``kd-loc-teacher``: ``L = L_stu + diff_weight * CE(s_fg - s_bg, y) + aux_weight * CE((s_fg - s_bg +
  down) / 2, y)``. The paper writes ``L_stu + L_diff`` (``diff_weight=1, aux_weight=0``); camkit's
  defaults are the released top-1-loc VGG16/CUB run (``--aux_type diff_aux --aux_rate 0.5
  --seg_thr 0``): ``diff_weight=aux_weight=0.5, seg_thr=0``.

The loss options are model options (``model_options={"seg_thr": ..., ...}`` of
:func:`camkit.train.loop.train`), so a checkpoint records them; they are stored as
``model.kd_options`` and checked when the model is built. Optimisation and presets are the ``cicam``
recipe's (the released teachers also use RandomResizedCrop(0.2, 1) and colour jitter, which camkit's
transforms do not offer yet).
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from camkit.train.cicam_recipe import (
    CICAM_CONFIG, _PRESETS as CICAM_PRESETS, build_cicam_model, cicam_logits, cicam_param_groups,
)
from camkit.train.kd_losses import area_loss, difference_loss, foreground_loss
from camkit.train.kd_masks import check_seg_thr, down_branch_ccam, teacher_masks
from camkit.train.losses import cicam_loss
from camkit.train.recipes import Recipe, register_recipe

__all__ = ["build_kd_cls_teacher", "build_kd_loc_teacher", "kd_teacher_forward", "plain_logits",
           "kd_cls_teacher_loss", "kd_loc_teacher_loss", "CLS_TEACHER_DEFAULTS", "LOC_TEACHER_DEFAULTS"]

#: The classification teacher's loss options (the released VGG16/CUB run).
CLS_TEACHER_DEFAULTS: Dict[str, Any] = dict(seg_thr=0.08, fore_weight=1.0, area_weight=0.04, area_at="crop")
#: The localization teacher's loss options (the released top-1-loc VGG16/CUB run; the paper: 1.0 and 0).
LOC_TEACHER_DEFAULTS: Dict[str, Any] = dict(seg_thr=0.0, diff_weight=0.5, aux_weight=0.5)


def _check_weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (a loss weight), got {value!r}")
    return float(value)


def _split_options(defaults: Dict[str, Any], options: Dict[str, Any]):
    kd = {k: options.pop(k) for k in list(options) if k in defaults}
    kd = dict(defaults, **kd)
    kd["seg_thr"] = check_seg_thr(kd["seg_thr"])
    for name, value in kd.items():
        if name.endswith("_weight"):
            kd[name] = _check_weight(name, value)
    return kd, options


def build_kd_cls_teacher(backbone: str = "vgg16", num_classes: int = 200, pretrained=None,
                         **options: Any) -> nn.Module:
    """A CI-CAM model (:func:`~camkit.train.cicam_recipe.build_cicam_model`) with ``kd_options``
    (:data:`CLS_TEACHER_DEFAULTS` overridden by the matching ``options``; the rest go to the model)."""
    kd, rest = _split_options(CLS_TEACHER_DEFAULTS, dict(options))
    if kd["area_at"] not in ("crop", "feature"):
        raise ValueError(f"area_at must be 'crop' (the released run) or 'feature', got {kd['area_at']!r}")
    model = build_cicam_model(backbone, num_classes=num_classes, pretrained=pretrained, **rest)
    model.kd_options = dict(kd, masks=("fg",))
    return model


def build_kd_loc_teacher(backbone: str = "vgg16", num_classes: int = 200, pretrained=None,
                         **options: Any) -> nn.Module:
    """A CI-CAM model with ``kd_options`` (:data:`LOC_TEACHER_DEFAULTS` overridden by ``options``)."""
    kd, rest = _split_options(LOC_TEACHER_DEFAULTS, dict(options))
    model = build_cicam_model(backbone, num_classes=num_classes, pretrained=pretrained, **rest)
    model.kd_options = dict(kd, masks=("fg", "bg"))
    return model


def plain_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``classifier(GAP(features(images)))`` ``(B, K)`` of a CI-CAM model: no context enhancement."""
    return model.classifier(model.features(images).mean(dim=(2, 3)))


def kd_teacher_forward(model: nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The CI-CAM forward (pool update in training mode), plus, in training mode, ``"fg"``/``"bg"``
    ``(B, 1, H, W)`` and ``"s_fg"``/``"s_bg"`` ``(B, K)`` for the masks in ``model.kd_options["masks"]``."""
    image = batch["image"]
    output = model(image, labels=batch["label"])
    net = getattr(model, "module", model)               # DistributedDataParallel keeps the model here
    if not net.training:
        return output
    options = net.kd_options
    fg, bg = teacher_masks(output, net.classifier.weight, tuple(image.shape[-2:]), options["seg_thr"],
                           net.combination)
    output = dict(output, fg=fg, bg=bg)
    for name, mask in (("fg", fg), ("bg", bg)):
        if name in options["masks"]:
            output["s_" + name] = plain_logits(net, image * mask.to(image.dtype))
    return output


def kd_cls_teacher_loss(output: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor],
                        state) -> Dict[str, torch.Tensor]:
    """``CE(up) + CE(down) + fore_weight * CE(s_fg, y) + area_weight * L_area`` (see the module docstring)."""
    options = state.model.kd_options
    terms = cicam_loss(output, batch, state)
    fore = foreground_loss(output["s_fg"], batch["label"], state)
    ccam = down_branch_ccam(output, state.model.classifier.weight, state.model.combination)
    if options["area_at"] == "crop":
        ccam = F.interpolate(ccam.unsqueeze(1).float(), size=tuple(batch["image"].shape[-2:]), mode="bilinear",
                             align_corners=False).squeeze(1)
    area = area_loss(ccam, state)
    loss = terms["loss"] + options["fore_weight"] * fore + options["area_weight"] * area
    return dict(terms, loss=loss, fore=fore.detach(), area=area.detach())


def kd_loc_teacher_loss(output: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor],
                        state) -> Dict[str, torch.Tensor]:
    """``CE(up) + CE(down) + diff_weight * CE(s_fg - s_bg, y) + aux_weight * CE((s_fg - s_bg + down) / 2, y)``."""
    options = state.model.kd_options
    labels = batch["label"]
    terms = cicam_loss(output, batch, state)
    diff = difference_loss(output["s_fg"], output["s_bg"], labels, state)
    aux_logits = (output["s_fg"].float() - output["s_bg"].float() + output["down"].float()) / 2
    aux = foreground_loss(aux_logits, labels, state)         # CE(aux logits, y), batch-normalised
    loss = terms["loss"] + options["diff_weight"] * diff + options["aux_weight"] * aux
    return dict(terms, loss=loss, diff=diff.detach(), aux=aux.detach())


for _name, _build, _loss, _text in (
        ("kd-cls-teacher", build_kd_cls_teacher, kd_cls_teacher_loss,
         "KD-CI-CAM classification teacher: CI-CAM + mu*CE(s_fg) + eta*L_area on its own CCAM masks."),
        ("kd-loc-teacher", build_kd_loc_teacher, kd_loc_teacher_loss,
         "KD-CI-CAM localization teacher: CI-CAM + CE(s_fg - s_bg) (+ aux CE((s_fg - s_bg + down)/2))."),
):
    register_recipe(Recipe(name=_name, build_model=_build, loss=_loss, config=CICAM_CONFIG,
                           param_groups=cicam_param_groups, forward=kd_teacher_forward, logits=cicam_logits,
                           presets=dict(CICAM_PRESETS), description=_text), overwrite=True)
