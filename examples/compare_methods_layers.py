"""Every CAM method at every layer of a real ImageNet MobileNetV2: a BagCAMs-style table.

Runs offline on CPU, as long as ``benchmarks/run_all.py`` (docs/results.md records its wall time), from the
project root::

    python examples/compare_methods_layers.py

It uses the real MobileNetV2 in ``../shared/assets/weights`` (TensorFlow SAME padding restored, inputs
in [-1, 1]) and the 50 annotated ImageNet validation images in ``../shared/assets/imagenet-val-dev50``,
with the wsolevaluation protocol (resize to 224x224, no crop; maps of the ground-truth class). It prints

* MaxBoxAccV2 of each method (rows) at each layer (columns), shallow to deep;
* the cost table (images/s and time relative to a bare forward + grad to the layer);

writes the full benchmark (``report.md``, CSV/JSON, plots) to ``outputs/compare_methods_layers/`` and
two figures to ``docs/figures/``: MaxBoxAccV2 against layer, and one image's methods x layers grid
with the ground-truth box (dashed white) and each map's largest box above 0.2 x max (green).

The same numbers come from the command line::

    camkit benchmark --model mobilenet_v2-tf:../shared/assets/weights/mobilenet_v2_imagenet.pth \\
        --data ../shared/assets/imagenet-val-dev50 \\
        --layers features.6 features.13 features.18 \\
        --out outputs/compare_methods_layers
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
LAYERS = ["features.6", "features.13", "features.18"]  # 28x28, 14x14, 7x7 at 224x224
METHODS = ["cam", "gradcam", "gradcam++", "pcs", "bagcams"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(ASSETS / "weights" / "mobilenet_v2_imagenet.pth"),
                        help="the MobileNetV2 state_dict (TF-trained, inputs in [-1, 1])")
    parser.add_argument("--data", default=str(ASSETS / "imagenet-val-dev50"),
                        help="an annotated folder (annotations.json + images/)")
    parser.add_argument("--layers", nargs="+", default=LAYERS, help="layers to explain, shallow to deep")
    parser.add_argument("--methods", nargs="+", default=METHODS, help="methods to compare (camkit.list_methods())")
    parser.add_argument("--symmetric-padding", action="store_true",
                        help="keep torchvision's symmetric padding (weaker for these TF-trained weights)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "compare_methods_layers"),
                        help="folder for report.md, the CSV/JSON tables and the plots")
    parser.add_argument("--figures", default=str(ROOT / "docs" / "figures"),
                        help="folder for the two README figures")
    parser.add_argument("--example-image", type=int, default=0, help="dev image shown in the grid figure")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)

    if not Path(args.weights).is_file() or not Path(args.data).is_dir():
        print(f"needs the real assets: {args.weights} and {args.data}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    from camkit import bench, viz
    from camkit.data.open import open_dataset
    from camkit.model_spec import load_model

    kind = "mobilenet_v2" if args.symmetric_padding else "mobilenet_v2-tf"
    spec = f"{kind}:{args.weights}"
    loaded = load_model(spec)
    preprocess = loaded.preprocess
    dataset = open_dataset(args.data, split="test", image_size=preprocess.size[0],
                           normalize=(preprocess.mean, preprocess.std))
    result = bench.run_benchmark(loaded, dataset, methods=args.methods, layers=args.layers,
                                 batch_size=10, cost_batch=8, repeats=3, progress=True,
                                 settings={"model": f"{kind}:mobilenet_v2_imagenet.pth",
                                           "data": "imagenet-val-dev50"})
    paths = bench.write_outputs(result, args.out)

    figures = Path(args.figures)
    values = {m: {l: v.get("MaxBoxAccV2") for l, v in per.items()} for m, per in result.quality.items()}
    figure = viz.metric_by_layer_figure(values, "MaxBoxAccV2", args.layers)
    figure.axes[0].set_title("MobileNetV2 on 50 ImageNet val images: MaxBoxAccV2 by layer")
    viz.save_figure(figure, figures / "methods_layers_maxboxaccv2.png", dpi=120)
    example_figure(loaded, dataset, args.methods, args.layers, args.example_image,
                   figures / "methods_layers_example.png")

    print(f"model {spec}\nclassification top-1 {result.classification['top1']:.1f}% "
          f"on {result.classification['images']} images\n")
    print("MaxBoxAccV2 (methods x layers)\n" + bench.quality_markdown(result, "MaxBoxAccV2") + "\n")
    print("GT-known Loc (largest contour, IoU 0.5, best threshold; methods x layers)\n"
          + bench.quality_markdown(result, "GT-known") + "\n")
    print("cost\n" + bench.cost_markdown(result) + "\n")
    print(f"wrote {paths['report']}, {figures / 'methods_layers_maxboxaccv2.png'} and "
          f"{figures / 'methods_layers_example.png'}")
    return 0


def example_figure(loaded, dataset, methods, layers, index, path) -> None:
    """One dev image: each method's map at each layer, with GT and predicted boxes."""
    import camkit
    from camkit import viz
    from camkit.boxes import boxes_from_map

    import warnings

    warnings.simplefilter("ignore", camkit.CAMHeadWarning)  # CAM exists only at the head's layer
    sample = dataset[index]
    explainer = camkit.Explainer(loaded.model, methods=methods, layers=layers, preprocess=loaded.preprocess,
                                 class_names=loaded.class_names)
    exp = explainer(sample["image"][None], target=int(sample["label"]))
    boxes = {key: boxes_from_map(maps[0].numpy(), 0.2) for key, maps in exp.maps.items()}
    figure = viz.explanation_figure(exp, index=0, show_maps=False, boxes=boxes, gt_boxes=sample["boxes"],
                                    panel_size=1.7)
    viz.save_figure(figure, path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
