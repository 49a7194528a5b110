"""ONE training loop for every recipe; the same code runs on 1 process and under ``torchrun``.

:func:`train` builds the recipe's model, optimizer and data pipeline, then runs epochs of
``output = recipe.forward(model, batch)``, ``loss = recipe.loss(output, batch, state)``,
``backward``, ``step``. Features:

- **Distributed**: under ``torchrun --nproc_per_node=N`` it joins the process group (``gloo`` on CPU,
  ``nccl`` on GPU), wraps the model in ``DistributedDataParallel`` and shards each epoch's permutation
  with ``DistributedSampler``. ``config.batch_size`` is the global batch, so N processes take the same
  optimizer steps as 1 process (exactly, for models without BatchNorm; BatchNorm statistics are per
  process). Only rank 0 writes files.
- **Determinism**: the model is initialised from ``config.seed``; every sample's augmentation comes
  from a generator seeded with ``(seed, epoch, index)``; the global torch RNG (dropout, ...) is
  reseeded before every step from ``(seed, rank, global_step)``. Hence a run resumed from any
  checkpoint continues bit-identically (on the same hardware and thread settings) without saving RNG
  states.
- **Checkpoints**: ``OUT/checkpoint.pt``, written atomically (:mod:`camkit.train.checkpoint`) at the
  end of every epoch, every ``checkpoint_every_steps`` steps, and when ``max_steps`` stops training.
  ``resume=True`` continues from it, mid-epoch included (the epoch's permutation is replayed from the
  saved position).
- **Logs**: JSON lines in ``OUT/metrics.jsonl`` (``{"event": "train" | "eval" | "epoch", ...}``) and a
  tqdm progress bar on rank 0.
- **Evaluation**: classification top-1 on ``eval_set`` every ``eval_every`` epochs (sharded over
  processes, counts summed with ``all_reduce``), plus an optional ``evaluate_fn(model, eval_set) ->
  dict`` for localisation metrics.
- **AMP** (float16 autocast + GradScaler) on CUDA when ``config.amp``; never on CPU.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import torch
from torch import nn

from camkit.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from camkit.distributed import DistributedContext, all_reduce_sum, barrier, setup_distributed, world
from camkit.train.recipes import Recipe, StepState, TrainConfig, get_recipe
from camkit.train.transforms import EvalTransform, TrainTransform, TransformedDataset

__all__ = ["train", "TrainResult", "evaluate_top1", "build_optimizer", "lr_factor"]


@dataclass
class TrainResult:
    """``model``: the trained, unwrapped model (train mode off); ``history``: the logged records;
    ``checkpoint``: path of the last checkpoint (``None`` without ``out_dir``)."""

    model: nn.Module
    history: List[Dict[str, Any]] = field(default_factory=list)
    checkpoint: Optional[Path] = None


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Multiplier of every group's initial lr during ``epoch`` (0-based)."""
    if config.lr_schedule == "constant":
        return 1.0
    if config.lr_schedule == "poly":
        return max(0.0, 1.0 - epoch / max(1, config.epochs)) ** config.lr_power
    if config.lr_schedule == "step":
        if config.lr_milestones:
            passed = sum(1 for m in config.lr_milestones if epoch >= m)
        else:
            passed = epoch // max(1, config.lr_step_epochs)
        return config.lr_gamma ** passed
    raise ValueError(f"lr_schedule must be 'step', 'poly' or 'constant', got {config.lr_schedule!r}")


def build_optimizer(recipe: Recipe, model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer over ``recipe.param_groups(model, config)``; each group's lr = ``lr * lr_scale``."""
    groups = recipe.param_groups(model, config)
    seen: Dict[int, str] = {}
    optimizer_groups = []
    for i, group in enumerate(groups):
        group = dict(group)
        scale = float(group.pop("lr_scale", 1.0))
        group["lr"] = config.lr * scale
        group["initial_lr"] = group["lr"]
        for p in group["params"]:
            if id(p) in seen:
                raise ValueError(f"recipe {recipe.name!r}: a parameter is in two parameter groups")
            seen[id(p)] = group.get("name", str(i))
        optimizer_groups.append(group)
    trainable = [p for p in model.parameters() if p.requires_grad]
    missing = [p for p in trainable if id(p) not in seen]
    if missing:
        raise ValueError(f"recipe {recipe.name!r}: {len(missing)} trainable parameters are in no parameter "
                         "group; param_groups must cover every trainable parameter")
    if config.optimizer == "sgd":
        return torch.optim.SGD(optimizer_groups, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov)
    if config.optimizer == "adam":
        return torch.optim.Adam(optimizer_groups, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")


class _EpochSampler(torch.utils.data.Sampler):
    """This process's share of the epoch's permutation, optionally skipping the first samples."""

    def __init__(self, length: int, ctx: DistributedContext, seed: int):
        self.inner = torch.utils.data.DistributedSampler(range(length), num_replicas=ctx.world_size,
                                                         rank=ctx.rank, shuffle=True, seed=seed)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.skip:])

    def __len__(self) -> int:
        return len(self.inner) - self.skip


def _to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _scalar(value: Any) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def evaluate_top1(model: nn.Module, dataset, logits_fn: Callable[[Any], torch.Tensor] = None,
                  transform: Callable = None, batch_size: int = 64, device: Optional[torch.device] = None,
                  forward: Callable = None, num_workers: int = 0) -> Dict[str, float]:
    """Classification top-1 of ``model`` on ``dataset`` (``{"top1", "correct", "total"}``).

    Under torch.distributed each process takes every world_size-th sample and the counts are summed.
    ``transform`` defaults to :class:`EvalTransform` at 224; ``forward(model, batch)`` and
    ``logits_fn(output)`` default to the CAM recipe's.
    """
    from camkit.train.recipes import default_forward, default_logits

    forward = forward or default_forward
    logits_fn = logits_fn or default_logits
    device = device or next(model.parameters()).device
    rank, world_size = world()
    view = TransformedDataset(dataset, transform or EvalTransform(224))
    shard = torch.utils.data.Subset(view, list(range(rank, len(view), world_size)))
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in loader:
            batch = _to_device(batch, device)
            predictions = logits_fn(forward(model, batch)).argmax(dim=1)
            counts[0] += (predictions == batch["label"]).sum()
            counts[1] += predictions.numel()
    model.train(was_training)
    counts = all_reduce_sum(counts)
    correct, total = int(counts[0]), int(counts[1])
    return {"top1": correct / max(total, 1), "correct": correct, "total": total}


def train(recipe: Union[str, Recipe], train_set, *, backbone: str, num_classes: int,
          out_dir: Optional[Union[str, Path]] = None, config: Optional[TrainConfig] = None,
          eval_set=None, pretrained=None, model_options: Optional[Dict[str, Any]] = None,
          resume: bool = True, device: Optional[Union[str, torch.device]] = None,
          evaluate_fn: Optional[Callable[[nn.Module, Any], Dict[str, float]]] = None) -> TrainResult:
    """Train ``recipe`` on ``train_set``; see the module docstring for what the loop does.

    Args:
        recipe: a registered recipe name or a :class:`Recipe`.
        train_set: a dataset whose items are dicts with ``image`` (PIL, array or ``(3, H, W)`` tensor)
            and ``label``, or tuples ``(image, label, ...)``.
        backbone, num_classes, pretrained, model_options: passed to ``recipe.build_model``.
        out_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go (rank 0 only); ``None`` writes nothing
            and cannot resume.
        config: defaults to ``recipe.config``.
        eval_set: evaluated every ``config.eval_every`` epochs and at the end (top-1, plus
            ``evaluate_fn(model, eval_set)`` when given).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        device: defaults to ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.

    Returns:
        :class:`TrainResult` with the trained model in eval mode.
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    config = config or recipe.config
    model_options = dict(model_options or {})
    ctx = setup_distributed(torch.device(device) if device is not None else None)
    out = Path(out_dir) if out_dir is not None else None
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch_size {config.batch_size} (global) is not divisible by the number of "
                         f"processes {ctx.world_size}; choose a multiple of {ctx.world_size}")
    local_batch = config.batch_size // ctx.world_size

    torch.manual_seed(config.seed)
    model = recipe.build_model(backbone, num_classes=num_classes, pretrained=pretrained, **model_options)
    model.to(ctx.device)
    optimizer = build_optimizer(recipe, model, config)
    use_amp = bool(config.amp and ctx.device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    epoch, start_step, global_step = 0, 0, 0
    checkpoint_path = out / CHECKPOINT_NAME if out is not None else None
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, map_location=ctx.device)
        if state["model_spec"].get("recipe") != recipe.name or state["model_spec"].get("backbone") != backbone:
            raise CheckpointError(f"{checkpoint_path} was written by recipe {state['model_spec'].get('recipe')!r} "
                                  f"with backbone {state['model_spec'].get('backbone')!r}, not {recipe.name!r}/"
                                  f"{backbone!r}; use another --out directory or resume=False")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, start_step, global_step = int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"])

    train_model: nn.Module = model
    if ctx.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    view = TransformedDataset(train_set, TrainTransform(config.resize_size, config.crop_size, config.flip,
                                                        config.mean, config.std), seed=config.seed)
    sampler = _EpochSampler(len(view), ctx, config.seed)
    loader = torch.utils.data.DataLoader(view, batch_size=local_batch, sampler=sampler, drop_last=True,
                                         num_workers=config.num_workers,
                                         pin_memory=ctx.device.type == "cuda")
    steps_per_epoch = len(sampler.inner) // local_batch
    if steps_per_epoch == 0:
        raise ValueError(f"the training set ({len(view)} samples) is smaller than one batch of "
                         f"{config.batch_size}; lower batch_size")
    eval_transform = EvalTransform(config.crop_size, config.mean, config.std)
    history: List[Dict[str, Any]] = []
    log_file = None
    if ctx.is_main and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        log_file = open(out / "metrics.jsonl", "a")

    def log(record: Dict[str, Any]) -> None:
        record = dict(record, time=round(time.time(), 3))
        history.append(record)
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    def checkpoint(next_epoch: int, next_step: int) -> None:
        if not ctx.is_main or checkpoint_path is None:
            return
        save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "model_spec": {"recipe": recipe.name, "recipe_module": recipe.build_model.__module__,
                           "backbone": backbone, "num_classes": int(num_classes),
                           "model_options": model_options},
            "epoch": next_epoch, "step_in_epoch": next_step, "global_step": global_step,
            "config": config.to_dict(), "world_size": ctx.world_size,
        }, checkpoint_path)

    def evaluate(at_epoch: int) -> None:
        if eval_set is None:
            return
        result = evaluate_top1(model, eval_set, recipe.logits, eval_transform, batch_size=max(local_batch, 1),
                               device=ctx.device, forward=recipe.forward, num_workers=config.num_workers)
        record = {"event": "eval", "epoch": at_epoch, "global_step": global_step, "top1": result["top1"]}
        if evaluate_fn is not None:
            record.update({k: _scalar(v) for k, v in evaluate_fn(model, eval_set).items()})
        log(record)

    stopped = config.max_steps is not None and global_step >= config.max_steps
    try:
        while epoch < config.epochs and not stopped:
            factor = lr_factor(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            view.set_epoch(epoch)
            sampler.set_epoch(epoch, skip=start_step * local_batch)
            model.train()
            window: Dict[str, List[float]] = {}
            bar = None
            if ctx.is_main and config.progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"{recipe.name} epoch {epoch + 1}/"
                           f"{config.epochs}", leave=False, dynamic_ncols=True)
            step = start_step
            for batch in loader:
                if step >= steps_per_epoch:
                    break
                torch.manual_seed((config.seed * 1_000_003 + ctx.rank) * 1_000_000_007 % (2 ** 62)
                                  + global_step)
                batch = _to_device(batch, ctx.device)
                state = StepState(epoch=epoch, step=step, global_step=global_step, model=model, config=config)
                with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=use_amp):
                    output = recipe.forward(train_model, batch)
                    result = recipe.loss(output, batch, state)
                terms = result if isinstance(result, dict) else {"loss": result}
                loss = terms["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise FloatingPointError(f"non-finite loss {float(loss)} at epoch {epoch}, step {step}; "
                                             "lower the learning rate or check the data")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                global_step += 1
                step += 1
                for name, value in terms.items():
                    window.setdefault(name, []).append(_scalar(value))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{window['loss'][-1]:.4f}")
                if config.log_every and (step % config.log_every == 0 or step == steps_per_epoch):
                    log({"event": "train", "epoch": epoch, "step": step, "global_step": global_step,
                         "lr": optimizer.param_groups[0]["lr"],
                         **{k: sum(v) / len(v) for k, v in window.items()}})
                    window = {}
                stopped = config.max_steps is not None and global_step >= config.max_steps
                if stopped:
                    break
                if config.checkpoint_every_steps and global_step % config.checkpoint_every_steps == 0 \
                        and step < steps_per_epoch:
                    checkpoint(epoch, step)
            if bar is not None:
                bar.close()
            if step < steps_per_epoch:  # stopped by max_steps mid-epoch
                checkpoint(epoch, step)
                break
            epoch, start_step = epoch + 1, 0
            log({"event": "epoch", "epoch": epoch, "global_step": global_step})
            if config.eval_every and (epoch % config.eval_every == 0 or epoch == config.epochs):
                evaluate(epoch)
            checkpoint(epoch, 0)
        barrier()
    finally:
        if log_file is not None:
            log_file.close()
    model.eval()
    return TrainResult(model=model, history=history, checkpoint=checkpoint_path)
