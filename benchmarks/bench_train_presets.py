"""Wall time of the literature training presets on this machine, per step and extrapolated to CUB.

The presets that reproduce papers (``rethinking-vgg16-tap``, ``cub-vgg16``, FAM's ``paper-input``) train
VGG16 / ResNet-50 at 224x224 on CUB-200-2011 (5,994 training images) for 10-200 epochs: GPU jobs. To
say what they cost without the dataset, each runs through the real ``camkit train`` command on
synthetic images for ``--steps`` steps at the preset's batch size and crop (random init, so no weights
are downloaded), logging every step; the seconds per step are the median gap between the step
records after the first. The epoch and full-run times are that figure times the CUB steps::

    python benchmarks/bench_train_presets.py [--steps 4] [--threads 2]
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from camkit.train import get_recipe

ROOT = Path(__file__).resolve().parents[1]
CUB_TRAIN_IMAGES = 5994
#: (recipe, preset, backbone, extra ``camkit train`` arguments)
PRESETS = [
    ("cam", "rethinking-vgg16-tap", "vgg16", ["--pool", "tap"]),
    ("cicam", "cub-vgg16", "vgg16", []),
    ("fam", "paper-input", "resnet50", []),
]


def time_preset(recipe, preset, backbone, extra, steps, threads):
    """``(batch size, epochs, seconds per step, wall seconds of the run)`` of one preset."""
    config = get_recipe(recipe).make_config(preset)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "camkit", "train", recipe, "--preset", preset, "--backbone", backbone,
                   "--data", f"synthetic:num_images={config.batch_size * steps},image_size=64",
                   "--eval-data", "synthetic:num_images=4,image_size=64", "--epochs", "1",
                   "--set", "log_every=1", "--workers", "0", "--no-progress", "--out", out, *extra]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    stamps = [r["time"] for r in records if r.get("event") == "train"]
    per_step = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    return config.batch_size, config.epochs, per_step, wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps per preset (default 4; >= 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be >= 3 (the first step is not timed)")
    print(f"| recipe | preset | backbone | batch | s / step | CUB epoch ({CUB_TRAIN_IMAGES} images) | "
          f"full preset | run wall s |\n|---|---|---|---|---|---|---|---|")
    for recipe, preset, backbone, extra in PRESETS:
        batch, epochs, per_step, wall = time_preset(recipe, preset, backbone, extra, args.steps, args.threads)
        epoch_h = math.ceil(CUB_TRAIN_IMAGES / batch) * per_step / 3600
        print(f"| {recipe} | {preset} | {backbone} | {batch} | {per_step:.1f} | {epoch_h:.1f} h | "
              f"{epochs} epochs: {epoch_h * epochs / 24:.1f} days | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
