"""Soak test of the explanation engine: does memory stay flat over many calls?

Scenarios, each with and without BagCAMs (whose guided backward puts tensor hooks in the graph):

* **tiny CNN**: one ``camkit.Explainer`` with every standard method at its four blocks, ``--calls`` calls
  on a ``(--batch, 3, --size, --size)`` batch;
* **resnet18**: the same on torchvision's ResNet-18 (random init, ``weights=None``) at ``layer1``-``layer4``;
* **evaluate**: ``--eval-runs`` runs of ``camkit.evaluate`` of the tiny CNN at ``block3`` and ``block4``
  on the same ``--eval-images`` synthetic images (``synthetic:num_images=N,image_size=--size``), after a
  ``--eval-warmup-runs`` warm-up runs; RSS read after each run.

Reported per scenario: the RSS slope in MiB per 100 calls (per 100 images for ``evaluate``): the least
squares slope over the samples after ``--warmup`` calls (evaluate: over the RSS at the start and the end
of each run); the RSS growth over those samples; and the live
``ActivationCapture`` and ``torch.Tensor`` objects after ``gc.collect()``, as the change from before the
scenario. Goal: a flat slope (< 0.1 MiB per 100 calls) and no live object left behind.

    python benchmarks/bench_soak.py                      # 1000 calls per scenario
    python benchmarks/bench_soak.py --calls 100 --eval-images 64 --threads 1   # a short run
"""
import argparse
import ctypes
import ctypes.util
import gc
import os
import time
import warnings

import numpy as np
import torch
import torchvision
from torch import nn

import camkit
from camkit.capture import ActivationCapture
from camkit.data.open import num_classes_of, open_dataset
from camkit.methods import STANDARD_METHODS

WITHOUT_BAGCAMS = tuple(m for m in STANDARD_METHODS if m != "bagcams")
GOAL_MIB_PER_100 = 0.1


class TinyCNN(nn.Module):
    """Four conv-ReLU blocks (8, 16, 16, 32 channels; two stride-2) -> GAP -> Linear(32, classes)."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        widths = (3, 8, 16, 16, 32)
        for index in range(4):
            stride = 2 if index in (1, 3) else 1
            self.add_module(f"block{index + 1}", nn.Sequential(
                nn.Conv2d(widths[index], widths[index + 1], 3, stride=stride, padding=1), nn.ReLU(inplace=True)))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _malloc_trim():
    """glibc's ``malloc_trim``, which returns freed heap pages to the OS, or ``None`` elsewhere."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


def rss_mib() -> float:
    """The resident set size of this process in MiB (Linux ``/proc/self/statm``), after returning
    freed heap pages to the OS so that allocator caching does not hide or fake growth."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def live_objects() -> tuple:
    """``(ActivationCapture, torch.Tensor)`` objects alive after a full garbage collection."""
    gc.collect()
    with warnings.catch_warnings():          # isinstance on torch.distributed's deprecated aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        objects = gc.get_objects()
        return (sum(isinstance(o, ActivationCapture) for o in objects),
                sum(isinstance(o, torch.Tensor) for o in objects))


def slope_per_100(samples, warmup: int) -> tuple:
    """Least-squares RSS slope (MiB per 100 steps) and growth (MiB) of ``[(step, rss)]`` after ``warmup``."""
    kept = np.array([(step, rss) for step, rss in samples if step >= warmup], dtype=np.float64)
    if len(kept) < 2:
        return float("nan"), float("nan")
    slope = np.polyfit(kept[:, 0], kept[:, 1], 1)[0]
    return 100 * slope, kept[-1, 1] - kept[0, 1]


def soak_calls(model, layers, methods, batch, calls: int, warmup: int) -> dict:
    """``calls`` calls of one Explainer; RSS sampled after every call."""
    before = live_objects()
    explainer = camkit.Explainer(model, methods=methods, layers=layers)
    samples = []
    start = time.perf_counter()
    for step in range(calls):
        explainer(batch)
        samples.append((step, rss_mib()))
    seconds = time.perf_counter() - start
    del explainer
    after = live_objects()
    slope, growth = slope_per_100(samples, warmup)
    return dict(slope=slope, growth=growth, captures=after[0] - before[0], tensors=after[1] - before[1],
                seconds=seconds, steps=calls)


def soak_evaluate(methods, images: int, runs: int, warmup_runs: int, size: int, batch_size: int) -> dict:
    """``runs`` evaluations of a tiny CNN on the same ``images`` synthetic images, RSS read after each.

    ``warmup_runs`` runs go first (first-use costs: lazy imports, allocator pools). Within a run RSS
    saw-tooths by several MiB with the allocator, whatever the number of images, so the slope is
    fitted to the RSS at the end of each run against the images done: what stays behind per image,
    or waits for a full garbage collection, shows as a trend.
    """
    dataset = open_dataset(f"synthetic:num_images={images},image_size={size}",
                           normalize=((0.5,) * 3, (0.25,) * 3))
    torch.manual_seed(0)
    model = TinyCNN(num_classes_of(dataset)).eval()
    options = dict(methods=methods, layers=("block3", "block4"), batch_size=batch_size, cam_curve_interval=0.01,
                   progress=False)
    for _ in range(warmup_runs):
        camkit.evaluate(model, dataset, **options)
    before = live_objects()
    samples = [(0, rss_mib())]
    start = time.perf_counter()
    for run in range(runs):
        camkit.evaluate(model, dataset, **options)
        samples.append(((run + 1) * len(dataset), rss_mib()))
    seconds = time.perf_counter() - start
    after = live_objects()
    slope, growth = slope_per_100(samples, 0)
    return dict(slope=slope, growth=growth, captures=after[0] - before[0], tensors=after[1] - before[1],
                seconds=seconds, steps=runs * len(dataset))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000,
                        help="explanation calls per model scenario (default 1000)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="calls left out of the slope fit (default 100)")
    parser.add_argument("--batch", type=int, default=2, help="images per explanation call (default 2)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--eval-images", type=int, default=200,
                        help="synthetic images for the evaluate scenario; 0 skips it (default 200)")
    parser.add_argument("--eval-runs", type=int, default=5,
                        help="evaluate runs over the same images; the slope is fitted to the RSS after "
                             "each (default 5)")
    parser.add_argument("--eval-warmup-runs", type=int, default=2,
                        help="evaluate runs before the measured ones, left out of the fit (default 2)")
    parser.add_argument("--eval-batch", type=int, default=8, help="batch size of evaluate (default 8)")
    parser.add_argument("--models", nargs="*", choices=("tiny", "resnet18"), default=["tiny", "resnet18"],
                        help="model scenarios to run (default both; --models alone runs only evaluate)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.calls <= args.warmup + 1:
        parser.error(f"--calls ({args.calls}) must exceed --warmup ({args.warmup}) by at least 2 to fit a slope")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", camkit.CAMHeadWarning)     # CAM is skipped at the inner layers
    warnings.filterwarnings("ignore", message=".*target logit.*")  # BagCAMs' negative-logit notice

    torch.manual_seed(0)
    models = {
        "tiny": (TinyCNN().eval(), ("block1", "block2", "block3", "block4")),
        "resnet18": (torchvision.models.resnet18(weights=None).eval(), ("layer1", "layer2", "layer3", "layer4")),
    }
    batch = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    for name in args.models:
        model, layers = models[name]
        for methods in (STANDARD_METHODS, WITHOUT_BAGCAMS):
            label = f"{name}, {'all five' if 'bagcams' in methods else 'without bagcams'} x 4 layers"
            rows.append((label, soak_calls(model, layers, methods, batch, args.calls, args.warmup)))
    if args.eval_images:
        for methods in (STANDARD_METHODS, WITHOUT_BAGCAMS):
            label = (f"evaluate {args.eval_runs} x {args.eval_images} images, "
                     f"{'all five' if 'bagcams' in methods else 'without bagcams'}")
            rows.append((label, soak_evaluate(methods, args.eval_images, args.eval_runs, args.eval_warmup_runs,
                                              args.size, args.eval_batch)))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} at "
          f"{args.size}x{args.size}, {args.calls} calls, slope fitted after {args.warmup} warm-up calls "
          f"(evaluate: per 100 images)")
    print("| scenario | steps | s | RSS slope (MiB/100) | RSS growth (MiB) | live ActivationCapture | live tensors |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['steps']} | {r['seconds']:.1f} | {r['slope']:+.3f} | {r['growth']:+.1f} | "
              f"{r['captures']:+d} | {r['tensors']:+d} |")
    flat = all(r["slope"] < GOAL_MIB_PER_100 and r["captures"] == 0 for _, r in rows)
    print(f"goal (slope < {GOAL_MIB_PER_100} MiB per 100 calls, no live capture): {'met' if flat else 'NOT met'}")
    return 0 if flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
