"""``camkit train RECIPE --data ... --backbone ... --out DIR``: argument parsing and the run.

``camkit.cli`` wires the subcommand to :func:`add_arguments` and :func:`run`. Under
``torchrun --nproc_per_node=N -m camkit.cli train ...`` (or ``torchrun $(which camkit) train ...``) the
same command trains with DistributedDataParallel.

``--data`` is either a wsolevaluation-format dataset root (read with ``camkit.data.wsol``) or
``synthetic`` / ``synthetic:key=value,...`` for the procedural benchmark
(:func:`camkit.data.synthetic.make_synthetic` arguments, e.g.
``synthetic:num_images=2000,habitat_p=0.8,image_size=96``). ``--eval-data`` takes the same forms; for
synthetic training data it defaults to a uniform-context split with another seed, and the periodic
evaluation then adds CAM localisation (MaxBoxAccV2, PxAP via :mod:`camkit.train.evaluation`).
"""
from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["add_arguments", "run", "parse_key_values", "load_data"]


def parse_key_values(items: Optional[List[str]]) -> Dict[str, Any]:
    """``["a=1", "b=x,y"]`` -> ``{"a": 1, "b": ("x", "y")}``; values are Python literals when they parse."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _literal(value.strip())
    return out


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if "," in text:
            return tuple(_literal(t) for t in text.split(","))
        return text


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand's arguments to ``parser``; returns it."""
    parser.add_argument("recipe", help="registered recipe name, e.g. 'cam' or 'cicam'")
    parser.add_argument("--data", required=True,
                        help="wsolevaluation dataset root, or 'synthetic[:key=value,...]'")
    parser.add_argument("--eval-data", default=None, help="evaluation data, same forms as --data")
    parser.add_argument("--metadata", default=None,
                        help="wsolevaluation metadata folder for --data (default DATA/metadata/train)")
    parser.add_argument("--backbone", required=True, help="backbone name (camkit.models.list_backbones())")
    parser.add_argument("--out", required=True, help="output directory (checkpoint.pt, metrics.jsonl)")
    parser.add_argument("--num-classes", type=int, default=None, help="default: from the data")
    parser.add_argument("--pretrained", default=None,
                        help="path to a state dict, or 'torchvision' for torchvision's local cache")
    parser.add_argument("--preset", default=None, help="recipe preset, e.g. 'synthetic-cpu'")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers per process")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", metavar="FIELD=VALUE",
                        help="override any TrainConfig field (repeatable), e.g. --set lr_step_epochs=5")
    parser.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
                        help="keyword argument for the recipe's build_model (repeatable)")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing OUT/checkpoint.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def load_data(spec: str, metadata: Optional[str] = None, *, eval_split: bool = False,
              image_size: int = 224):
    """A dataset from a ``--data`` spec; returns ``(dataset, num_classes)``.

    wsolevaluation datasets are read with images resized to ``image_size`` and left in [0, 1]
    (mean 0, std 1): the training loop's transforms crop, flip and normalise them.
    """
    if spec == "synthetic" or spec.startswith("synthetic:"):
        from camkit.data.synthetic import make_synthetic
        options = parse_key_values([s for s in spec.partition(":")[2].split(",") if s]) if ":" in spec else {}
        if eval_split:
            options.setdefault("context", "uniform")
            options["seed"] = options.get("seed", 0) + 1
            options["num_images"] = min(options.get("num_images", 1000), 1000)
        dataset = make_synthetic(**options)
        return dataset, dataset.num_classes
    root = Path(spec)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {spec!r} is neither 'synthetic[:...]' nor an existing directory")
    try:
        from camkit.data import wsol
    except ImportError as error:
        raise RuntimeError("reading wsolevaluation datasets needs camkit.data.wsol, which is not available "
                           f"in this installation ({error})") from error
    split = "test" if eval_split else "train"
    meta = Path(metadata) if metadata else root / "metadata" / split
    unnormalised = wsol.WSOLEvalTransform(size=image_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    dataset = wsol.WSOLDataset(root, meta, transform=unnormalised)
    labels = dataset.labels.values() if isinstance(dataset.labels, dict) else dataset.labels
    return dataset, int(max(int(l) for l in labels)) + 1


def run(args: argparse.Namespace) -> int:
    """Run ``camkit train`` with parsed ``args``; returns the process exit code."""
    from camkit.train.loop import train
    from camkit.train.recipes import get_recipe

    recipe = get_recipe(args.recipe)
    overrides = parse_key_values(getattr(args, "overrides", None))
    for name, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                        ("num_workers", args.workers), ("seed", args.seed)):
        if value is not None:
            overrides[name] = value
    if args.no_progress:
        overrides["progress"] = False
    config = recipe.make_config(args.preset, **overrides)
    train_set, num_classes = load_data(args.data, args.metadata, image_size=config.resize_size)
    eval_set = None
    if args.eval_data:
        eval_set, _ = load_data(args.eval_data, eval_split=True, image_size=config.crop_size)
    elif args.data.startswith("synthetic"):
        eval_set, _ = load_data(args.data, eval_split=True)
    evaluate_fn = None
    if eval_set is not None and (hasattr(eval_set, "masks") or hasattr(eval_set, "gt_boxes")):
        # boxes/masks available (synthetic or wsolevaluation data): CAM localisation in the evaluation
        from camkit.evaluation import localization_evaluator
        from camkit.train.transforms import EvalTransform
        evaluate_fn = localization_evaluator(("cam",), transform=EvalTransform(config.crop_size, config.mean,
                                                                                config.std),
                                             max_images=500, output=recipe.logits)
    pretrained: Any = args.pretrained
    if pretrained == "torchvision":
        pretrained = True
    result = train(recipe, train_set, backbone=args.backbone, num_classes=args.num_classes or num_classes,
                   out_dir=args.out, config=config, eval_set=eval_set, pretrained=pretrained,
                   model_options=parse_key_values(args.model_options), resume=not args.no_resume,
                   device=args.device, evaluate_fn=evaluate_fn)
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        evals = [h for h in result.history if h.get("event") == "eval"]
        summary = {"checkpoint": str(result.checkpoint), **({"last_eval": evals[-1]} if evals else {})}
        print(json.dumps(summary))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


def main(argv: Optional[List[str]] = None) -> int:  # python -m camkit.train.command ...
    parser = add_arguments(argparse.ArgumentParser(prog="camkit train"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
