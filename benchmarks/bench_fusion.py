"""Fusion rules against single layers on the real MobileNetV2 and the 50 annotated dev images.

    PYTHONPATH=. python benchmarks/bench_fusion.py [--faithfulness] [--limit N]

The TF-padded MobileNetV2 of ``../shared/assets/weights``, wsolevaluation protocol (224x224 without
crop, ground-truth-class maps): Grad-CAM, PCS and BagCAMs at features.6 / .13 / .18 and each method
fused over the three layers with ``camkit.fuse``'s rules, through ``camkit.evaluate(fuse_rules=...)``.
``--faithfulness`` adds deletion / insertion (10 steps), ROAD at 20 / 50 / 80 % and Average Drop /
Increase in Confidence (slow on a CPU: ROAD solves one imputation per image, percentile and order).
"""
import argparse
import warnings

import torch

import camkit
from camkit.data.open import open_dataset
from camkit.evaluation import format_table
from camkit.model_spec import load_model

COLUMNS = ("MaxBoxAccV2", "GT-known", "Top-1 Loc", "Deletion", "Insertion", "ROAD", "Average Drop",
           "Increase in Confidence")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="../shared/assets/weights/mobilenet_v2_imagenet.pth",
                        help="the real MobileNetV2 state_dict (TF SAME padding restored)")
    parser.add_argument("--data", default="../shared/assets/imagenet-val-dev50",
                        help="an annotated folder (annotations.json) to evaluate on")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also compute deletion/insertion, ROAD and Average Drop (slow on CPU)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    args = parser.parse_args()
    warnings.simplefilter("ignore", camkit.CAMHeadWarning)
    loaded = load_model(f"mobilenet_v2-tf:{args.weights}")
    preprocess = loaded.preprocess
    dataset = open_dataset(args.data, split="test", image_size=preprocess.size[0],
                           normalize=(preprocess.mean, preprocess.std))
    table = camkit.evaluate(loaded.model, dataset, methods=("gradcam", "pcs", "bagcams"),
                            layers=("features.6", "features.13", "features.18"),
                            fuse_rules=("max", "mean", "layercam"), batch_size=10, progress=False,
                            faithfulness=args.faithfulness, limit=args.limit,
                            faithfulness_options={"steps": 10, "percentiles": (20, 50, 80)})
    print(format_table(table, columns=COLUMNS))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
