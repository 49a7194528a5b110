"""camkit.train: one training loop for every recipe (CAM, CI-CAM, ...), DDP-ready under ``torchrun``.

A recipe is a model, a loss and a config registered by name (:mod:`camkit.train.recipes`);
:func:`train` runs any of them (:mod:`camkit.train.loop`).
"""
from camkit.train.recipes import (  # noqa: F401
    CAM_CONFIG, SYNTHETIC_CPU_PRESET, Recipe, StepState, TrainConfig, get_recipe, list_recipes,
    pretrained_and_new_groups, register_recipe,
)
from camkit.train.losses import classification_loss  # noqa: F401
from camkit.train.checkpoint import (  # noqa: F401
    CheckpointError, load_checkpoint, load_checkpoint_model, save_checkpoint,
)
from camkit.train.loop import TrainResult, evaluate_top1, train  # noqa: F401
from camkit.train.transforms import EvalTransform, TrainTransform  # noqa: F401
from camkit.evaluation import localization_evaluator  # noqa: F401  (the training loop's evaluate_fn)
