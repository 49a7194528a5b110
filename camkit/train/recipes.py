"""Training recipes: a model, a loss and a config, registered by name, run by ONE loop.

A recipe is not a copy of the training loop. It is a :class:`Recipe` record that tells
:func:`camkit.train.loop.train` four things:

1. **the model** -- ``build_model(backbone, num_classes, pretrained, **model_options) -> nn.Module``.
   ``backbone`` is a name from :func:`camkit.models.list_backbones` (e.g. ``"tiny"``,
   ``"resnet50"``); ``pretrained`` is ``None`` (random init), a file path, or ``True`` (torchvision's
   local cache; never downloads). The returned module must be rebuildable from these arguments alone:
   the checkpoint stores them (see :func:`camkit.train.checkpoint.load_checkpoint_model`).
2. **the loss** -- a pure function ``loss(output, batch, state) -> Tensor | dict`` (camkit's own are in
   :mod:`camkit.train.losses`):

   - ``output``: whatever ``recipe.forward(model, batch)`` returned; by default ``model(batch["image"])``,
     e.g. logits ``(B, K)`` or a dict such as CI-CAM's ``{"logits": (B, K), "up": (B, K), ...}``.
     ``model`` here is the DDP-wrapped module during distributed training, so call it, don't reach into it.
   - ``batch``: a dict with at least ``"image"`` ``(B, 3, H, W)`` float (normalised) and ``"label"``
     ``(B,)`` long, both on the training device, plus ``"index"`` ``(B,)`` (dataset indices).
     ``B`` may be 0 (see below).
   - ``state``: a :class:`StepState` (epoch, step, global_step, the unwrapped ``model``, ``config``,
     ``normalizer``).

   It returns a scalar tensor, or a dict with the scalar tensor under ``"loss"`` and any other scalar
   terms to log (tensors or floats), e.g. ``{"loss": l1 + l2, "ce_up": l1, "ce_down": l2}``.
   **Normalisation**: the loss is the SUM of per-sample terms over the local batch divided by
   ``state.normalizer`` (:func:`camkit.train.losses.batch_mean` does it). The loop cuts every epoch
   into global batches of ``config.batch_size`` samples and splits each over the processes, so in the
   last batch of an epoch a process may hold fewer samples than another, or none; DDP averages the
   gradients over the processes, and with this normalisation N processes take exactly the step of one.
   A loss that takes the plain mean of its local batch is exact only while every process holds as many
   samples as the others, and is NaN on an empty batch (the loop then stops with a
   ``FloatingPointError`` that says so).
3. **the parameter groups** -- ``param_groups(model, config) -> list[dict]``: each dict holds
   ``"params"`` and ``"lr_scale"`` (multiplier of ``config.lr``), plus any other per-group optimizer
   options (e.g. ``"weight_decay"``). The default, :func:`pretrained_and_new_groups`, puts the
   parameters whose names start with one of ``model.new_layer_prefixes`` (the layers not taken from a
   pretrained network, e.g. the CAM head) at ``config.lr_classifier_ratio`` times the base lr, as in
   wsolevaluation, and the rest at the base lr. Every parameter must be in exactly one group.
4. **the config** -- a :class:`TrainConfig` of defaults (optimizer, schedule, transforms, batch size),
   plus named ``presets`` (dicts of overrides, e.g. ``"synthetic-cpu"``). Users override single fields
   on top (``--lr 0.01`` on the command line, or ``config.replace(lr=0.01)``).

Optional hooks: ``forward(model, batch) -> output`` (default ``model(batch["image"])``; override when
the model needs the labels, e.g. ACoL-style erasing), ``logits(output) -> (B, K)`` for top-1 evaluation
and CAM explanation (default: the output itself, ``output["logits"]`` for dicts, ``output[0]`` for
tuples), ``eval_methods`` (the explanation methods of ``camkit train``'s periodic localisation
evaluation; default ``("cam",)``, FAM's ``("fam",)``), and two for models that need outside files to train (the ``kd-student`` recipe's teachers):

- ``prepare_model_options(options, saved_options) -> options``: called by :func:`camkit.train.loop.train`
  before the model is built and before a checkpoint is checked for resuming; ``saved_options`` are the
  checkpoint's ``model_options`` when resuming, else ``None``. It returns the options to build and
  record (e.g. with the sha256 of each file they name) and raises, before anything is written, when
  they cannot be used (a missing file, a file that changed since the checkpoint).
- ``build_inference_model(backbone, num_classes, pretrained, **model_options)``: what
  :func:`camkit.train.checkpoint.load_checkpoint_model` rebuilds instead of ``build_model`` (the
  trained model without what only its training needs, e.g. without loading the teachers).

A complete recipe: ``camkit/train/cicam_recipe.py`` (model, forward, loss, logits, groups, presets).

The module that defines a recipe must be importable: the checkpoint records the module of
``build_model`` and :func:`get_recipe` imports it when loading. Built-in recipes (``"cam"``) are
registered when this module is imported. To make ``camkit train cicam`` find a recipe defined in another
module, add that module to ``RECIPE_MODULES`` (it is imported lazily by :func:`get_recipe`).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from camkit.train.losses import classification_loss, default_logits

__all__ = [
    "TrainConfig", "StepState", "Recipe", "register_recipe", "get_recipe", "list_recipes",
    "pretrained_and_new_groups", "default_forward", "default_logits", "CAM_CONFIG",
    "SYNTHETIC_CPU_PRESET", "RECIPE_MODULES", "POOLS", "RETHINKING_VGG16_TAP_PRESET",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Modules imported lazily by :func:`get_recipe` / :func:`list_recipes` so that their recipes register.
#: Other recipe files add their module path here (e.g. ``"camkit.train.cicam_recipe"``); missing
#: modules are skipped silently so a partial checkout still works.
RECIPE_MODULES: List[str] = ["camkit.train.cicam_recipe", "camkit.train.kd_recipe", "camkit.train.kd_student",
                             "camkit.train.fam_recipe"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, data and bookkeeping settings for one training run.

    ``batch_size`` is the GLOBAL batch: under ``torchrun`` with N processes every step's batch is split
    over them (shares differ by at most one sample), so results do not depend on N (see
    :mod:`camkit.train.loop`). The last batch of an epoch is shorter when ``batch_size`` does not
    divide the training set.
    The learning rate is set per epoch from ``lr_schedule``: ``"step"`` multiplies it by ``lr_gamma``
    every ``lr_step_epochs`` epochs (or at the epochs in ``lr_milestones`` when given), ``"poly"`` by
    ``(1 - epoch / epochs) ** lr_power``. Optimizer: ``"sgd"`` with ``momentum``, ``weight_decay`` and
    ``nesterov``, or ``"adam"`` with ``weight_decay``.

    Every value is checked on construction (and by :meth:`replace`): a ``ValueError`` names the field,
    the value and the accepted range.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    lr_classifier_ratio: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    lr_step_epochs: int = 3
    lr_gamma: float = 0.1
    lr_milestones: Tuple[int, ...] = ()
    optimizer: str = "sgd"            # "sgd" (momentum, nesterov) or "adam" (betas default)
    lr_schedule: str = "step"         # "step" (lr_gamma every lr_step_epochs / at lr_milestones),
                                      # "poly" (lr * (1 - epoch / epochs) ** lr_power) or "constant"
    lr_power: float = 0.9
    # data
    resize_size: int = 256
    crop_size: int = 224
    flip: bool = True
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    num_workers: int = 0
    # bookkeeping
    seed: int = 0
    amp: bool = True                  # used only when training on CUDA
    eval_every: int = 1               # epochs; 0 disables periodic evaluation
    checkpoint_every_steps: int = 0   # 0 = only at the end of each epoch
    log_every: int = 10               # steps between JSON-lines records
    max_steps: Optional[int] = None   # stop after this many optimizer steps in total (None = all epochs)
    progress: bool = True             # tqdm progress bar on rank 0

    def __post_init__(self) -> None:
        for name, requirement, check in _CONFIG_RULES:
            if not check(self):
                raise ValueError(f"TrainConfig.{name} must be {requirement}, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed; unknown names raise a ``TypeError`` naming the valid ones."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s) {sorted(unknown)}; valid fields: "
                            f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
        return cls(**kept)


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any, minimum: float, strictly_above: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > minimum if strictly_above else value >= minimum


def _are_numbers(values: Any, minimum: float, strictly_above: bool = False) -> bool:
    return isinstance(values, (tuple, list)) and len(values) == 3 and all(
        _is_number(v, minimum, strictly_above) for v in values)


#: ``(field, requirement, check)`` for every :class:`TrainConfig` field; ``check(config) -> bool``.
_CONFIG_RULES: Tuple[Tuple[str, str, Callable[[Any], bool]], ...] = (
    ("epochs", "an integer >= 1", lambda c: _is_int(c.epochs, 1)),
    ("batch_size", "an integer >= 1 (the global batch)", lambda c: _is_int(c.batch_size, 1)),
    ("lr", "a finite number >= 0", lambda c: _is_number(c.lr, 0)),
    ("lr_classifier_ratio", "a finite number > 0", lambda c: _is_number(c.lr_classifier_ratio, 0, True)),
    ("momentum", "a number in [0, 1)", lambda c: _is_number(c.momentum, 0) and c.momentum < 1),
    ("weight_decay", "a finite number >= 0", lambda c: _is_number(c.weight_decay, 0)),
    ("nesterov", "True or False, and False when momentum is 0 (Nesterov needs momentum)",
     lambda c: isinstance(c.nesterov, bool) and (not c.nesterov or c.momentum > 0)),
    ("lr_step_epochs", "an integer >= 1", lambda c: _is_int(c.lr_step_epochs, 1)),
    ("lr_gamma", "a finite number > 0", lambda c: _is_number(c.lr_gamma, 0, True)),
    ("lr_milestones", "a tuple of integers >= 0 (epochs)",
     lambda c: isinstance(c.lr_milestones, (tuple, list)) and all(_is_int(m, 0) for m in c.lr_milestones)),
    ("optimizer", "'sgd' or 'adam'", lambda c: c.optimizer in ("sgd", "adam")),
    ("lr_schedule", "'step', 'poly' or 'constant'", lambda c: c.lr_schedule in ("step", "poly", "constant")),
    ("lr_power", "a finite number >= 0", lambda c: _is_number(c.lr_power, 0)),
    ("resize_size", "an integer >= 1", lambda c: _is_int(c.resize_size, 1)),
    ("crop_size", "an integer >= 1 and <= resize_size",
     lambda c: _is_int(c.crop_size, 1) and _is_int(c.resize_size, c.crop_size)),
    ("flip", "True or False", lambda c: isinstance(c.flip, bool)),
    ("mean", "3 finite numbers", lambda c: _are_numbers(c.mean, -math.inf)),
    ("std", "3 finite numbers > 0", lambda c: _are_numbers(c.std, 0, True)),
    ("num_workers", "an integer >= 0", lambda c: _is_int(c.num_workers, 0)),
    ("seed", "an integer", lambda c: _is_int(c.seed, -2 ** 63)),
    ("amp", "True or False", lambda c: isinstance(c.amp, bool)),
    ("eval_every", "an integer >= 0 (epochs; 0 disables periodic evaluation)", lambda c: _is_int(c.eval_every, 0)),
    ("checkpoint_every_steps", "an integer >= 0 (0: only at the end of each epoch)",
     lambda c: _is_int(c.checkpoint_every_steps, 0)),
    ("log_every", "an integer >= 0 (0: no step records)", lambda c: _is_int(c.log_every, 0)),
    ("max_steps", "None or an integer >= 1", lambda c: c.max_steps is None or _is_int(c.max_steps, 1)),
    ("progress", "True or False", lambda c: isinstance(c.progress, bool)),
)


@dataclass
class StepState:
    """What a loss function may need besides the output and the batch.

    ``model`` is the unwrapped module (not the DDP wrapper); ``step`` counts steps within the epoch,
    ``global_step`` optimizer steps since the start of training (both before this step's update).
    ``normalizer`` is what a loss divides its sum over the local batch by: the number of samples in
    this step's global batch divided by the number of processes (the local batch size in one process;
    ``None`` means the local batch size). See :mod:`camkit.train.losses`.
    """

    epoch: int
    step: int
    global_step: int
    model: nn.Module
    config: TrainConfig
    normalizer: Optional[float] = None


def default_forward(model: nn.Module, batch: Dict[str, torch.Tensor]) -> Any:
    """``model(batch["image"])``."""
    return model(batch["image"])


def pretrained_and_new_groups(model: nn.Module, config: TrainConfig, *,
                              new_prefixes: Optional[Sequence[str]] = None,
                              pretrained_name: str = "pretrained") -> List[Dict[str, Any]]:
    """Two groups: pretrained layers at ``lr``, new layers at ``lr * lr_classifier_ratio``.

    New layers are the parameters whose qualified names are, or start with ``PREFIX.``, one of
    ``new_prefixes`` (default ``model.new_layer_prefixes``, a tuple every camkit backbone defines; a
    model without it is one group at ``lr``). Frozen parameters and empty groups are dropped. Returns
    ``[{"params", "lr_scale", "name"}, ...]`` with the names ``pretrained_name`` and ``"new"``.
    """
    prefixes = tuple(getattr(model, "new_layer_prefixes", ()) if new_prefixes is None else new_prefixes)
    pretrained, new = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_new = any(name == p or name.startswith(p + ".") for p in prefixes)
        (new if is_new else pretrained).append(parameter)
    groups = []
    if pretrained:
        groups.append({"params": pretrained, "lr_scale": 1.0, "name": pretrained_name})
    if new:
        groups.append({"params": new, "lr_scale": float(config.lr_classifier_ratio), "name": "new"})
    return groups


#: The ``cam`` recipe's pooling choices (model option ``pool``): global average pooling, or thresholded
#: average pooling (:class:`camkit.models.ThresholdedAvgPool`, Bae et al. ECCV 2020; option ``tap_tau``).
POOLS = ("gap", "tap")


def _build_backbone_model(backbone: str, num_classes: int, pretrained: Union[None, bool, str] = None,
                          pool: str = "gap", tap_tau: float = 0.1, **options: Any) -> nn.Module:
    """``camkit.models.build_backbone``: a CAM-ready GAP + linear classifier; ``pool="tap"`` puts a
    :class:`camkit.models.ThresholdedAvgPool` (``tau = tap_tau``, 0.1 in the paper) in place of its GAP
    (the backbone's ``pool`` module). The CAM is still ``sum_k W[c, k] A_k`` on the unpooled features."""
    from camkit.models import ThresholdedAvgPool, build_backbone
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS} ('tap': thresholded average pooling), got {pool!r}")
    tap = ThresholdedAvgPool(tap_tau) if pool == "tap" else None      # checks tap_tau before building
    model = build_backbone(backbone, num_classes=num_classes, pretrained=pretrained, **options)
    if tap is not None:
        if not isinstance(getattr(model, "pool", None), nn.AdaptiveAvgPool2d):
            raise ValueError(f"backbone {backbone!r} has no GAP module 'pool' to replace with TAP")
        model.pool = tap
    return model


@dataclass
class Recipe:
    """A named training recipe. See the module docstring for every field's contract."""

    name: str
    build_model: Callable[..., nn.Module]
    loss: Callable[[Any, Dict[str, torch.Tensor], StepState], Union[torch.Tensor, Dict[str, Any]]]
    config: TrainConfig = field(default_factory=TrainConfig)
    param_groups: Callable[[nn.Module, TrainConfig], List[Dict[str, Any]]] = pretrained_and_new_groups
    forward: Callable[[nn.Module, Dict[str, torch.Tensor]], Any] = default_forward
    logits: Callable[[Any], torch.Tensor] = default_logits
    presets: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    eval_methods: Tuple[str, ...] = ("cam",)
    prepare_model_options: Optional[Callable[[Dict[str, Any], Optional[Dict[str, Any]]], Dict[str, Any]]] = None
    build_inference_model: Optional[Callable[..., nn.Module]] = None

    def make_config(self, preset: Optional[str] = None, **overrides: Any) -> TrainConfig:
        """The recipe's defaults, then the named preset's overrides, then ``overrides``."""
        config = self.config
        if preset is not None:
            if preset not in self.presets:
                raise KeyError(f"recipe {self.name!r} has no preset {preset!r}; "
                               f"presets: {sorted(self.presets) or 'none'}")
            config = config.replace(**self.presets[preset])
        return config.replace(**overrides) if overrides else config


_RECIPES: Dict[str, Recipe] = {}


def register_recipe(recipe: Recipe, *, overwrite: bool = False) -> Recipe:
    """Register ``recipe`` under ``recipe.name``; returns it. Re-registering a name needs ``overwrite``."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"register_recipe expects a camkit.train.recipes.Recipe, got {type(recipe).__name__}")
    if recipe.name in _RECIPES and not overwrite and _RECIPES[recipe.name] is not recipe:
        raise ValueError(f"a recipe named {recipe.name!r} is already registered; "
                         "pass overwrite=True to replace it")
    _RECIPES[recipe.name] = recipe
    return recipe


def _import_recipe_modules(extra: Sequence[str] = ()) -> None:
    for module in list(RECIPE_MODULES) + list(extra):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is None or not module.startswith(error.name):
                raise


def get_recipe(name: str, module: Optional[str] = None) -> Recipe:
    """The recipe registered as ``name`` (importing ``module`` and ``RECIPE_MODULES`` first if needed)."""
    if name not in _RECIPES:
        _import_recipe_modules([module] if module else [])
    if name not in _RECIPES:
        raise KeyError(f"unknown recipe {name!r}; registered recipes: {list_recipes()}")
    return _RECIPES[name]


def list_recipes() -> List[str]:
    """Names of the registered recipes, sorted."""
    _import_recipe_modules()
    return sorted(_RECIPES)


#: The vanilla CAM recipe's defaults, following the wsolevaluation protocol (Choe et al., CVPR 2020):
#: SGD momentum 0.9, weight decay 1e-4, new layers at 10x lr, step decay by 0.1; resize 256, random
#: crop 224, horizontal flip. Epoch counts/lrs differ per dataset there (e.g. CUB VGG16: lr 1.7e-5 x ...);
#: pass them explicitly for a faithful reproduction.
CAM_CONFIG = TrainConfig(epochs=10, batch_size=32, lr=0.01, lr_classifier_ratio=10.0, momentum=0.9,
                         weight_decay=1e-4, lr_step_epochs=3, lr_gamma=0.1,
                         resize_size=256, crop_size=224, flip=True)

#: Small CPU preset for the synthetic benchmark (``camkit.data.synthetic``) with the ``"tiny"`` backbone:
#: images are already at their final size (no resize/crop: ``crop_size = resize_size`` = the image size
#: of :data:`camkit.data.synthetic.LEARNABLE`, 48), every layer is new so one lr for all. On the learnable
#: setting (3000 images, ``--data synthetic``) the tiny CAM model learns the object in these 12 epochs.
#: ``camkit train`` uses it by default when ``--data`` is synthetic.
SYNTHETIC_CPU_PRESET: Dict[str, Any] = dict(
    epochs=12, batch_size=32, lr=0.05, lr_classifier_ratio=1.0, lr_step_epochs=9, lr_gamma=0.1,
    resize_size=48, crop_size=48, flip=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    num_workers=0, eval_every=2, log_every=20,
)

#: Bae et al. (ECCV 2020)'s VGG16-GAP + TAP training, from the authors' released code: SGD, Nesterov,
#: momentum 0.9, weight decay 5e-4, batch 40, new layers at lr 0.003 and pretrained ones at 0.1x
#: (``lr = 3e-4``, ``lr_classifier_ratio = 10``), lr x0.1 at epochs 60/120/180 of 200. Use it with the
#: model option ``pool="tap"`` (``camkit train cam --pool tap --preset rethinking-vgg16-tap``).
RETHINKING_VGG16_TAP_PRESET: Dict[str, Any] = dict(
    epochs=200, batch_size=40, lr=3e-4, lr_classifier_ratio=10.0, momentum=0.9, nesterov=True,
    weight_decay=5e-4, lr_gamma=0.1, lr_milestones=(60, 120, 180), resize_size=256, crop_size=224,
)

register_recipe(Recipe(
    name="cam",
    build_model=_build_backbone_model,
    loss=classification_loss,
    config=CAM_CONFIG,
    presets={"synthetic-cpu": SYNTHETIC_CPU_PRESET, "rethinking-vgg16-tap": RETHINKING_VGG16_TAP_PRESET},
    description="Vanilla CAM (Zhou et al. 2016): GAP + linear classifier trained with cross-entropy; "
                "model option pool='tap' for thresholded average pooling (Bae et al. 2020).",
))
