"""``camkit evaluate --model SPEC --data SPEC``: wsolevaluation metrics of methods x layers, sharded under torchrun."""
from __future__ import annotations

import argparse
import json

from camkit.cli.common import (UsageError, add_box_rule_argument, add_data_arguments, add_model_arguments,
                               load_model_from_args, model_epilog, parse_box_rule, parse_method_options,
                               resolve_device, split_names)

HELP = "localisation metrics (MaxBoxAccV2, GT-known, PxAP, ...) of methods x layers on a dataset"
DESCRIPTION = ("Localisation metrics of every method at every layer with wsolevaluation's protocol "
               "(224 x 224 without crop, ground-truth-class maps, all 1000 thresholds), or with another box rule "
               "(--box-rule) and the papers' centre-crop protocol (--protocol center-crop).")
EPILOG = model_epilog("""\
examples:
  # the wsolevaluation protocol on the 50 annotated ImageNet dev images, three layers
  camkit evaluate --model mobilenet_v2-tf:../shared/assets/weights/mobilenet_v2_imagenet.pth \\
      --data ../shared/assets/imagenet-val-dev50 --layers features.6 features.13 features.18

  # CUB in wsolevaluation layout, with its metadata folder
  camkit evaluate --model torchvision:resnet50 --weights resnet50.pth --data /data/CUB --metadata metadata/CUB/test

  # a model trained with 'camkit train', on the synthetic benchmark's test split
  camkit evaluate --model checkpoint:runs/cam/checkpoint.pt --data synthetic

  # the LID 2020 Track-3 combination: NWC (CAM with negative weights clamped) and PaS boxes;
  # on a mask dataset the table has PeakIoU, PeakIoU_pooled and PeakIoU_pooled_threshold
  camkit evaluate --model checkpoint:runs/cam-tap/checkpoint.pt --data synthetic \\
      --methods cam --box-rule pas --method-options cam.clamp_negative_weights=true

  # the CAM / CI-CAM papers' protocol: resize 256, centre crop 224, GT boxes clipped to the crop
  camkit evaluate --model torchvision:resnet50 --weights resnet50.pth --data /data/CUB --metadata metadata/CUB/test \\
      --protocol center-crop --box-rule cicam

  # two processes, each on a shard; the counts are all-reduced exactly
  torchrun --nproc_per_node=2 -m camkit evaluate --model ... --data ...
""")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``camkit evaluate``."""
    from camkit.constants import STANDARD_METHODS

    add_model_arguments(parser)
    add_data_arguments(parser, split="test")
    parser.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                        help=f"CAM methods, space or comma separated (default: {' '.join(STANDARD_METHODS)}, "
                             "CAM skipped with a note where the model has no linear head)")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layer names (default: the last spatial layer)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward (default 16)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--interval", type=float, default=0.001, help="CAM threshold step (default 0.001)")
    parser.add_argument("--fixed-threshold", type=float, default=None,
                        help="also report GT-known / Top-k Loc at this fixed threshold (with --box-rule wsol)")
    add_box_rule_argument(parser)
    parser.add_argument("--protocol", choices=("wsol", "center-crop"), default="wsol",
                        help="wsol: resize to the model's size, no crop (default); center-crop: resize the shorter "
                             "side to --resize-size, crop the centre --crop-size, boxes and masks alike (the "
                             "CAM / CI-CAM papers' tables)")
    parser.add_argument("--resize-size", type=int, default=256, metavar="N",
                        help="center-crop: the shorter side after resizing (default 256)")
    parser.add_argument("--crop-size", type=int, default=224, metavar="N",
                        help="center-crop: the side of the centre crop (default 224)")
    parser.add_argument("--method-options", nargs="+", default=None, metavar="METHOD.OPTION=VALUE",
                        help="options of the methods, e.g. cam.clamp_negative_weights=true (NWC)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Load the model and the dataset, evaluate, print the table (rank 0), write ``--json``."""
    from camkit.data.open import open_dataset
    from camkit.distributed import setup_distributed, teardown_distributed
    from camkit.evaluation import evaluate, format_table

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    rule = parse_box_rule(args.box_rule)
    if args.fixed_threshold is not None and not rule.sweep:
        raise UsageError(f"--fixed-threshold reads the wsol threshold sweep; --box-rule {args.box_rule} sets its own "
                         f"threshold: give one of them (--box-rule fixed:F is the fixed-threshold protocol)")
    method_options = parse_method_options(args.method_options)
    if args.protocol == "center-crop" and not 1 <= args.crop_size <= args.resize_size:
        raise UsageError(f"--crop-size must be between 1 and --resize-size ({args.resize_size}), got {args.crop_size}")
    ctx = setup_distributed(resolve_device(args.device) if args.device else None)
    try:
        loaded = load_model_from_args(args, device=ctx.device)
        pre = loaded.preprocess
        dataset = open_dataset(args.data, split="test", metadata=args.metadata,
                               image_size=pre.size[0] if getattr(pre, "size", None) else 224,
                               normalize=(pre.mean, pre.std))
        results = evaluate(loaded.model, dataset, methods=split_names(args.methods), layers=split_names(args.layers),
                           batch_size=args.batch_size, num_workers=args.num_workers,
                           cam_curve_interval=args.interval, fixed_threshold=args.fixed_threshold,
                           progress=not args.no_progress, limit=args.limit, box_rule=rule,
                           protocol=args.protocol, resize_size=args.resize_size, crop_size=args.crop_size,
                           method_options=method_options)
        if ctx.is_main:
            print(format_table(results))
            if args.json:
                rows = [{"method": m, "layer": l, **row} for (m, l), row in results.items()]
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump(rows, f, indent=2)
    finally:
        teardown_distributed()
    return 0
