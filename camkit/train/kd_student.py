"""KD-CI-CAM's student recipe (Shao et al., arXiv 2301.01060): ``camkit train kd-student``.

A fresh CI-CAM model (:func:`~camkit.train.cicam_recipe.build_cicam_model`) learns from two trained
teachers, a ``kd-cls-teacher`` and a ``kd-loc-teacher`` checkpoint (:mod:`camkit.train.kd_recipe`)::

    camkit train kd-student --cls-teacher runs/cls/checkpoint.pt --loc-teacher runs/loc/checkpoint.pt \\
        --data ... --backbone vgg16 --pretrained vgg16.pth --out runs/student

**Routing.** Every training sample goes, with probability 1/3 each, to the student loss only (route 0),
classification distillation (1) or localization distillation (2). The route is a hash of
``(config.seed, global_step, dataset index)`` (:func:`route_samples`), not a draw from a global RNG:
the same sample at the same step takes the same route in a resumed run and under any number of
processes.

**Loss** (the paper's, with the released code's reductions)::

    L = (1 - alpha) * CE(down, y)                      every sample (the down branch's logits)
      + alpha * L_ld                                    mean over the samples routed to 1
      + alpha * beta * L_ad                             mean over the samples routed to 2

* ``L_ld = T_cls² · KL(softmax(z_t/T_cls) ‖ softmax(z_s/T_cls))`` between the classification teacher's
  down logits and the student's (:func:`~camkit.train.kd_losses.logit_distillation_loss`).
  ``distillation="released"`` uses instead the released code's objective, the student's
  probabilities fed to ``KLDivLoss`` where log-probabilities are expected and no T²
  (:func:`~camkit.train.kd_losses.released_logit_distillation_loss`). It does not minimise the KL.
  It exists only so that its effect can be measured.
* ``L_ad``: the MSE between the temperature-normalised class maps ``W . F_e`` ``(B, N, h, w)`` of
  the student's and the localization teacher's down branches, every class as in the released code
  (:func:`~camkit.train.kd_losses.activation_distillation_loss`). The paper normalises each map with
  a softmax over its positions (``activation_norm="softmax"``, the default). The released code uses
  an elementwise sigmoid (``"sigmoid"``). A teacher map of another size is resized bilinearly to the
  student's.
* The mean over a route's samples is taken over the global batch: the local sum is divided by the
  route's sample count summed over the processes, divided by their number. So N processes take one
  process's step, as for every camkit loss (:mod:`camkit.train.losses`).

**Teachers.** Model options ``cls_teacher=PATH`` and ``loc_teacher=PATH`` name the two checkpoints
(``--cls-teacher`` / ``--loc-teacher`` on the command line). When a run is set up,
:func:`prepare_student_options` records each file's absolute path and sha256 in the model options.
The checkpoint's model spec therefore names the teachers, and resuming with a teacher file that has
changed is refused with a message naming the file. Each teacher must come from the expected recipe,
with the student's backbone and class count (its other model options, such as ``widths``, may
differ). Each is rebuilt from its checkpoint in eval mode, without gradients, with its own context
pool (a teacher in eval mode never updates its pool). Each is kept in ``student.kd_teachers``, a
plain dict and not a submodule, so its weights are not in the student's ``state_dict`` or optimizer
and DDP does not see it. Every process loads its own copy. A teacher on another device than the
batch is moved to it. The teacher passes run under ``torch.no_grad`` in the loss, and each teacher
sees only the samples routed to it. They cannot be batched with the student's forward: the three
are different networks.

**Inference.** :func:`camkit.train.load_checkpoint_model` rebuilds a student checkpoint as the CI-CAM
it is (:func:`build_student_for_inference`), without loading the teachers.

**Options** (model options, recorded in the checkpoint, checked when the model is built): ``alpha`` in
``[0, 1]`` (0.8), ``beta >= 0`` (1.0, the released ``--kd_fe_times``), ``cls_temperature`` and
``loc_temperature`` ``> 0`` (15, 15), ``activation_norm`` (``"softmax"``), ``distillation``
(``"kl"``). The student's context update rate defaults to 0.002 (the released student run).
Optimisation and presets (``cub-vgg16``: Adam, lr 5e-4, batch 6; ``synthetic-cpu``) are the
``cicam`` recipe's.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from camkit.distributed import all_reduce_sum, world
from camkit.train.checkpoint import START_FRESH, CheckpointError, load_checkpoint, rebuild_model
from camkit.train.cicam_recipe import (
    CICAM_CONFIG, _PRESETS as CICAM_PRESETS, build_cicam_model, cicam_forward, cicam_logits, cicam_param_groups,
)
from camkit.train.kd_losses import (
    activation_distillation_loss, logit_distillation_loss, released_logit_distillation_loss,
)
from camkit.train.losses import batch_mean
from camkit.train.recipes import Recipe, register_recipe

__all__ = ["build_kd_student", "build_student_for_inference", "prepare_student_options", "kd_student_loss",
           "route_samples", "file_sha256", "STUDENT_DEFAULTS", "TEACHER_RECIPES", "ROUTES",
           "STUDENT_UPDATE_RATE"]

#: The student's loss options (the released VGG16/CUB student run: ``--kd_alpha 0.8 --cls_teacher_T 15
#: --loc_teacher_T 15 --kd_fe_times 1.0``); the normalisation and the logit term are the paper's.
STUDENT_DEFAULTS: Dict[str, Any] = dict(alpha=0.8, beta=1.0, cls_temperature=15.0, loc_temperature=15.0,
                                        activation_norm="softmax", distillation="kl")
#: The model option naming each teacher, and the recipe its checkpoint must come from.
TEACHER_RECIPES: Dict[str, str] = {"cls_teacher": "kd-cls-teacher", "loc_teacher": "kd-loc-teacher"}
#: The command-line flag of each teacher (for messages).
_FLAGS = {"cls_teacher": "--cls-teacher", "loc_teacher": "--loc-teacher"}
#: Route ids: 0 the student loss only, 1 classification distillation, 2 localization distillation.
ROUTES: Tuple[str, str, str] = ("student", "cls", "loc")
#: The student's context-pool update rate unless ``update_rate`` is given (the released student run).
STUDENT_UPDATE_RATE = 0.002

_ACTIVATION_NORMS = ("softmax", "sigmoid")
_DISTILLATIONS = ("kl", "released")
_MASK64 = (1 << 64) - 1


def _number(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and (value > low if low_open else value >= low) and value <= high
    if not ok:
        span = f"> {low}" if low_open else (f"in [{low}, {high}]" if math.isfinite(high) else f">= {low}")
        raise ValueError(f"kd-student option {name} must be a finite number {span}, got {value!r}")
    return float(value)


def _check_student_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """:data:`STUDENT_DEFAULTS` overridden by the matching ``options``, each value checked."""
    kd = dict(STUDENT_DEFAULTS, **{k: v for k, v in options.items() if k in STUDENT_DEFAULTS})
    kd["alpha"] = _number("alpha", kd["alpha"], 0.0, 1.0)
    kd["beta"] = _number("beta", kd["beta"], 0.0)
    for name in ("cls_temperature", "loc_temperature"):
        kd[name] = _number(name, kd[name], 0.0, low_open=True)
    if kd["activation_norm"] not in _ACTIVATION_NORMS:
        raise ValueError(f"kd-student option activation_norm must be 'softmax' (the paper: over each map's "
                         f"positions) or 'sigmoid' (the released code), got {kd['activation_norm']!r}")
    if kd["distillation"] not in _DISTILLATIONS:
        raise ValueError(f"kd-student option distillation must be 'kl' (T²·KL, the definition) or 'released' "
                         f"(the released code's probabilities-into-KLDivLoss, no T²), got {kd['distillation']!r}")
    return kd


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _teacher_file(role: str, options: Dict[str, Any]) -> Path:
    """The absolute path of teacher ``role``'s checkpoint; a ``ValueError`` naming the flag otherwise."""
    expected = TEACHER_RECIPES[role]
    if options.get(role) is None:
        raise ValueError(f"kd-student needs the {expected} checkpoint: pass {_FLAGS[role]} CKPT (model option "
                         f"{role}=PATH), the checkpoint.pt of a `camkit train {expected}` run")
    value = options[role]
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"kd-student option {role} must be a path to a checkpoint file, got {value!r}")
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ValueError(f"kd-student {_FLAGS[role]}: no file at {path}; pass the checkpoint.pt of a "
                         f"`camkit train {expected}` run")
    return path.resolve()


def prepare_student_options(options: Dict[str, Any], saved: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The recipe's ``prepare_model_options``: checks ``options`` and records, for each teacher, the
    absolute path (``cls_teacher``, ``loc_teacher``) and the file's sha256 (``cls_teacher_sha256``,
    ``loc_teacher_sha256``).

    ``saved``: the model options of the checkpoint being resumed. If a teacher is the same path but
    its file's hash has changed, a :class:`~camkit.train.checkpoint.CheckpointError` names the file.
    A ``*_sha256`` given in ``options`` must match its file.
    """
    options = dict(options)
    _check_student_options(options)
    for role in TEACHER_RECIPES:
        path = _teacher_file(role, options)
        digest = file_sha256(path)
        given = options.get(role + "_sha256")
        if given is not None and given != digest:
            raise ValueError(f"kd-student {_FLAGS[role]} {path} has sha256 {digest}, not the {given} given in "
                             f"model option {role}_sha256; pass the file that hash names, or drop the option")
        if saved is not None and saved.get(role) == str(path) and saved.get(role + "_sha256") not in (None, digest):
            raise CheckpointError(
                f"cannot resume: the {TEACHER_RECIPES[role]} checkpoint {path} ({_FLAGS[role]}) has changed since "
                f"the student's checkpoint was written (sha256 {saved[role + '_sha256'][:12]}... then, "
                f"{digest[:12]}... now); resume with the teacher file the run started with or {START_FRESH}")
        options[role], options[role + "_sha256"] = str(path), digest
    return options


def _load_teacher(role: str, options: Dict[str, Any], backbone: str, num_classes: int) -> nn.Module:
    """Teacher ``role`` rebuilt from its checkpoint, checked against the student; eval mode, frozen."""
    path = _teacher_file(role, options)
    expected = TEACHER_RECIPES[role]
    recorded = options.get(role + "_sha256")
    if recorded is not None and file_sha256(path) != recorded:
        raise ValueError(f"kd-student {_FLAGS[role]} {path} does not have the recorded sha256 {recorded}: the "
                         f"teacher file has changed; pass the file the run started with or start fresh")
    try:
        payload = load_checkpoint(path)
    except CheckpointError as error:
        raise ValueError(f"kd-student {_FLAGS[role]}: {error}; pass the checkpoint.pt of a "
                         f"`camkit train {expected}` run") from error
    spec = payload["model_spec"]
    found = [(name, spec.get(name), want) for name, want in
             (("recipe", expected), ("backbone", backbone), ("num_classes", int(num_classes)))
             if spec.get(name) != want]
    if found:
        name, got, want = found[0]
        what = {"recipe": f"the {expected} recipe's (a `camkit train {expected}` checkpoint is accepted)",
                "backbone": f"the student's backbone {want!r}",
                "num_classes": f"the student's class count {want}"}[name]
        raise ValueError(f"kd-student {_FLAGS[role]} {path} has {name} {got!r}, it must be {what}; pass a "
                         f"teacher trained with recipe {expected!r}, backbone {backbone!r} and {num_classes} classes")
    teacher = rebuild_model(payload)
    teacher.requires_grad_(False)
    return teacher.eval()


def _split_options(options: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(kd options, CI-CAM options)``: the student's checked loss options, and the rest for the model
    (teacher paths and hashes removed, ``update_rate`` defaulting to :data:`STUDENT_UPDATE_RATE`)."""
    kd = _check_student_options(options)
    teacher_keys = {k for role in TEACHER_RECIPES for k in (role, role + "_sha256")}
    rest = {k: v for k, v in options.items() if k not in STUDENT_DEFAULTS and k not in teacher_keys}
    rest.setdefault("update_rate", STUDENT_UPDATE_RATE)
    return kd, rest


def build_kd_student(backbone: str = "vgg16", num_classes: int = 200, pretrained=None, **options: Any) -> nn.Module:
    """A fresh CI-CAM student with ``kd_options`` and its two teachers in ``kd_teachers``.

    ``options``: ``cls_teacher``, ``loc_teacher`` (checkpoint paths; with ``*_sha256`` when recorded by
    :func:`prepare_student_options`), the loss options of :data:`STUDENT_DEFAULTS`, and the CI-CAM
    model's own (``input_size``, ``update_rate``, backbone options such as ``widths``). Every check
    (options, teacher files, recipes, backbones, class counts) runs before the student is built.
    """
    kd, rest = _split_options(options)
    teachers = {role: _load_teacher(role, options, backbone, num_classes) for role in TEACHER_RECIPES}
    model = build_cicam_model(backbone, num_classes=num_classes, pretrained=pretrained, **rest)
    model.kd_options = kd
    model.kd_teachers = teachers          # a plain dict: not submodules, not in state_dict or the optimizer
    return model


def build_student_for_inference(backbone: str = "vgg16", num_classes: int = 200, pretrained=None,
                                **options: Any) -> nn.Module:
    """The recipe's ``build_inference_model``: the student's CI-CAM (with ``kd_options``), no teachers."""
    kd, rest = _split_options(options)
    model = build_cicam_model(backbone, num_classes=num_classes, pretrained=pretrained, **rest)
    model.kd_options = kd
    return model


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def route_samples(indices: torch.Tensor, global_step: int, seed: int = 0) -> torch.Tensor:
    """Each sample's route ``(B,)`` (0 student loss only, 1 classification distillation, 2 localization
    distillation; see :data:`ROUTES`), from dataset ``indices`` ``(B,)``, the optimizer step and the seed.

    ``splitmix64(splitmix64(splitmix64(seed) + step) + index) mod 3``: every route has probability
    1/3 (up to 2^-64), independently per sample and step; no RNG state is read or changed.
    """
    step_key = _splitmix64((_splitmix64(int(seed) & _MASK64) + int(global_step)) & _MASK64)
    routes = [_splitmix64((step_key + int(i)) & _MASK64) % 3 for i in indices.reshape(-1).tolist()]
    return torch.tensor(routes, dtype=torch.long, device=indices.device)


def _teacher_output(teacher: nn.Module, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """A teacher's eval-mode CI-CAM output on ``images``, no gradient; moved to their device if needed."""
    parameter = next(teacher.parameters(), None)
    if parameter is not None and parameter.device != images.device:
        teacher.to(images.device)
    teacher.eval()
    with torch.no_grad():
        return teacher(images)


class _RouteNormalizer:
    """A ``state`` for :func:`~camkit.train.losses.batch_mean` giving a route's mean over the global
    batch: the local sum divided by (the route's sample count over all processes / their number)."""

    def __init__(self, global_count: float, processes: int):
        self.normalizer = max(float(global_count), 1.0) / processes


def kd_student_loss(output: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor], state) -> Dict[str, torch.Tensor]:
    """``(1 - alpha) CE(down, y) + alpha L_ld + alpha beta L_ad`` with the routes of :func:`route_samples`.

    Runs the teachers (no gradient) on the samples routed to them. Returns ``{"loss", "ce", "ld", "ad"}``
    (the last three detached, for the log; ``ld``, ``ad`` are the route means, 0 without such sample).
    """
    net = state.model
    options, teachers = net.kd_options, getattr(net, "kd_teachers", None)
    if not teachers:
        raise RuntimeError("this kd-student model has no teachers (built by build_student_for_inference?); "
                           "train the model built by build_kd_student with cls_teacher= and loc_teacher=")
    labels, images = batch["label"], batch["image"]
    routes = route_samples(batch["index"], state.global_step, state.config.seed).to(labels.device)
    down = output["down"] if output["down"].dtype == torch.float64 else output["down"].float()
    ce = batch_mean(F.cross_entropy(down, labels, reduction="none"), state)
    counts = all_reduce_sum(torch.stack([(routes == 1).sum(), (routes == 2).sum()]).to(torch.float64)).tolist()
    processes = world()[1]
    ld = ad = output["down"].sum() * 0.0
    cls_rows = (routes == 1).nonzero().flatten()
    if len(cls_rows):
        teacher_logits = _teacher_output(teachers["cls_teacher"], images[cls_rows])["down"]
        term = logit_distillation_loss if options["distillation"] == "kl" else released_logit_distillation_loss
        ld = term(output["down"][cls_rows], teacher_logits, options["cls_temperature"],
                  _RouteNormalizer(counts[0], processes))
    loc_rows = (routes == 2).nonzero().flatten()
    if len(loc_rows):
        teacher = teachers["loc_teacher"]
        teacher_out = _teacher_output(teacher, images[loc_rows])
        teacher_maps = teacher.class_maps(teacher_out["enhanced"])
        student_maps = net.class_maps(output["enhanced"][loc_rows])
        if teacher_maps.shape[-2:] != student_maps.shape[-2:]:
            teacher_maps = F.interpolate(teacher_maps.float(), size=student_maps.shape[-2:], mode="bilinear",
                                         align_corners=False)
        ad = activation_distillation_loss(student_maps, teacher_maps, options["loc_temperature"],
                                          options["activation_norm"], _RouteNormalizer(counts[1], processes))
    alpha, beta = options["alpha"], options["beta"]
    loss = (1 - alpha) * ce + alpha * ld + alpha * beta * ad
    return {"loss": loss, "ce": ce.detach(), "ld": ld.detach(), "ad": ad.detach()}


register_recipe(Recipe(
    name="kd-student", build_model=build_kd_student, loss=kd_student_loss, config=CICAM_CONFIG,
    param_groups=cicam_param_groups, forward=cicam_forward, logits=cicam_logits, presets=dict(CICAM_PRESETS),
    prepare_model_options=prepare_student_options, build_inference_model=build_student_for_inference,
    description="KD-CI-CAM student: a CI-CAM model distilled from a kd-cls-teacher (logits, T²·KL) and a "
                "kd-loc-teacher (class maps) checkpoint, samples routed 1/3 each (--cls-teacher, --loc-teacher).",
), overwrite=True)
