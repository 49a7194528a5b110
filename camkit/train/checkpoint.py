"""Atomic training checkpoints and rebuilding a trained model from one.

Checkpoint format (a ``torch.save`` dict, loadable with ``weights_only=True``)::

    {
      "format": "camkit-checkpoint", "version": 1,
      "model": state_dict of the unwrapped model,
      "model_spec": {"recipe": str, "recipe_module": str, "backbone": str, "num_classes": int,
                     "model_options": dict},
      "optimizer": optimizer.state_dict(), "scaler": GradScaler state or None,
      "epoch": int, "step_in_epoch": int, "global_step": int,   # where training resumes
      "config": TrainConfig as a dict, "world_size": int,
      "num_samples": int,                                        # length of the training set
      "complete": True,                                          # written last
    }

Writes are atomic: the dict is saved to a temporary file ``.NAME.XXXXXXXX.tmp`` (``XXXXXXXX``: 8
characters of ``[a-z0-9_]``) in the same directory, flushed and fsynced, then renamed over the target
with ``os.replace``. A crash leaves either the previous checkpoint or the new one, never a half-written
file under the final name; a process killed mid-write (``kill -9``) leaves its temporary file, which
the next save (or resume) deletes (:func:`remove_stale_temporaries`). A file that is truncated or
corrupted anyway (copied half-way, disk full) fails :func:`load_checkpoint` with :class:`CheckpointError`.

Resuming (:func:`check_resumable`) continues the SAME run, exactly, or refuses: the fields in
:data:`RESUME_RUN_FIELDS` and :data:`RESUME_MUST_MATCH` must equal the checkpoint's, those in
:data:`RESUME_MAY_CHANGE` may differ. The number of processes may change too: the loop's global
batches do not depend on it.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_checkpoint_model", "rebuild_model",
           "remove_stale_temporaries", "check_resumable", "CHECKPOINT_NAME", "RESUME_RUN_FIELDS",
           "RESUME_MUST_MATCH", "RESUME_MAY_CHANGE", "START_FRESH"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "camkit-checkpoint"

#: How to get past a checkpoint that cannot be resumed; every resume error ends with it.
START_FRESH = "start fresh with resume=False / --no-resume / another --out"

#: What the run trains: the model (``model_spec``) and the length of the training set.
RESUME_RUN_FIELDS: Tuple[str, ...] = ("recipe", "backbone", "num_classes", "model_options", "num_samples")

#: ``TrainConfig`` fields a resumed run must share with its checkpoint. ``batch_size`` and ``seed`` fix
#: the order of the samples (another value re-cuts or re-shuffles the epoch that is half done, so
#: samples would be skipped or seen twice); ``resize_size`` ... ``std`` the augmentation;
#: ``optimizer`` ... ``nesterov`` are also stored in the optimizer state, which would silently override
#: new values (or fail: SGD state has no Adam ``step``); the schedule fields set the lr of the steps
#: still to take.
RESUME_MUST_MATCH: Tuple[str, ...] = (
    "batch_size", "seed", "resize_size", "crop_size", "flip", "mean", "std",
    "optimizer", "lr", "lr_classifier_ratio", "momentum", "weight_decay", "nesterov",
    "lr_schedule", "lr_step_epochs", "lr_gamma", "lr_milestones", "lr_power",
)

#: ``TrainConfig`` fields a resumed run may change: where to stop (``epochs`` extends a run; note that
#: under ``lr_schedule="poly"`` the horizon ``epochs`` also sets the remaining steps' lr), the device
#: numerics (``amp``, used on CUDA only) and bookkeeping.
RESUME_MAY_CHANGE: Tuple[str, ...] = (
    "epochs", "max_steps", "amp", "num_workers", "eval_every", "checkpoint_every_steps", "log_every",
    "progress",
)

#: Keys :func:`check_resumable` needs besides those :func:`load_checkpoint` checks.
_RESUME_KEYS = ("optimizer", "epoch", "step_in_epoch", "global_step", "config", "num_samples")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, incomplete, corrupted or not a camkit checkpoint."""


def save_checkpoint(payload: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Atomically write ``payload`` (plus the format markers) to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(payload, format=FORMAT, version=1)
    payload.pop("complete", None)
    payload["complete"] = True
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def remove_stale_temporaries(path: Union[str, Path]) -> List[Path]:
    """Delete the temporary files a killed :func:`save_checkpoint` left beside ``path``; returns them.

    Only camkit's own pattern ``.NAME.XXXXXXXX.tmp`` (``NAME`` = ``path``'s name) is touched. A save
    in progress in another process would lose its temporary file: one run writes one checkpoint.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}" + re.escape(".tmp"))
    stale = [entry for entry in path.parent.iterdir() if pattern.fullmatch(entry.name) and entry.is_file()]
    for entry in stale:
        entry.unlink(missing_ok=True)
    return stale


def _comparable(value: Any) -> Any:
    """Lists as tuples, recursively (a checkpoint or a command line may hold either)."""
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def _saved_run(payload: Dict[str, Any]) -> Dict[str, Any]:
    spec = payload["model_spec"]
    run = {"recipe": spec.get("recipe"), "backbone": spec.get("backbone"), "num_classes": spec.get("num_classes"),
           "model_options": dict(spec.get("model_options") or {}), "num_samples": payload["num_samples"]}
    run.update({name: payload["config"].get(name) for name in RESUME_MUST_MATCH})
    return run


def check_resumable(payload: Dict[str, Any], run: Dict[str, Any], path: Union[str, Path]) -> None:
    """Refuse to resume ``payload`` (from :func:`load_checkpoint`) into another run than its own.

    ``run`` holds this run's :data:`RESUME_RUN_FIELDS` and its config's :data:`RESUME_MUST_MATCH`
    fields. Raises :class:`CheckpointError` naming ``path`` and every differing field with both values,
    or the keys a resumable checkpoint lacks.
    """
    missing = [key for key in _RESUME_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing} (written by an older camkit or another "
                              f"tool?), so it cannot be resumed exactly; {START_FRESH}")
    saved = _saved_run(payload)
    differing = [name for name in RESUME_RUN_FIELDS + RESUME_MUST_MATCH
                 if _comparable(saved[name]) != _comparable(run[name])]
    if differing:
        was = ", ".join(f"{name}={saved[name]!r}" for name in differing)
        now = ", ".join(f"{name}={run[name]!r}" for name in differing)
        values = "value" if len(differing) == 1 else "values"
        raise CheckpointError(f"checkpoint {path} was written with {was}, this run has {now}; resume with "
                              f"the same {values} or {START_FRESH}")


def _first_sentence(error: BaseException) -> str:
    """The first sentence of ``error``'s message (torch's load errors go on with advice that does not
    apply to a damaged file, such as retrying with ``weights_only=False``)."""
    text = " ".join(str(error).split())
    return text.split(". ")[0][:200]


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` when the file is missing, truncated/corrupted, or not complete.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, bad pickle, ...
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted?): "
                              f"{_first_sentence(error)}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a camkit checkpoint (no format={FORMAT!r} marker)")
    if payload.get("complete") is not True or "model" not in payload or "model_spec" not in payload:
        raise CheckpointError(f"{path} is incomplete (missing 'complete', 'model' or 'model_spec')")
    return payload


def load_checkpoint_model(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the trained model stored in a camkit checkpoint, in ``eval()`` mode.

    ``path`` is a checkpoint file or a training output directory (then ``DIR/checkpoint.pt``). The
    model is rebuilt with its recipe's ``build_model(backbone, num_classes, pretrained=None,
    **model_options)`` (importing ``model_spec["recipe_module"]`` so recipes defined outside camkit's
    built-ins register; a recipe's ``build_inference_model`` replaces ``build_model``, see
    :func:`rebuild_model`) and the saved weights are loaded strictly. See the module docstring for the
    checkpoint format.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    return rebuild_model(load_checkpoint(path, map_location=map_location), map_location)


def rebuild_model(payload: Dict[str, Any], map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """The model of a loaded checkpoint (:func:`load_checkpoint`), in ``eval()`` mode; see
    :func:`load_checkpoint_model`. A recipe's ``build_inference_model``, when it has one, replaces its
    ``build_model`` here (the ``kd-student`` recipe: the student without its teachers)."""
    from camkit.train.recipes import get_recipe

    spec = payload["model_spec"]
    recipe = get_recipe(spec["recipe"], module=spec.get("recipe_module"))
    build = recipe.build_inference_model or recipe.build_model
    model = build(spec["backbone"], num_classes=int(spec["num_classes"]), pretrained=None,
                  **dict(spec.get("model_options") or {}))
    model.load_state_dict(payload["model"], strict=True)
    return model.to(map_location).eval()
