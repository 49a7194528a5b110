"""``camkit train RECIPE --data SPEC --backbone NAME --out DIR``: one loop for every recipe, DDP under torchrun.

Under ``torchrun --nproc_per_node=N -m camkit.cli train ...`` (or ``torchrun $(which camkit) train ...``)
the same command trains with DistributedDataParallel. ``--eval-data`` takes the forms of ``--data``;
for synthetic training data it defaults to the synthetic test split (uniform context, another seed),
and the periodic evaluation then adds CAM localisation (MaxBoxAccV2, PxAP through
:func:`camkit.evaluation.localization_evaluator`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from camkit.cli.common import UsageError, add_box_rule_argument, add_data_arguments, add_device_argument, parse_box_rule

HELP = "train a WSOL recipe (CAM, CI-CAM, ...) on a dataset"
DESCRIPTION = "Train a WSOL recipe with camkit's one training loop (progress, JSON-lines logs, exact resume, DDP)."
EPILOG = """\
examples:
  # CAM on the synthetic benchmark (24 classes, 3000 images of 48x48, preset synthetic-cpu).
  # Its evaluation split has uniform context (no class habitat), so its top-1 and localization
  # measure the object itself, not the habitat shortcut. See the README for its accuracy and time.
  camkit train cam --data synthetic --backbone tiny --out runs/cam

  # CI-CAM on CUB (wsolevaluation layout) with ImageNet-pretrained VGG16 weights from a file
  camkit train cicam --data /data/CUB --backbone vgg16 --pretrained vgg16.pth --out runs/cicam

  # CAM with thresholded average pooling (Bae et al. 2020) instead of GAP; FAM (Meng et al. 2021)
  camkit train cam --pool tap --data synthetic --backbone tiny --preset synthetic-cpu --out runs/tap
  camkit train fam --data synthetic --backbone tiny --preset synthetic-cpu --out runs/fam
  # KD-CI-CAM: two teachers, then the student distilled from their checkpoints
  camkit train kd-cls-teacher --data synthetic --backbone tiny --preset synthetic-cpu --out runs/cls
  camkit train kd-loc-teacher --data synthetic --backbone tiny --preset synthetic-cpu --out runs/loc
  camkit train kd-student --cls-teacher runs/cls/checkpoint.pt --loc-teacher runs/loc/checkpoint.pt \\
      --data synthetic --backbone tiny --preset synthetic-cpu --out runs/student

  # two processes with DistributedDataParallel (gloo on CPU, nccl on GPU)
  torchrun --nproc_per_node=2 -m camkit.cli train cam --data synthetic --backbone tiny --out runs/ddp

Recipes: camkit.train.list_recipes(); backbones: camkit.models.list_backbones().
The trained model loads anywhere a model specifier is accepted: --model checkpoint:runs/cam/checkpoint.pt
"""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``camkit train``; returns ``parser``."""
    parser.add_argument("recipe", help="registered recipe name, e.g. 'cam' or 'cicam'")
    add_data_arguments(parser, split="train")
    parser.add_argument("--eval-data", default=None, metavar="SPEC",
                        help="evaluation data, the forms of --data (its metadata: DATA/metadata/test)")
    parser.add_argument("--backbone", required=True, help="backbone name (camkit.models.list_backbones())")
    parser.add_argument("--out", required=True, help="output directory (checkpoint.pt, metrics.jsonl)")
    parser.add_argument("--num-classes", type=int, default=None, help="class count (default: from the data)")
    parser.add_argument("--pretrained", default=None,
                        help="path to a state dict, or 'torchvision' for torchvision's local cache")
    parser.add_argument("--preset", default=None,
                        help="recipe preset, e.g. 'synthetic-cpu' (the default when --data is synthetic)")
    parser.add_argument("--epochs", type=int, default=None, help="number of epochs (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the recipe's)")
    parser.add_argument("--lr", type=float, default=None, help="base learning rate (default: the recipe's)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers per process")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the recipe's)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="FIELD=VALUE",
                        help="override any TrainConfig field (repeatable), e.g. --set lr_step_epochs=5")
    parser.add_argument("--model-option", dest="model_options", action="append", metavar="KEY=VALUE",
                        help="keyword argument for the recipe's build_model (repeatable)")
    parser.add_argument("--pool", choices=("gap", "tap"), default=None,
                        help="cam recipe: global average pooling (default) or thresholded average pooling "
                             "(TAP, tau 0.1; --model-option tap_tau=T); the model option pool")
    parser.add_argument("--cls-teacher", default=None, metavar="CKPT",
                        help="kd-student only: checkpoint of a kd-cls-teacher run (model option cls_teacher)")
    parser.add_argument("--loc-teacher", default=None, metavar="CKPT",
                        help="kd-student only: checkpoint of a kd-loc-teacher run (model option loc_teacher)")
    add_device_argument(parser)
    add_box_rule_argument(parser)
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing OUT/checkpoint.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the recipe's config and datasets, train, print a JSON summary (rank 0)."""
    from camkit.cli.common import resolve_device
    from camkit.data.open import num_classes_of, open_dataset, parse_options
    from camkit.distributed import teardown_distributed, world
    from camkit.evaluation import localization_evaluator
    from camkit.train.loop import train
    from camkit.train.recipes import TrainConfig, get_recipe
    from camkit.train.transforms import EvalTransform

    recipe = get_recipe(args.recipe)
    rule = parse_box_rule(args.box_rule)
    model_options = parse_options(args.model_options)
    if args.pool is not None:
        if recipe.name != "cam":
            raise UsageError(f"--pool applies to the cam recipe (GAP or TAP before its linear head), not "
                             f"{recipe.name!r}")
        if "pool" in model_options:
            raise UsageError("give the pooling once: --pool or --model-option pool=..., not both")
        model_options["pool"] = args.pool
    for flag, key in (("--cls-teacher", "cls_teacher"), ("--loc-teacher", "loc_teacher")):
        value = getattr(args, key)
        if value is None:
            continue
        if recipe.name != "kd-student":
            raise UsageError(f"{flag} is for the kd-student recipe only, not {recipe.name!r}; drop it")
        if key in model_options:
            raise UsageError(f"{flag} and --model-option {key}=... name the same teacher; give only one")
        model_options[key] = value
    overrides = parse_options(args.overrides)
    for name, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                        ("num_workers", args.workers), ("seed", args.seed)):
        if value is not None:
            overrides[name] = value
    if args.no_progress:
        overrides["progress"] = False
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UsageError(f"--set: unknown TrainConfig field(s) {unknown}; the fields are {', '.join(fields)}")
    preset = args.preset
    if preset is None and args.data.startswith("synthetic") and "synthetic-cpu" in recipe.presets:
        preset = "synthetic-cpu"          # the recipe's own defaults are for 224-pixel photographs
    config = recipe.make_config(preset, **overrides)
    device = resolve_device(args.device) if args.device else None
    train_set = open_dataset(args.data, split="train", metadata=args.metadata, image_size=config.resize_size)
    eval_spec = args.eval_data or (args.data if args.data.startswith("synthetic") else None)
    eval_set = None if eval_spec is None else open_dataset(eval_spec, split="test", image_size=config.crop_size)
    evaluate_fn = None
    if eval_set is not None:  # every --data form has boxes or masks: CAM localisation in the evaluation
        evaluate_fn = localization_evaluator(recipe.eval_methods, transform=EvalTransform(config.crop_size, config.mean,
                                                                                config.std),
                                             max_images=500, output=recipe.logits, box_rule=rule)
    pretrained = True if args.pretrained == "torchvision" else args.pretrained
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes must be at least 1, got {args.num_classes}")
    result = train(recipe, train_set, backbone=args.backbone, num_classes=args.num_classes or num_classes_of(train_set),
                   out_dir=args.out, config=config, eval_set=eval_set, pretrained=pretrained,
                   model_options=model_options, resume=not args.no_resume,
                   device=device, evaluate_fn=evaluate_fn)
    if world()[0] == 0:
        evals = [h for h in result.history if h.get("event") == "eval"]
        print(json.dumps({"checkpoint": str(result.checkpoint), **({"last_eval": evals[-1]} if evals else {})}))
    teardown_distributed()
    return 0
