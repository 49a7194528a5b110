"""MaxBoxAcc V1 + V2 (interval 0.001): camkit's all-thresholds path vs the slow reference, side by side.

    python benchmarks/bench_eval.py [--n 200] [--per-tau-maps 3] [--seed 0]

The same N CAM-like 224x224 maps (bilinear upsamplings of random 7x7 / 14x14 / 28x28 grids, some with
ReLU'd offsets that give several components and holes) with random GT boxes go through

* camkit: ``camkit.boxes.iou_curves`` -> V1 and V2 curves over 1000 taus;
* the reference (``tests/wsol_reference.py``: labelling + Suzuki-Abe tracing + shoelace, per threshold,
  per contour). To keep the run under half an hour it evaluates each *distinct* integer threshold
  ``int(tau*max)`` once (identical thresholds give identical masks) and copies the result to the taus
  that share it; its per-tau cost (as wsolevaluation loops) is measured on ``--per-tau-maps`` maps and
  extrapolated, and printed separately;
* if ``cv2`` is importable, wsolevaluation's own loop (OpenCV findContours per tau, V1 and V2), timed.

Both MaxBoxAcc tables are printed; the script exits with status 1 if they differ.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import wsol_reference as ref  # noqa: E402

from camkit.boxes import box_iou, iou_curves  # noqa: E402

TAUS = np.arange(0, 1, 0.001)
DELTAS = (30, 50, 70)


def make_maps(n, seed):
    rng = np.random.default_rng(seed)
    maps, gts = [], []
    for k in range(n):
        grid = (7, 14, 28)[k % 3]
        low = torch.tensor(rng.random((1, 1, grid, grid)), dtype=torch.float32)
        if k % 4 == 3:
            low = (low - 0.5).clamp(min=0)
        m = F.interpolate(low, size=(224, 224), mode="bilinear", align_corners=False)[0, 0].numpy()
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
        maps.append(m.astype(np.float32))
        x0, y0 = rng.integers(0, 150, 2)
        x1, y1 = x0 + rng.integers(20, 224 - x0), y0 + rng.integers(20, 224 - y0)
        gts.append(np.array([[x0, y0, min(x1, 223), min(y1, 223)]]))
    return maps, gts


def accuracy(curves):
    curves = np.stack(curves)
    return {d: float((curves >= d / 100).sum(0).max() * 100 / len(curves)) for d in DELTAS}


def reference_distinct(m, gt):
    u = ref.to_uint8(m)
    thr = np.trunc(TAUS * float(u.max())).astype(np.int64)
    _, first, inverse = np.unique(thr, return_index=True, return_inverse=True)
    v1, v2 = ref.best_iou_curves(m, gt, TAUS[first])
    return v1[inverse], v2[inverse]


def opencv_loop(cv2, m, gt):
    """wsolevaluation's compute_bboxes_from_scoremaps + IoU, per tau, for V1 and V2."""
    h, w = m.shape
    img = np.expand_dims((m * 255).astype(np.uint8), 2)
    out = {False: [], True: []}
    for multi in (False, True):
        for tau in TAUS:
            _, thr = cv2.threshold(img, int(tau * np.max(img)), 255, cv2.THRESH_BINARY)
            cs = cv2.findContours(thr, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            if len(cs) == 0:
                boxes = [[0, 0, 0, 0]]
            else:
                if not multi:
                    cs = [max(cs, key=cv2.contourArea)]
                boxes = []
                for c in cs:
                    x, y, bw, bh = cv2.boundingRect(c)
                    boxes.append([x, y, min(x + bw, w - 1), min(y + bh, h - 1)])
            out[multi].append(box_iou(np.asarray(boxes), gt).max())
    return np.array(out[False]), np.array(out[True])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="random maps (with boxes and masks) to evaluate")
    parser.add_argument("--per-tau-maps", type=int, default=3,
                        help="maps also checked and timed with the slow per-threshold Python reference")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random maps")
    args = parser.parse_args()
    maps, gts = make_maps(args.n, args.seed)

    try:
        import cv2
    except ImportError:
        cv2 = None
    # interleaved map by map, so that the load of a shared machine hits every column alike
    fast, slow, cv = [], [], []
    t_fast = t_ref = t_cv = 0.0
    for m, g in zip(maps, gts):
        t = time.perf_counter()
        fast.append(iou_curves(m, g, TAUS))
        t_fast += time.perf_counter() - t
        t = time.perf_counter()
        slow.append(reference_distinct(m, g))
        t_ref += time.perf_counter() - t
        if cv2 is not None:
            t = time.perf_counter()
            cv.append(opencv_loop(cv2, m, g))
            t_cv += time.perf_counter() - t

    t = time.perf_counter()
    per_tau = [ref.best_iou_curves(m, g, TAUS) for m, g in zip(maps[:args.per_tau_maps], gts[:args.per_tau_maps])]
    t_per_tau = (time.perf_counter() - t) / max(args.per_tau_maps, 1) if args.per_tau_maps else float("nan")

    rows = {"camkit V1": accuracy([f[0] for f in fast]), "reference V1": accuracy([s[0] for s in slow]),
            "camkit V2": accuracy([f[1] for f in fast]), "reference V2": accuracy([s[1] for s in slow])}
    identical = all(np.array_equal(f[0], s[0]) and np.array_equal(f[1], s[1]) for f, s in zip(fast, slow))
    identical &= all(np.array_equal(fast[k][0], p[0]) and np.array_equal(fast[k][1], p[1])
                     for k, p in enumerate(per_tau))
    print(f"{args.n} maps 224x224, 1000 thresholds, V1 and V2")
    print(f"{'':14}" + "".join(f"{'MaxBoxAcc@' + str(d):>14}" for d in DELTAS) + f"{'mean':>10}")
    for name, acc in rows.items():
        print(f"{name:14}" + "".join(f"{acc[d]:>14.3f}" for d in DELTAS) + f"{np.mean(list(acc.values())):>10.3f}")
    print(f"per-map IoU curves identical (all {args.n} maps, and {args.per_tau_maps} per-tau): {identical}")
    print(f"camkit:                          {t_fast / args.n * 1000:9.1f} ms/map")
    print(f"reference (distinct thresholds): {t_ref / args.n * 1000:9.1f} ms/map   "
          f"speedup x{t_ref / t_fast:.1f}")
    print(f"reference (every tau, as wsolevaluation loops): {t_per_tau * 1000:9.1f} ms/map   "
          f"speedup x{t_per_tau / (t_fast / args.n):.1f}")
    if cv2 is None:
        print("OpenCV not installed: wsolevaluation's own loop not timed")
    else:
        same = all(np.array_equal(f[0], c[0]) and np.array_equal(f[1], c[1]) for f, c in zip(fast, cv))
        print(f"wsolevaluation loop with OpenCV {cv2.__version__}: {t_cv / args.n * 1000:9.1f} ms/map   "
              f"camkit speedup x{t_cv / t_fast:.2f}; identical curves: {same}")
        identical &= same
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
