"""``camkit explain IMAGE ... --model SPEC``: maps, overlays, a methods x layers grid and boxes per image."""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from camkit.cli.common import (UsageError, add_model_arguments, load_model_from_args, model_epilog, output_folder,
                               split_names)

HELP = "write maps, overlays, a methods x layers grid and boxes for images"
DESCRIPTION = "Explain images with one or more CAM methods at one or more layers."
EPILOG = model_epilog("""\
examples:
  # the recommended map (the default): BagCAMs at the second deepest resolution (docs/methods.md)
  camkit explain cat.jpg owl.jpg --model efficientnet-lite0 --out out/

  # every standard method at the last spatial layer, top-5 classes printed
  camkit explain cat.jpg --model efficientnet-lite0 --methods cam gradcam gradcam++ pcs bagcams --out out/

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
""")


class _ListMethods(argparse.Action):
    """``--list-methods``: print the registered methods and exit, before the required flags are checked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from camkit.methods import describe_methods

        for method in describe_methods():
            print(f"{method.name:<10} {method.description}")
        parser.exit()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``camkit explain``."""
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    add_model_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                        help="CAM methods, space or comma separated (default: --preset recommended; with "
                             "--layers, the standard five, CAM skipped with a note where the model has no "
                             "linear head); 'camkit explain --list-methods' lists them")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="module names, 'name@k' for the k-th call of a reused module (default: "
                             "--preset recommended; with --methods, the last layer with spatial output)")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help="a named setting instead of --methods/--layers: 'recommended' (the default) = "
                             "BagCAMs at the last layer of the second deepest resolution (the best "
                             "localisation in docs/methods.md), 'classic' = Grad-CAM at the last layer")
    parser.add_argument("--target", default="top1", metavar="T",
                        help="class to explain: 'top1' (default), a class index, or a class name")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to print (default 5)")
    parser.add_argument("--out", default="camkit-out", metavar="DIR", help="output folder (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="images per forward (default 8)")
    parser.add_argument("--cmap", default="jet", help="matplotlib colormap (default jet)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the map (default 0.5)")
    parser.add_argument("--box-threshold", type=float, default=None, metavar="TAU",
                        help="boxes keep pixels above TAU x max of the map (default 0.2; the rule fixed:TAU)")
    parser.add_argument("--box-rule", default=None, metavar="RULE",
                        help="how maps become boxes: fixed:F, pas, cicam or cicam-kept-mean "
                             "(default fixed:TAU of --box-threshold)")
    parser.add_argument("--no-figures", action="store_true", help="write only .npy maps and the .json")
    parser.add_argument("--list-methods", action=_ListMethods, help="print the available methods and exit")


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
        raise UsageError(f"unknown class name {text!r}.{hint}")
    raise UsageError(f"--target must be 'top1' or a class index (this model's class names are unknown), "
                     f"got {text!r}")


def _check_arguments(args) -> None:
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise UsageError(f"image file(s) not found: {', '.join(missing)}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    if args.box_threshold is not None and not 0 <= args.box_threshold <= 1:
        raise UsageError(f"--box-threshold must be in [0, 1], got {args.box_threshold}")
    if not 0 <= args.alpha <= 1:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    from camkit.presets import get_preset

    if args.preset is not None:
        try:
            get_preset(args.preset)
        except ValueError as error:
            raise UsageError(f"--preset: {error}") from None
    if args.preset is not None and (args.methods or args.layers):
        raise UsageError(f"--preset {args.preset} sets the methods and layers: give --preset or "
                         f"--methods/--layers, not both")
    args.box_rule = _checked_box_rule(args)


def _checked_box_rule(args):
    """The :class:`camkit.boxes.BoxRule` of ``--box-rule`` (default ``fixed:`` ``--box-threshold``)."""
    from camkit.boxes import box_rule

    if args.box_rule is None:
        return box_rule("fixed", fraction=0.2 if args.box_threshold is None else args.box_threshold)
    if args.box_threshold is not None:
        raise UsageError("give --box-threshold or --box-rule, not both (--box-rule fixed:F sets the threshold)")
    if args.box_rule == "wsol":
        raise UsageError("--box-rule wsol is the evaluation's threshold sweep (it needs ground-truth boxes); "
                         "camkit explain boxes each map on its own: use fixed:F, pas, cicam or cicam-kept-mean")
    try:
        return box_rule(args.box_rule)
    except ValueError as error:
        raise UsageError(f"--box-rule: {error}") from None


def run(args) -> int:
    """Explain every image, write the files of the epilog, print the top-k classes."""
    from camkit.explain import Explainer
    from camkit.inputs import load_rgb
    _check_arguments(args)
    originals = {path: load_rgb(path) for path in args.images}    # a corrupt image fails before any output
    loaded = load_model_from_args(args)
    methods = split_names(args.methods)  # None: the standard set, CAM only where a linear head fits
    target = parse_target(args.target, loaded.class_names)
    choice = ({"methods": methods, "layers": split_names(args.layers)} if args.methods or args.layers
              else {"preset": args.preset})    # None: camkit.presets.DEFAULT_PRESET
    explainer = Explainer(loaded.model, preprocess=loaded.preprocess, class_names=loaded.class_names, **choice)
    used_stems: set = set()
    with output_folder(args.out) as out:
        for start in range(0, len(args.images), args.batch_size):
            paths = args.images[start:start + args.batch_size]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                exp = explainer(list(paths), target=target)
            for note in dict.fromkeys(str(w.message).split(": CAM needs")[0] for w in caught
                                      if not issubclass(w.category, UserWarning) or "CAM" in str(w.message)):
                print(f"note: {note}", file=sys.stderr)
            _write_batch(exp, paths, [originals[p] for p in paths], loaded.spec, target, args, out, used_stems)
    print(f"wrote {out}/")
    return 0


def _write_batch(exp, paths, originals, spec, target, args, out: Path, used_stems: set) -> None:
    import numpy as np

    from camkit import viz

    probabilities, classes = exp.top_k(args.top_k)
    sizes = [original.shape[:2] for original in originals]
    boxes_input = {key: exp.boxes(*key, box_rule=args.box_rule) for key in exp.maps}
    on_photo = {"on_photo": True} if exp.frames is not None else {"sizes": sizes}   # the crop's place
    boxes_image = {key: exp.boxes(*key, box_rule=args.box_rule, **on_photo)
                   for key in exp.maps}
    for index, (path, original) in enumerate(zip(paths, originals)):
        stem = _unique(_safe(Path(path).stem), used_stems)
        explained = int(exp.targets[index]) if exp.targets is not None else None
        record = {"image": str(path), "model": spec, "top_k": [
            {"class": int(c), "name": exp.class_name(int(c)), "probability": round(float(p), 6)}
            for p, c in zip(probabilities[index], classes[index])],
            "target": explained, "target_name": exp.class_name(explained) if explained is not None else None,
            "input_size": list(exp.images.shape[-2:]), "image_size": [original.shape[0], original.shape[1]],
            "layers": list(exp.layers), "methods": list(exp.methods), "box_rule": args.box_rule.name, "maps": {}}
        print(f"{path}:")
        for rank, entry in enumerate(record["top_k"], 1):
            print(f"  {rank}. {entry['name']} ({entry['class']})  p={entry['probability']:.3f}")
        for (method, layer), maps in exp.maps.items():
            saliency = maps[index].detach().float().cpu().numpy()
            base = f"{stem}_{_safe(method)}_{_safe(layer)}"
            np.save(out / f"{base}.npy", saliency.astype(np.float32))
            entry = {"npy": f"{base}.npy", "boxes_input": boxes_input[method, layer][index].tolist(),
                     "boxes_image": boxes_image[method, layer][index].tolist()}
            if not args.no_figures:
                on_image = exp.photo_map(method, layer, index) if exp.frames is not None else saliency
                seen = ~np.isnan(on_image) if on_image.shape == original.shape[:2] else True
                picture = viz.overlay(original, np.nan_to_num(on_image), cmap=args.cmap, alpha=args.alpha)
                picture = np.where(np.atleast_3d(seen), picture, original / 255.0)   # the uncropped border
                thickness = max(1, round(min(original.shape[:2]) / 150))
                picture = viz.draw_boxes(picture, entry["boxes_image"], (0.0, 1.0, 0.0), thickness)
                _save_png(out / f"{base}_overlay.png", viz.to_uint8(picture))
                entry["overlay"] = f"{base}_overlay.png"
            record["maps"][f"{method}|{layer}"] = entry
        if not args.no_figures:
            figure = viz.explanation_figure(exp, index=index, cmap=args.cmap, alpha=args.alpha,
                                            boxes={key: boxes_input[key][index] for key in exp.maps})
            viz.save_figure(figure, out / f"{stem}_grid.png", dpi=100)
            record["grid"] = f"{stem}_grid.png"
        (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
        if explained is not None and target is not None:
            print(f"  explained: {record['target_name']} ({record['target']})")


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
