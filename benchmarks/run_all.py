"""Benchmark every CAM method at every layer: a thin wrapper around ``camkit benchmark``.

Same flags as ``camkit benchmark`` (see ``python benchmarks/run_all.py --help``). Without arguments it
runs the real MobileNetV2 on the 50 annotated ImageNet dev images in ``../shared/assets`` and writes
to ``outputs/benchmark/``::

    python benchmarks/run_all.py
    python benchmarks/run_all.py --model efficientnet-lite0 --data ../shared/assets/imagenet-val-dev50 \\
        --layers _blocks.4 _blocks.10 _swish --out outputs/benchmark-lite0

Timings are measured side by side (each method against the bare forward + grad floor, interleaved);
absolute images/s depend on the machine, which the report records.
"""
import sys
from pathlib import Path

from camkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
DEFAULT = ["benchmark", "--model", f"mobilenet_v2-tf:{ASSETS / 'weights' / 'mobilenet_v2_imagenet.pth'}",
           "--data", str(ASSETS / "imagenet-val-dev50"), "--layers", "features.6", "features.13",
           "features.18", "--out", str(ROOT / "outputs" / "benchmark")]

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv:
        if not ASSETS.is_dir():
            sys.exit(f"no arguments given and the default assets are missing ({ASSETS}); "
                     f"see python {sys.argv[0]} --help")
        argv = DEFAULT
    elif argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["benchmark"] + argv
    elif argv[0] in ("-h", "--help"):
        argv = ["benchmark", "--help"]
    sys.exit(main(argv))
