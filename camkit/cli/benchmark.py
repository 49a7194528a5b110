"""``camkit benchmark``: quality and cost of every method at every layer (:mod:`camkit.bench`)."""
from __future__ import annotations

import argparse

from camkit.cli.common import (UsageError, add_box_rule_argument, add_data_arguments, add_model_arguments,
                               load_model_from_args, model_epilog, output_folder, parse_box_rule, split_names)

HELP = "quality and cost of every method at every layer: tables, CSV/JSON and plots"

DESCRIPTION = ("Localisation quality (MaxBoxAccV2, MaxBoxAcc@30/50/70, GT-known and Top-1/5 Loc, PxAP and "
               "Peak-IoU where masks exist, classification top-1) and cost (images/s, ratio to a bare "
               "forward+grad, peak memory) of every method at every layer, written as markdown, CSV/JSON "
               "and plots.")

EPILOG = model_epilog("""\
examples:
  # the real MobileNetV2 on the 50 annotated ImageNet dev images: the README's results (about 10 minutes
  # on a busy 2-core machine; docs/results.md records the last run's wall time)
  camkit benchmark --model mobilenet_v2-tf:../shared/assets/weights/mobilenet_v2_imagenet.pth \\
      --data ../shared/assets/imagenet-val-dev50 --layers features.6 features.13 features.18 --out bench/

  # a wsolevaluation-format dataset (images under the root, metadata/<split>/*.txt, masks for OpenImages)
  camkit benchmark --model torchvision:resnet50 --weights r50.pth \\
      --data /data/CUB --metadata /data/wsolevaluation/metadata/CUB/test --out bench/

  # the synthetic benchmark (masks, so PxAP and Peak-IoU too), your own model
  camkit benchmark --model mymodels:tiny --data synthetic:num_images=64 --methods gradcam pcs --out bench/

Layers default to the model's suggested list (shallow to deep) or the last spatial layer.
Timings are ratios measured side by side; absolute images/s depend on the machine (see report.md).
Use --repeats 3 or more: with fewer timed rounds the ratios are unreliable (a warning says so).
Peers (pytorch-grad-cam, torchcam, captum) run when importable; --no-peers skips them.
""")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``camkit benchmark`` flags, the shared model and data flags included."""
    from camkit.constants import STANDARD_METHODS

    add_model_arguments(parser)
    add_data_arguments(parser, split="test")
    parser.add_argument("--methods", nargs="+", default=list(STANDARD_METHODS), metavar="NAME",
                        help="methods (space or comma separated; default: %(default)s)")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layers shallow to deep (default: the model's suggested layers, else the "
                             "last spatial layer)")
    parser.add_argument("--out", default="camkit-benchmark", metavar="DIR",
                        help="output folder (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per forward (16)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N images")
    parser.add_argument("--cost-batch", type=int, default=8, metavar="B",
                        help="images in the timing batch (default 8)")
    parser.add_argument("--repeats", type=int, default=3, metavar="R",
                        help="timed rounds after one warm-up (default 3; fewer make the ratios unreliable)")
    parser.add_argument("--threads", type=int, default=None, metavar="T",
                        help="torch CPU threads (default: torch's choice; recorded in the report)")
    parser.add_argument("--no-peers", action="store_true",
                        help="do not run pytorch-grad-cam / torchcam / captum even if installed")
    parser.add_argument("--no-figures", action="store_true", help="write tables only")
    add_box_rule_argument(parser)


def _data_label(args) -> str:
    return args.data if args.metadata is None else f"{args.data} (metadata {args.metadata})"


def run(args) -> int:
    """Run ``camkit benchmark`` from parsed flags: prints the main tables and writes ``--out``."""
    import torch

    from camkit.bench import cost_markdown, metrics_present, quality_markdown, run_benchmark, write_outputs
    from camkit.data.open import open_dataset

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    rule = parse_box_rule(args.box_rule)
    with output_folder(args.out) as out:
        if args.threads:
            torch.set_num_threads(args.threads)
        loaded = load_model_from_args(args)
        preprocess = loaded.preprocess
        size = preprocess.size[0] if preprocess.size else 224
        dataset = open_dataset(args.data, split="test", metadata=args.metadata, image_size=size,
                               normalize=(preprocess.mean, preprocess.std))
        result = run_benchmark(loaded, dataset, methods=split_names(args.methods), layers=split_names(args.layers),
                               batch_size=args.batch_size, limit=args.limit, cost_batch=args.cost_batch,
                               repeats=args.repeats, peers=not args.no_peers, progress=True,
                               settings={"model": loaded.spec, "data": _data_label(args)}, box_rule=rule)
        paths = write_outputs(result, out, figures=not args.no_figures)
    top1 = result.classification.get("top1")
    print("top-1: " + ("-" if top1 is None else f"{top1:.2f}") + "%")
    for metric in ("MaxBoxAccV2", "BoxAcc", "PxAP"):
        if metric in metrics_present(result):
            print(f"\n{metric}\n" + quality_markdown(result, metric))
    print("\ncost\n" + cost_markdown(result))
    print(f"\nwrote {paths['report']} and {len(paths) - 1} more files in {out}")
    return 0
