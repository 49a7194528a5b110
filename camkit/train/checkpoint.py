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
      "complete": True,                                          # written last
    }

Writes are atomic: the dict is saved to a temporary file in the same directory, flushed and fsynced,
then renamed over the target with ``os.replace``. A crash leaves either the previous checkpoint or
the new one, never a half-written file under the final name. A file that is truncated or corrupted
anyway (copied half-way, disk full) fails :func:`load_checkpoint` with :class:`CheckpointError`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import torch
from torch import nn

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_checkpoint_model",
           "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "camkit-checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, incomplete, corrupted or not a camkit checkpoint."""


def save_checkpoint(payload: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Atomically write ``payload`` (plus the format markers) to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(payload, format=FORMAT, version=1)
    payload.pop("complete", None)
    payload["complete"] = True
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
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupted?): {error}") from error
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
    built-ins register) and the saved weights are loaded strictly. See the module docstring for the
    checkpoint format.
    """
    from camkit.train.recipes import get_recipe

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    payload = load_checkpoint(path, map_location=map_location)
    spec = payload["model_spec"]
    recipe = get_recipe(spec["recipe"], module=spec.get("recipe_module"))
    model = recipe.build_model(spec["backbone"], num_classes=int(spec["num_classes"]), pretrained=None,
                               **dict(spec.get("model_options") or {}))
    model.load_state_dict(payload["model"], strict=True)
    return model.to(map_location).eval()
