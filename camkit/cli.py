"""The ``camkit`` command: ``camkit explain | evaluate | benchmark | train``.

Every subcommand takes the same model flags (``--model SPEC --weights PATH ...``, see
:mod:`camkit.model_spec`). ``evaluate`` and ``train`` are provided by :mod:`camkit.evaluation` and
:mod:`camkit.train.command` (each exposes ``add_arguments(parser)`` and ``run(args)``); they are imported
only when used.
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

from camkit.model_spec import SPEC_FORMS, ModelSpecError, add_model_arguments, load_model_from_args
from camkit.methods import STANDARD_METHODS as DEFAULT_METHODS


MAIN_EPILOG = f"""\
examples:
  camkit explain photo.jpg --model efficientnet-lite0 --out out/
  camkit evaluate --model mobilenet_v2:weights.pth --data ../shared/assets/imagenet-val-dev50
  camkit benchmark --model mobilenet_v2:weights.pth --data ../shared/assets/imagenet-val-dev50 \\
      --layers features.6 features.13 features.18 --out bench/
  camkit train --help

model specifiers (--model):
{SPEC_FORMS}

Run 'camkit SUBCOMMAND --help' for each subcommand's flags and examples.
"""

EXPLAIN_EPILOG = f"""\
examples:
  # every method at the model's suggested layers, top-5 classes printed
  camkit explain cat.jpg owl.jpg --model efficientnet-lite0 --out out/

  # the real MobileNetV2 asset, two layers, Grad-CAM and BagCAMs, explaining class 281
  camkit explain cat.jpg --model mobilenet_v2:../shared/assets/weights/mobilenet_v2_imagenet.pth \\
      --methods gradcam bagcams --layers features.13 features.18 --target 281 --out out/

  # your own model from a factory function, with your weights
  camkit explain img.png --model mypackage.models:build --weights model.pth --num-classes 10 --out out/

outputs in --out, per image STEM:
  STEM_grid.png                      the image and every method x layer map and overlay
  STEM_METHOD_LAYER_overlay.png      the map over the original picture
  STEM_METHOD_LAYER.npy              the map, float32 (H, W) in [0, 1] at the model input size
  STEM.json                          top-k classes, the explained class and boxes per method/layer
                                     (xyxy inclusive pixels, in model-input and original coordinates)

model specifiers (--model):
{SPEC_FORMS}
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and line breaks in help strings."""

    def _split_lines(self, text, width):
        return [line for part in text.splitlines() for line in
                (argparse.HelpFormatter._split_lines(self, part, width) or [""])]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camkit", formatter_class=_Formatter, epilog=MAIN_EPILOG,
        description="Class activation maps for any PyTorch classifier: explain images, evaluate "
                    "localisation (wsolevaluation metrics), benchmark methods x layers, train WSOL recipes.")
    from camkit import __version__
    parser.add_argument("--version", action="version", version=f"camkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    explain = commands.add_parser(
        "explain", formatter_class=_Formatter, epilog=EXPLAIN_EPILOG,
        help="write maps, overlays, a methods x layers grid and boxes for images",
        description="Explain images with one or more CAM methods at one or more layers.")
    _add_explain_arguments(explain)
    explain.set_defaults(handler=run_explain)

    from camkit import benchmark
    bench = commands.add_parser(
        "benchmark", formatter_class=_Formatter,
        epilog=benchmark.EPILOG + f"\nmodel specifiers (--model):\n{SPEC_FORMS}\n",
        help="quality and cost of every method at every layer: tables, CSV/JSON and plots",
        description=benchmark.DESCRIPTION)
    benchmark.add_arguments(bench)
    bench.set_defaults(handler=benchmark.run)

    _add_delegated(commands, "evaluate", "camkit.evaluation",
                   "localisation metrics (MaxBoxAccV2, GT-known, PxAP, ...) of methods x layers on a dataset",
                   EVALUATE_EPILOG, model_flags=True)
    _add_delegated(commands, "train", "camkit.train.command",
                   "train a WSOL recipe (CAM, CI-CAM, ...) on a dataset", TRAIN_EPILOG, model_flags=False)
    return parser


EVALUATE_EPILOG = f"""\
examples:
  # the wsolevaluation protocol on the 50 annotated ImageNet dev images, three layers
  camkit evaluate --model mobilenet_v2-tf:../shared/assets/weights/mobilenet_v2_imagenet.pth \\
      --data ../shared/assets/imagenet-val-dev50 --layers features.6 features.13 features.18

  # a model trained with 'camkit train', on its synthetic test split
  camkit evaluate --model checkpoint:runs/cam/checkpoint.pt --data synthetic

model specifiers (--model):
{SPEC_FORMS}
"""

TRAIN_EPILOG = """\
examples:
  # CAM on the synthetic benchmark, a few minutes on a CPU
  camkit train cam --data synthetic:num_images=2000,habitat_p=0.8 --backbone tiny \\
      --preset synthetic-cpu --out runs/cam

  # CI-CAM on CUB (wsolevaluation layout) with ImageNet-pretrained VGG16 weights from a file
  camkit train cicam --data /data/CUB --backbone vgg16 --pretrained vgg16.pth --out runs/cicam

  # two processes with DistributedDataParallel (gloo on CPU, nccl on GPU)
  torchrun --nproc_per_node=2 -m camkit.cli train cam --data synthetic --backbone tiny --out runs/ddp

Recipes: camkit.train.list_recipes(); backbones: camkit.models.list_backbones().
The trained model loads anywhere a model specifier is accepted: --model checkpoint:runs/cam/checkpoint.pt
"""


def _add_delegated(commands, name: str, module_name: str, help_text: str, epilog: Optional[str] = None,
                   model_flags: bool = True) -> None:
    """A subcommand implemented by ``module_name.add_arguments`` and ``module_name.run``."""
    module = importlib.import_module(module_name)
    text = getattr(module, "EPILOG", None) or epilog or ""
    if model_flags and "model specifiers" not in text:
        text = text.rstrip("\n") + f"\n\nmodel specifiers (--model):\n{SPEC_FORMS}\n"
    sub = commands.add_parser(name, formatter_class=_Formatter, help=help_text,
                              description=help_text,
                              epilog=text or None)
    module.add_arguments(sub)
    if model_flags:
        add_model_arguments(sub)  # adds only the shared flags it does not define itself
    sub.set_defaults(handler=module.run)


# -------------------------------------------------------------------------------------------- explain
def _add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    add_model_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="NAME",
                        help="CAM methods (space or comma separated; default: %(default)s). "
                             "'camkit explain --list-methods' lists them")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="module names, 'name@k' for the k-th call of a reused module "
                             "(default: the last layer with spatial output)")
    parser.add_argument("--target", default="top1", metavar="T",
                        help="class to explain: 'top1' (default), a class index, or a class name")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to print (default 5)")
    parser.add_argument("--out", default="camkit-out", metavar="DIR", help="output folder (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="images per forward (default 8)")
    parser.add_argument("--cmap", default="jet", help="matplotlib colormap (default jet)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the map (default 0.5)")
    parser.add_argument("--box-threshold", type=float, default=0.2, metavar="TAU",
                        help="boxes keep pixels above TAU x max of the map (default 0.2)")
    parser.add_argument("--no-figures", action="store_true", help="write only .npy maps and the .json")
    parser.add_argument("--list-methods", action="store_true", help="print the available methods and exit")


def _split_names(values: Optional[Sequence[str]]) -> Optional[List[str]]:
    if values is None:
        return None
    return [part for value in values for part in value.split(",") if part]


def _safe(name: str) -> str:
    return re.sub(r"[^\w.@+-]+", "_", name)


def parse_target(text: str, class_names: Optional[Sequence[str]]):
    """``'top1'`` -> ``None``; ``'281'`` -> 281; a class name -> its index."""
    if text is None or text.lower() in ("top1", "top-1", "none", ""):
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if class_names is not None:
        lowered = [n.lower() for n in class_names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        import difflib

        close = difflib.get_close_matches(text.lower(), lowered, n=5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise SystemExit(f"camkit explain: unknown class name {text!r}.{hint}")
    raise SystemExit(f"camkit explain: --target must be 'top1' or a class index (this model's class "
                     f"names are unknown), got {text!r}")


def box_for_map(saliency, threshold: float):
    """The box of one ``(H, W)`` map in ``[0, 1]``: the largest contour above ``threshold x max``.

    The ``"fixed"`` rule of :func:`camkit.boxes.get_box_rule` (wsolevaluation conventions, V1: the
    largest contour). Returns an ``(n, 4)`` list of ints x0, y0, x1, y1.
    """
    from camkit.boxes import get_box_rule

    return get_box_rule("fixed")(saliency, fraction=threshold).tolist()


def run_explain(args) -> int:
    import numpy as np

    import camkit
    from camkit import viz
    from camkit.inputs import load_rgb

    if args.list_methods:
        print("\n".join(camkit.list_methods()))
        return 0
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        print(f"camkit explain: image file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    if not 0 <= args.box_threshold <= 1:  # checked before any file is written
        raise SystemExit(f"camkit explain: --box-threshold must be in [0, 1] (a fraction of each map's "
                         f"maximum), got {args.box_threshold}")
    loaded = load_model_from_args(args)
    methods = _split_names(args.methods)
    layers = _split_names(args.layers)  # None: the last layer with spatial output
    target = parse_target(args.target, loaded.class_names)
    explainer = camkit.Explainer(loaded.model, methods=methods, layers=layers,
                                 preprocess=loaded.preprocess, class_names=loaded.class_names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    used_stems = set()
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start:start + args.batch_size]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exp = explainer(list(paths), target=target)
        for note in dict.fromkeys(str(w.message).split(": CAM needs")[0] for w in caught
                                  if not issubclass(w.category, UserWarning) or "CAM" in str(w.message)):
            print(f"note: {note}", file=sys.stderr)
        probabilities, classes = exp.top_k(args.top_k)
        for index, path in enumerate(paths):
            stem = _unique(_safe(Path(path).stem), used_stems)
            original = load_rgb(path)
            size = tuple(exp.images.shape[-2:])
            record = {"image": str(path), "model": loaded.spec, "top_k": [
                {"class": int(c), "name": exp.class_name(int(c)), "probability": round(float(p), 6)}
                for p, c in zip(probabilities[index], classes[index])],
                "target": int(exp.targets[index]) if exp.targets is not None else None,
                "target_name": exp.class_name(int(exp.targets[index])) if exp.targets is not None else None,
                "input_size": list(size), "image_size": [original.shape[0], original.shape[1]],
                "layers": list(exp.layers), "methods": list(exp.methods), "maps": {}}
            print(f"{path}:")
            for rank, entry in enumerate(record["top_k"], 1):
                print(f"  {rank}. {entry['name']} ({entry['class']})  p={entry['probability']:.3f}")
            for (method, layer), maps in exp.maps.items():
                saliency = maps[index].detach().float().cpu().numpy()
                base = f"{stem}_{_safe(method)}_{_safe(layer)}"
                np.save(out / f"{base}.npy", saliency.astype(np.float32))
                entry = {"npy": f"{base}.npy"}
                boxes = box_for_map(saliency, args.box_threshold)
                sy, sx = original.shape[0] / size[0], original.shape[1] / size[1]
                entry["boxes_input"] = boxes
                entry["boxes_image"] = [[int(b[0] * sx), int(b[1] * sy),
                                         min(int((b[2] + 1) * sx) - 1, original.shape[1] - 1),
                                         min(int((b[3] + 1) * sy) - 1, original.shape[0] - 1)]
                                        for b in boxes]
                if not args.no_figures:
                    picture = viz.overlay(original, saliency, cmap=args.cmap, alpha=args.alpha)
                    thickness = max(1, round(min(original.shape[:2]) / 150))
                    picture = viz.draw_boxes(picture, entry["boxes_image"], (0.0, 1.0, 0.0), thickness)
                    _save_png(out / f"{base}_overlay.png", viz.to_uint8(picture))
                    entry["overlay"] = f"{base}_overlay.png"
                record["maps"][f"{method}|{layer}"] = entry
            if not args.no_figures:
                boxes = {key: record["maps"][f"{key[0]}|{key[1]}"].get("boxes_input", [])
                         for key in exp.maps}
                figure = viz.explanation_figure(exp, index=index, cmap=args.cmap, alpha=args.alpha,
                                                boxes=boxes)
                viz.save_figure(figure, out / f"{stem}_grid.png", dpi=100)
                record["grid"] = f"{stem}_grid.png"
            (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
            if exp.targets is not None and target is not None:
                print(f"  explained: {record['target_name']} ({record['target']})")
    print(f"wrote {out}/")
    return 0


def _unique(stem: str, used: set) -> str:
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


def _save_png(path: Path, rgb8) -> None:
    from PIL import Image

    Image.fromarray(rgb8).save(path)


# ----------------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``camkit`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        status = args.handler(args)
    except ModelSpecError as error:
        print(f"camkit {args.command}: {error}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
