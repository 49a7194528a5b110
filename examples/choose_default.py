"""Choose camkit's recommended setting: every method x layer x fusion rule on two real ImageNet models.

Runs offline on CPU, from the project root. The table of docs/methods.md is (229 s on 2 shared cores)::

    python examples/choose_default.py --perturbation-limit 0

Ablation-CAM (on every image) and Score-CAM (``--perturbation-limit N`` images, one full forward per
channel) add a few minutes, ``--faithfulness N`` deletion / insertion of a few cells on N images.

For the real MobileNetV2 (``../shared/assets/weights``, TensorFlow SAME padding restored) and the real
EfficientNet-Lite0 (from the package index), on the 50 annotated ImageNet validation images of
``../shared/assets/imagenet-val-dev50`` with the wsolevaluation protocol (resize to 224 x 224, no crop,
maps of the ground-truth class), it measures with :func:`camkit.evaluate`:

* every one-pass method (CAM, Grad-CAM, Grad-CAM++, PCS, BagCAMs, XGrad-CAM, LayerCAM, Eigen-CAM,
  EigenGrad-CAM) at three layers, the last of the 28x28, 14x14 and 7x7 stages (MobileNetV2:
  ``features.6``, ``features.13``, ``features.18``; EfficientNet-Lite0: ``_blocks.4``, ``_blocks.10``,
  ``_swish``);
* the fusion rules ``max``, ``mean`` and ``layercam`` (:func:`camkit.fuse`) over the three layers and
  over the last two;
* Ablation-CAM at the three layers on every image (its extra forwards rerun only the part after the
  layer, per chunk of channels), and Score-CAM (one full forward per channel) at the first two layers
  only (32-112 channels; the 7x7 layers have 1280) on the first ``--perturbation-limit`` images: its rows
  say on how many images, and it is left out of the ranking when that is not every image. On
  EfficientNet-Lite0, whose forward reshapes by its input's batch size, every ablation is a full forward
  too, so Ablation-CAM is measured there as Score-CAM is;
* with ``--faithfulness N``, deletion / insertion AUC of a few cells (:data:`FAITHFULNESS_CELLS`) on the
  first ``N`` images.

It writes one markdown file: per model and metric (MaxBoxAccV2, GT-known) a methods x columns table,
then the cells ranked by their mean MaxBoxAccV2 over the two models. The recommended setting
(``camkit.explain(..., preset="recommended")``) is the best of that ranking; the ranking is made on
these 50 dev images of two models, not on a test set.
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
ONE_PASS = ["cam", "gradcam", "gradcam++", "pcs", "bagcams", "xgradcam", "layercam", "eigencam", "eigengradcam"]
PERTURBATION = ["scorecam", "ablationcam"]
RULES = ("max", "mean", "layercam")
#: each model: its specifier, three layers (the last of the 28x28, 14x14 and 7x7 stages), and whether
#: Ablation-CAM reruns only the part after the layer (EfficientNet-Lite0's forward flattens with
#: ``x.view(batch, -1)``, so there every ablation is a full forward, as Score-CAM's)
MODELS = {
    "MobileNetV2": ("mobilenet_v2-tf:{weights}", ["features.6", "features.13", "features.18"], True),
    "EfficientNet-Lite0": ("efficientnet-lite0", ["_blocks.4", "_blocks.10", "_swish"], False),
}
METRICS = ("MaxBoxAccV2", "GT-known")
#: rows the ranking always shows, whatever their rank: the earlier default (Grad-CAM at the last layer, preset="classic") and
#: the issue's example (BagCAMs fused with max over the last two layers)
REFERENCE_CELLS = [("gradcam", "L3"), ("bagcams", "max(L2-L3)")]
#: the cells whose deletion / insertion ``--faithfulness`` measures: the recommended one, the runner-up,
#: BagCAMs fused over the last two and the earlier default (Grad-CAM at the last layer, preset="classic")
FAITHFULNESS_CELLS = [("bagcams", "L2"), ("layercam", "mean(L1-L3)"), ("bagcams", "max(L2-L3)"), ("gradcam", "L3")]


def columns(layers):
    """The table's columns, in order: the three layers, then each rule over three and over the last two."""
    names = ["L1", "L2", "L3"]
    return names + [f"{rule}(L1-L3)" for rule in RULES] + [f"{rule}(L2-L3)" for rule in RULES]


def measure(loaded, dataset, layers, limit, perturbation_limit, batch_size, one_pass=True, cheap_ablation=True):
    """``{(method, column): row}`` of one model (columns as in :func:`columns`); ``cheap_ablation``:
    Ablation-CAM at the three layers on every image, else as Score-CAM."""
    import camkit

    cells = {}
    layer_column = {layer: f"L{i + 1}" for i, layer in enumerate(layers)}
    common = dict(batch_size=batch_size, progress=False, limit=limit, metric_workers=0)
    if one_pass:
        cells.update(_one_pass_cells(loaded, dataset, layers, layer_column, common))
    # 3. Ablation-CAM at the three layers, Score-CAM (a full forward per channel) at the first two
    if perturbation_limit:
        few = min(perturbation_limit, limit or len(dataset))
        runs = [("ablationcam", layers, limit) if cheap_ablation else ("ablationcam", layers[:2], few),
                ("scorecam", layers[:2], few)]
        for method, explained, images in runs:
            table = camkit.evaluate(loaded.model, dataset, methods=[method], layers=explained,
                                    **{**common, "limit": images})
            for (name, layer), row in table.items():
                cells[name, layer_column[layer]] = row
    return cells


def _one_pass_cells(loaded, dataset, layers, layer_column, common):
    import camkit

    cells = {}
    # 1. every one-pass method at the three layers, and fused over the three
    table = camkit.evaluate(loaded.model, dataset, methods=ONE_PASS, layers=layers, fuse_rules=RULES, **common)
    for (method, layer), row in table.items():
        column = layer_column.get(layer) or f"{layer[len('fused:'):]}(L1-L3)"
        cells[method, column] = row
    # 2. fused over the last two (their single-layer rows repeat step 1's and are dropped)
    table = camkit.evaluate(loaded.model, dataset, methods=[m for m in ONE_PASS if m != "cam"],
                            layers=layers[1:], fuse_rules=RULES, **common)
    for (method, layer), row in table.items():
        if layer.startswith("fused:"):
            cells[method, f"{layer[len('fused:'):]}(L2-L3)"] = row
    return cells


def faithfulness_rows(loaded, dataset, layers, picks, images, batch_size):
    """Deletion / insertion (and the other faithfulness columns) of the cells ``picks`` on ``images`` images."""
    import camkit

    out = {}
    for method, column in picks:
        if column.startswith("L"):
            explained, rules = [layers[int(column[1]) - 1]], ()
        else:
            rule, span = column[:-7], column[-6:-1]
            explained, rules = (layers if span == "L1-L3" else layers[1:]), (rule,)
        table = camkit.evaluate(loaded.model, dataset, methods=[method], layers=explained, fuse_rules=rules,
                                batch_size=batch_size, progress=False, limit=images, metric_workers=0,
                                faithfulness=True, faithfulness_options={"steps": 20, "batch_size": 64})
        key = (method, explained[0]) if not rules else (method, f"fused:{rules[0]}")
        out[method, column] = table[key]
    return out


def grid_markdown(cells, metric, layers, images):
    """The methods x columns table of one model and metric; a method measured on other than ``images``
    images says on how many."""
    cols = columns(layers)
    methods = [m for m in ONE_PASS + PERTURBATION if any((m, c) in cells for c in cols)]
    header = ["method"] + [c.replace("L1", layers[0]).replace("L2", layers[1]).replace("L3", layers[2])
                           if c.startswith("L") else c for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        values = [cells.get((method, c), {}).get(metric) for c in cols]
        counts = {cells[method, c]["num_images"] for c in cols if (method, c) in cells}
        label = method if counts == {images} else f"{method} ({', '.join(map(str, sorted(counts)))} images)"
        lines.append("| " + " | ".join([label] + ["-" if v is None else f"{v:.1f}" for v in values]) + " |")
    return "\n".join(lines)


def ranking(per_model, images):
    """Cells present for every model on all ``images`` images, by their mean MaxBoxAccV2 over the models
    (best first)."""
    models = list(per_model)
    keys = {key for key in set.intersection(*(set(cells) for cells in per_model.values()))
            if all(cells[key]["num_images"] == images for cells in per_model.values())}
    scored = []
    for key in keys:
        values = [per_model[m][key]["MaxBoxAccV2"] for m in models]
        gt = [per_model[m][key]["GT-known"] for m in models]
        scored.append((sum(values) / len(values), key, values, sum(gt) / len(gt)))
    scored.sort(key=lambda s: (-s[0], s[1]))
    return scored


def model_and_dev_images(name: str, weights: str, data: str):
    """The real model ``name`` of :data:`MODELS` and the dev images at its input size and normalisation."""
    from camkit.data.open import open_dataset
    from camkit.model_spec import load_model

    loaded = load_model(MODELS[name][0].format(weights=weights))
    preprocess = loaded.preprocess
    return loaded, open_dataset(data, split="test", image_size=preprocess.size[0],
                                normalize=(preprocess.mean, preprocess.std))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(ASSETS / "weights" / "mobilenet_v2_imagenet.pth"),
                        help="the MobileNetV2 state_dict (TF-trained, inputs in [-1, 1])")
    parser.add_argument("--data", default=str(ASSETS / "imagenet-val-dev50"),
                        help="an annotated folder (annotations.json + images/)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to measure")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--perturbation-limit", type=int, default=5,
                        help="images for Score-CAM (Ablation-CAM runs on every image where it is cheap; 0: skip both)")
    parser.add_argument("--perturbation-only", action="store_true",
                        help="measure only Score-CAM / Ablation-CAM (a second, smaller run)")
    parser.add_argument("--faithfulness", type=int, default=0, metavar="N",
                        help="deletion/insertion of the best cells on the first N images (0: off)")
    parser.add_argument("--batch-size", type=int, default=10, help="images per engine call")
    parser.add_argument("--top", type=int, default=12, help="cells shown in the ranking (and REFERENCE_CELLS)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "choose_default.md"), help="the markdown file")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)

    if not Path(args.weights).is_file() or not Path(args.data).is_dir():
        print(f"needs the real assets: {args.weights} and {args.data}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")   # CAM is skipped where the head does not fit; BagCAMs' negative logits

    per_model, sections, faithful = {}, [], {}
    start = time.perf_counter()
    for name in args.models:
        layers = MODELS[name][1]
        loaded, dataset = model_and_dev_images(name, args.weights, args.data)
        t0 = time.perf_counter()
        per_model[name] = cells = measure(loaded, dataset, layers, args.limit, args.perturbation_limit,
                                          args.batch_size, one_pass=not args.perturbation_only,
                                          cheap_ablation=MODELS[name][2])
        images = max(row["num_images"] for row in cells.values())
        print(f"{name}: {len(cells)} cells on {images} images in {time.perf_counter() - t0:.0f} s", flush=True)
        for metric in METRICS:
            sections.append(f"### {name}, {metric} ({images} images; L1-L3 = {', '.join(layers)})\n\n"
                            + grid_markdown(cells, metric, layers, images))
        per_model[name + " layers"] = layers
    layer_sets = {name: per_model.pop(name + " layers") for name in args.models}
    ranked = ranking(per_model, images) if not args.perturbation_only else []
    lines = ["## Ranking: mean MaxBoxAccV2 over " + ", ".join(args.models), "",
             "| rank | method | column | mean MaxBoxAccV2 | " + " | ".join(args.models) + " | mean GT-known |",
             "|---|---|---|---|" + "---|" * len(args.models) + "---|"]
    shown = [(rank, entry) for rank, entry in enumerate(ranked, 1) if rank <= args.top or entry[1] in REFERENCE_CELLS]
    for rank, (mean, (method, column), values, gt) in shown:
        lines.append(f"| {rank} | {method} | {column} | {mean:.1f} | "
                     + " | ".join(f"{v:.1f}" for v in values) + f" | {gt:.1f} |")
    text = "\n".join(lines) + "\n\n" + "\n\n".join(sections) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)      # now, so that a slow faithfulness run cannot lose the localisation table
    if args.faithfulness:
        picks = FAITHFULNESS_CELLS
        for name in args.models:
            loaded, dataset = model_and_dev_images(name, args.weights, args.data)
            faithful[name] = faithfulness_rows(loaded, dataset, layer_sets[name], list(dict.fromkeys(picks)),
                                               args.faithfulness, args.batch_size)

    if faithful:
        rows = ["| model | method | column | images | Deletion (lower better) | Insertion (higher better) |",
                "|---|---|---|---|---|---|"]
        for name, table in faithful.items():
            for (method, column), row in table.items():
                rows.append(f"| {name} | {method} | {column} | {row['num_images']} | {row['Deletion']:.3f} | "
                            f"{row['Insertion']:.3f} |")
        text += "\n### Faithfulness (softmax of the ground-truth class, 20 steps)\n\n" + "\n".join(rows) + "\n"
    text += f"\nL1-L3: the three layers; L2-L3: the last two. Total {time.perf_counter() - start:.0f} s.\n"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
