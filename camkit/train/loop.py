"""ONE training loop for every recipe; the same code runs on 1 process and under ``torchrun``.

:func:`train` builds the recipe's model, optimizer and data pipeline, then runs epochs of
``output = recipe.forward(model, batch)``, ``loss = recipe.loss(output, batch, state)``,
``backward``, ``step``. Features:

- **Epochs**: every epoch is a permutation of the training set (seeded ``seed + epoch``) cut into
  global batches of ``config.batch_size`` samples; the last one is shorter when the batch size does
  not divide the set. Every sample is trained once per epoch, none is repeated or dropped.
- **Distributed**: under ``torchrun --nproc_per_node=N`` it joins the process group (``gloo`` on CPU,
  ``nccl`` on GPU), wraps the model in ``DistributedDataParallel`` and splits every global batch into
  N contiguous shares (sizes differ by at most one; in a short last batch a process may get none, and
  still runs its forward and backward on an empty batch, so it takes part in every all-reduce with a
  zero gradient). Losses divide their sum over the local batch by the global batch size / N
  (:mod:`camkit.train.losses`), so DDP's gradient average is the single-process gradient. Hence N
  processes take the optimizer steps of 1 process, on the same samples, for any batch size and data
  set size; the logged losses are global-batch means, the same on every process. Equal up to
  floating-point summation order (the distributed test holds parameters to ``1e-6`` relative):
  models without BatchNorm, and CI-CAM's context pool (its update sums over the processes).
  NOT equal: BatchNorm (batch statistics are per process; DDP re-broadcasts rank 0's running
  statistics before every forward), dropout and other randomness in the model (the torch RNG is
  seeded per process), and custom losses that take the plain mean of their local batch. Only rank 0
  writes files.
- **Determinism**: the model is initialised from ``config.seed``; every sample's augmentation comes
  from a generator seeded with ``(seed, epoch, index)``; the global torch RNG (dropout, ...) is
  reseeded before every step from ``(seed, rank, global_step)``. Hence a run resumed from any
  checkpoint continues bit-identically (on the same hardware and thread settings) without saving RNG
  states.
- **Checkpoints**: ``OUT/checkpoint.pt``, written atomically (:mod:`camkit.train.checkpoint`) at the
  end of every epoch, every ``checkpoint_every_steps`` steps, and when ``max_steps`` stops training.
  ``resume=True`` continues from it, mid-epoch included (the epoch's permutation is replayed from the
  saved position). Resuming continues the SAME run or refuses with :class:`CheckpointError` naming the
  differing field: recipe, backbone, ``num_classes``, ``model_options``, the training set's length and
  the config fields of :data:`~camkit.train.checkpoint.RESUME_MUST_MATCH` (batch size, seed,
  augmentation, optimizer and schedule) must match; ``epochs``, ``max_steps``, ``amp`` and the
  bookkeeping fields (:data:`~camkit.train.checkpoint.RESUME_MAY_CHANGE`) and the number of
  processes may change. A recipe's ``prepare_model_options`` runs before that check and may complete
  the model options (``kd-student`` adds each teacher file's sha256) or refuse (a changed teacher).
- **Logs**: JSON lines in ``OUT/metrics.jsonl`` (``{"event": "train" | "eval" | "epoch", ...}``) and a
  tqdm progress bar on rank 0. A resumed run first drops the records written after its checkpoint
  (a crash between a log line and the next checkpoint), so every step and epoch appears once; a fresh
  run (no checkpoint, or ``resume=False``) starts an empty log.
- **Evaluation**: classification top-1 on ``eval_set`` every ``eval_every`` epochs (sharded over
  processes, counts summed with ``all_reduce``), plus an optional ``evaluate_fn(model, eval_set) ->
  dict`` for localisation metrics.
- **AMP** (float16 autocast + GradScaler) on CUDA when ``config.amp``; never on CPU.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import torch
from torch import nn

from camkit.distributed import all_reduce_sum, barrier, setup_distributed, world
from camkit.train.checkpoint import (
    CHECKPOINT_NAME, RESUME_MUST_MATCH, START_FRESH, CheckpointError, check_resumable, load_checkpoint,
    remove_stale_temporaries, save_checkpoint,
)
from camkit.train.recipes import Recipe, StepState, TrainConfig, default_forward, default_logits, get_recipe
from camkit.train.transforms import EvalTransform, TrainTransform, TransformedDataset

__all__ = ["train", "TrainResult", "evaluate_top1", "build_optimizer", "lr_factor", "METRICS_NAME"]

METRICS_NAME = "metrics.jsonl"


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


class _GlobalBatchSampler(torch.utils.data.Sampler):
    """This process's share of every global batch of an epoch, as lists of dataset indices.

    An epoch is ``torch.randperm(num_samples)`` (generator seeded ``seed + epoch``) cut into global
    batches of ``batch_size`` samples, the last one shorter when ``batch_size`` does not divide
    ``num_samples``; no sample is repeated or dropped. Each global batch is split into ``world_size``
    contiguous shares (``torch.tensor_split``: sizes differ by at most one, a share may be empty). The
    permutation and the cut do not depend on ``world_size``, so N processes take the steps of one.

    A ``DataLoader`` cannot load zero samples: an empty share loads the global batch's first sample,
    which the loop cuts away (``batch[:0]``) using :attr:`share_sizes`.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int):
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.steps_per_epoch = -(-self.num_samples // self.batch_size)
        self.global_batches: List[torch.Tensor] = []
        self.shares: List[torch.Tensor] = []

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        """Plan ``epoch``, leaving out its first ``skip_steps`` global batches (a resumed epoch)."""
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + int(epoch)))
        self.global_batches = list(order.split(self.batch_size))[skip_steps:]
        self.shares = [torch.tensor_split(batch, self.world_size)[self.rank] for batch in self.global_batches]

    @property
    def share_sizes(self) -> List[int]:
        """Samples this process really trains on in each remaining step of the epoch."""
        return [len(share) for share in self.shares]

    @property
    def global_sizes(self) -> List[int]:
        """Samples of each remaining global batch (all processes together)."""
        return [len(batch) for batch in self.global_batches]

    def __iter__(self) -> Iterator[List[int]]:
        for share, batch in zip(self.shares, self.global_batches):
            yield (share if len(share) else batch[:1]).tolist()

    def __len__(self) -> int:
        return len(self.shares)


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


def _run_identity(recipe: Recipe, backbone: str, num_classes: int, model_options: Dict[str, Any],
                  num_samples: int, config: TrainConfig) -> Dict[str, Any]:
    """What a checkpoint must share with this run to be resumed (see :func:`check_resumable`)."""
    return {"recipe": recipe.name, "backbone": backbone, "num_classes": int(num_classes),
            "model_options": model_options, "num_samples": int(num_samples),
            **{name: getattr(config, name) for name in RESUME_MUST_MATCH}}


def _load_for_resume(path: Path, device: torch.device) -> Dict[str, Any]:
    """The checkpoint at ``path`` (checked with :func:`check_resumable` by the caller); every failure
    names the way out."""
    try:
        return load_checkpoint(path, map_location=device)
    except CheckpointError as error:
        raise CheckpointError(f"cannot resume: {error}; {START_FRESH}") from error


def _restore(payload: Dict[str, Any], path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: Optional[torch.amp.GradScaler]) -> None:
    """Load the model, optimizer and scaler states of a checked checkpoint (``CheckpointError`` if they
    do not fit, e.g. a custom recipe whose model changed since the checkpoint was written)."""
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        detail = " ".join(str(error).split())[:400]
        raise CheckpointError(f"checkpoint {path} does not fit this run's model or optimizer ({detail}); "
                              f"{START_FRESH}") from error
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])


def _truncate_log(path: Path, last_global_step: int) -> None:
    """Drop the records of ``path`` after ``last_global_step`` (and a half-written last line).

    Records are appended in step order, so the file is cut at the first record past the checkpoint:
    the resumed run logs those steps again, once.
    """
    if not path.exists():
        return
    keep = 0
    with open(path, "rb") as handle:
        for line in handle:
            try:
                if json.loads(line)["global_step"] > last_global_step:
                    break
            except (ValueError, KeyError, TypeError):
                break
            keep += len(line)
    with open(path, "r+b") as handle:
        handle.truncate(keep)


def _open_log(out: Path, resumed_global_step: Optional[int]):
    """``OUT/metrics.jsonl`` for appending: cut after the resumed step, or emptied for a fresh run."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out / CHECKPOINT_NAME)
    path = out / METRICS_NAME
    if resumed_global_step is None:
        return open(path, "w")
    _truncate_log(path, resumed_global_step)
    return open(path, "a")


def _global_terms(terms: Dict[str, Any], device: torch.device, world_size: int) -> Dict[str, float]:
    """Each loss term over the global batch: the sum over processes of the local terms / world_size.

    Every local term is a sum over the local batch divided by ``state.normalizer`` (global batch
    size / world size), so this is the global batch mean, the same on every process and equal to
    the single-process value.
    """
    local = torch.stack([torch.as_tensor(v).detach().to(device=device, dtype=torch.float64).reshape(())
                         for v in terms.values()])
    total = all_reduce_sum(local) / world_size
    return dict(zip(terms, total.tolist()))


def train(recipe: Union[str, Recipe], train_set, *, backbone: str, num_classes: int,
          out_dir: Optional[Union[str, Path]] = None, config: Optional[TrainConfig] = None,
          eval_set=None, pretrained=None, model_options: Optional[Dict[str, Any]] = None,
          resume: bool = True, device: Optional[Union[str, torch.device]] = None,
          evaluate_fn: Optional[Callable[[nn.Module, Any], Dict[str, float]]] = None) -> TrainResult:
    """Train ``recipe`` on ``train_set``; see the module docstring for what the loop does.

    Args:
        recipe: a registered recipe name or a :class:`Recipe`.
        train_set: a non-empty dataset whose items are dicts with ``image`` (PIL, array or
            ``(3, H, W)`` tensor) and ``label``, or tuples ``(image, label, ...)``.
        backbone, num_classes, pretrained, model_options: passed to ``recipe.build_model``.
        out_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go (rank 0 only); ``None`` writes nothing
            and cannot resume.
        config: defaults to ``recipe.config``.
        eval_set: evaluated every ``config.eval_every`` epochs and at the end (top-1, plus
            ``evaluate_fn(model, eval_set)`` when given).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists; it must come from the same run
            (:func:`camkit.train.checkpoint.check_resumable`). ``False`` starts fresh: the next
            checkpoint replaces the old one and ``metrics.jsonl`` starts empty.
        device: defaults to ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.

    Returns:
        :class:`TrainResult` with the trained model in eval mode.

    Bad arguments, and a checkpoint that cannot be resumed, raise before any file is written.
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a registered name or a camkit.train.Recipe, got {type(recipe).__name__}")
    config = recipe.config if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a camkit.train.TrainConfig (e.g. recipe.make_config(preset, **changes)), "
                        f"got {type(config).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1 (the number of classes of the data), "
                         f"got {num_classes!r}")
    num_samples = len(train_set)
    if num_samples == 0:
        raise ValueError("the training set is empty; give train() a dataset with at least one sample")
    model_options = dict(model_options or {})
    ctx = setup_distributed(torch.device(device) if device is not None else None)
    out = Path(out_dir) if out_dir is not None else None
    checkpoint_path = out / CHECKPOINT_NAME if out is not None else None
    saved = None
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        saved = _load_for_resume(checkpoint_path, ctx.device)
    if recipe.prepare_model_options is not None:
        saved_options = dict(saved["model_spec"].get("model_options") or {}) if saved is not None else None
        model_options = dict(recipe.prepare_model_options(model_options, saved_options))
    if saved is not None:
        run = _run_identity(recipe, backbone, num_classes, model_options, num_samples, config)
        check_resumable(saved, run, checkpoint_path)

    torch.manual_seed(config.seed)
    model = recipe.build_model(backbone, num_classes=num_classes, pretrained=pretrained, **model_options)
    model.to(ctx.device)
    optimizer = build_optimizer(recipe, model, config)
    use_amp = bool(config.amp and ctx.device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    epoch, start_step, global_step = 0, 0, 0
    if saved is not None:
        _restore(saved, checkpoint_path, model, optimizer, scaler)
        epoch, start_step, global_step = int(saved["epoch"]), int(saved["step_in_epoch"]), int(saved["global_step"])

    train_model: nn.Module = model
    if ctx.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    view = TransformedDataset(train_set, TrainTransform(config.resize_size, config.crop_size, config.flip,
                                                        config.mean, config.std), seed=config.seed)
    sampler = _GlobalBatchSampler(num_samples, config.batch_size, ctx.rank, ctx.world_size, config.seed)
    loader = torch.utils.data.DataLoader(view, batch_sampler=sampler, num_workers=config.num_workers,
                                         pin_memory=ctx.device.type == "cuda")
    steps_per_epoch = sampler.steps_per_epoch
    eval_transform = EvalTransform(config.crop_size, config.mean, config.std)
    eval_batch = max(1, -(-config.batch_size // ctx.world_size))
    history: List[Dict[str, Any]] = []
    log_file = None
    if ctx.is_main and out is not None:
        log_file = _open_log(out, global_step if saved is not None else None)

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
            "config": config.to_dict(), "world_size": ctx.world_size, "num_samples": num_samples,
        }, checkpoint_path)

    def evaluate(at_epoch: int) -> None:
        if eval_set is None:
            return
        result = evaluate_top1(model, eval_set, recipe.logits, eval_transform, batch_size=eval_batch,
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
            sampler.set_epoch(epoch, skip_steps=start_step)
            model.train()
            window: Dict[str, List[float]] = {}
            bar = None
            if ctx.is_main and config.progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"{recipe.name} epoch {epoch + 1}/"
                           f"{config.epochs}", leave=False, dynamic_ncols=True)
            step = start_step
            for batch, share, global_size in zip(loader, sampler.share_sizes, sampler.global_sizes):
                torch.manual_seed((config.seed * 1_000_003 + ctx.rank) * 1_000_000_007 % (2 ** 62)
                                  + global_step)
                batch = _to_device({k: v[:share] for k, v in batch.items()}, ctx.device)
                state = StepState(epoch=epoch, step=step, global_step=global_step, model=model, config=config,
                                  normalizer=global_size / ctx.world_size)
                with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=use_amp):
                    output = recipe.forward(train_model, batch)
                    result = recipe.loss(output, batch, state)
                terms = result if isinstance(result, dict) else {"loss": result}
                values = _global_terms(terms, ctx.device, ctx.world_size)
                if not math.isfinite(values["loss"]):
                    raise FloatingPointError(_non_finite_message(values["loss"], epoch, step,
                                                                 global_size < ctx.world_size))
                loss = terms["loss"]
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
                for name, value in values.items():
                    window.setdefault(name, []).append(value)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{window['loss'][-1]:.4f}")
                stopped = config.max_steps is not None and global_step >= config.max_steps
                if config.log_every and (step % config.log_every == 0 or step == steps_per_epoch or stopped):
                    log({"event": "train", "epoch": epoch, "step": step, "global_step": global_step,
                         "lr": optimizer.param_groups[0]["lr"],
                         **{k: sum(v) / len(v) for k, v in window.items()}})
                    window = {}
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


def _non_finite_message(value: float, epoch: int, step: int, a_process_is_empty: bool) -> str:
    message = (f"non-finite loss {value} at epoch {epoch}, step {step}; lower the learning rate or check "
               "the data")
    if a_process_is_empty:
        message += ("; a process has no sample in this step: a custom recipe loss must divide "
                    "its sum over the batch by state.normalizer (camkit.train.losses.batch_mean), not take "
                    "the plain mean, which is NaN on an empty batch")
    return message
