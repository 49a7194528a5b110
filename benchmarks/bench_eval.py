"""Evaluation throughput, side by side: camkit's box curves against wsolevaluation's loop, and end to end.

    python benchmarks/bench_eval.py [--n 200] [--per-tau-maps 3] [--seed 0]          # V1 + V2 vs reference
    python benchmarks/bench_eval.py --modes [--maps 4] [--rounds 3] [--sizes 224 448]  # each mode alone
        [--kernels compiled numpy]                        # numba kernels and the numpy fallback, side by side
    python benchmarks/bench_eval.py --first-call          # numba's compile / cache-load cost, fresh processes
    python benchmarks/bench_eval.py --end-to-end [--workers 0 1 2] [--device cpu] [--json out.json]

Default run: the same N CAM-like 224x224 maps (bilinear upsamplings of random 7x7 / 14x14 / 28x28 grids,
some with ReLU'd offsets that give several components and holes) with random GT boxes go through

* camkit: ``camkit.boxes.iou_curves`` -> V1 and V2 curves over 1000 taus;
* the reference (``tests/wsol_reference.py``: labelling + Suzuki-Abe tracing + shoelace, per threshold,
  per contour). To keep the run under half an hour it evaluates each *distinct* integer threshold
  ``int(tau*max)`` once (identical thresholds give identical masks) and copies the result to the taus
  that share it; its per-tau cost (as wsolevaluation loops) is measured on ``--per-tau-maps`` maps and
  extrapolated, and printed separately;
* if ``cv2`` is importable, wsolevaluation's own loop (OpenCV findContours per tau, V1 and V2), timed.

Both MaxBoxAcc tables are printed; the script exits with status 1 if they differ.

``--modes``: per map, one core, V1 alone, V2 alone and both, camkit against wsolevaluation's OpenCV loop
(which runs V1 and V2 as two passes) on four kinds of maps (smooth CAM-like, noisy with many small
components, plateaus, the default generator's) at each size; the median over ``--rounds`` rounds of the
per-map time, interleaved so that the load of a shared machine hits both alike; exit 1 if any curve
differs from OpenCV's. ``--kernels compiled numpy`` times camkit's numba kernels (``pip install
camkit[fast]``) and its numpy fallback in the same loop; the first calls (numba's compilation, or
loading its cache) happen before the timing; ``--first-call`` measures them in fresh processes (an
empty ``NUMBA_CACHE_DIR``, then the cache it left).

``--end-to-end``: ``camkit.evaluate`` wall time against the engine alone (the same Explainer calls on the
same batches, no metrics) on the real MobileNetV2 and the 50 dev images of ``../shared/assets``, five
methods x features.6/.13/.18, for each ``--workers`` count; the results must be identical for every
count (exit 1 otherwise); peak RSS of the process and of its metric workers.
"""
import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's camkit, not an installed one
import wsol_reference as ref  # noqa: E402

from camkit.boxes import _compiled, best_iou_per_threshold, box_iou, iou_curves  # noqa: E402

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


def opencv_loop(cv2, m, gt, modes=(False, True)):
    """wsolevaluation's compute_bboxes_from_scoremaps + IoU, per tau, for V1 and/or V2 (one pass each)."""
    h, w = m.shape
    img = np.expand_dims((m * 255).astype(np.uint8), 2)
    out = {False: [], True: []}
    for multi in modes:
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


def main_reference(args):
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


# ------------------------------------------------------------------------------ --modes: one map at a time
MODES = {"V1": (False,), "V2": (True,), "both": (False, True)}


def kind_maps(kind, n, size, seed):
    """``n`` seeded (size, size) float32 maps in [0, 1] of one kind, with one random GT box each."""
    rng = np.random.default_rng([seed, size, ["smooth", "noisy", "plateaus", "default"].index(kind)])
    if kind == "default":
        maps, gts = make_maps(n, seed)
        if size != 224:
            maps = [F.interpolate(torch.from_numpy(m)[None, None], size=(size, size), mode="bilinear",
                                  align_corners=False)[0, 0].clamp(0, 1).numpy() for m in maps]
            gts = [g * size // 224 for g in gts]
        return maps, gts
    maps, gts = [], []
    for _ in range(n):
        low = torch.tensor(rng.random((1, 1, 7, 7)), dtype=torch.float32)
        m = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
        if kind == "noisy":        # many small components and holes
            m = 0.6 * m + 0.4 * rng.random((size, size))
        elif kind == "plateaus":   # a few flat levels: ties and wide plateaus
            m = np.floor(m * 6) / 6
        m = (m / max(float(m.max()), 1e-12)).astype(np.float32)
        x0, y0 = rng.integers(0, size * 2 // 3, 2)
        x1, y1 = x0 + rng.integers(size // 10, size - x0), y0 + rng.integers(size // 10, size - y0)
        maps.append(m)
        gts.append(np.array([[x0, y0, min(x1, size - 1), min(y1, size - 1)]]))
    return maps, gts


KERNELS = ("auto", "compiled", "numpy")


def use_kernel(kernel):
    """Select camkit's box kernels: ``compiled`` (numba, ``pip install camkit[fast]``), ``numpy`` (the
    fallback, ``CAMKIT_NO_NUMBA=1``) or ``auto`` (compiled when numba imports)."""
    if kernel == "compiled" and not _compiled.AVAILABLE:
        raise SystemExit("--kernels compiled needs numba: pip install camkit[fast] (or numba>=0.60)")
    if kernel == "numpy":
        os.environ["CAMKIT_NO_NUMBA"] = "1"
    else:
        os.environ.pop("CAMKIT_NO_NUMBA", None)


def camkit_mode(mode, m, gt):
    if mode == "both":
        return iou_curves(m, gt, TAUS)
    return tuple(best_iou_per_threshold(m, gt, TAUS, multi_contour=multi) for multi in MODES[mode])


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main_modes(args):
    import cv2
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    kernels = args.kernels
    figures = {"opencv": cv2.__version__, "rounds": args.rounds, "maps": args.maps, "kernels": kernels, "rows": []}
    ok = True
    # first calls (numba compiles or loads its cache; shape-independent) are not timed
    warm_maps, warm_gts = kind_maps("smooth", 1, 32, args.seed)
    for kernel in kernels:
        use_kernel(kernel)
        for mode in MODES:
            camkit_mode(mode, warm_maps[0], warm_gts[0])
    print(f"per map, one core, 1000 taus; median of {args.rounds} rounds over {args.maps} maps per cell; "
          f"numba {'available' if _compiled.AVAILABLE else 'not installed'}")
    print(f"{'kind':9} {'size':>5} {'mode':>5}" + "".join(f" {k + ' ms':>12}" for k in kernels)
          + f" {'OpenCV ms':>10}" + "".join(f" {'x ' + k:>11}" for k in kernels) + f" {'same':>5}")
    for size in args.sizes:
        for kind in ("smooth", "noisy", "plateaus", "default"):
            maps, gts = kind_maps(kind, args.maps, size, args.seed)
            for mode, multis in MODES.items():
                ours, theirs = {k: [] for k in kernels}, []
                for _ in range(args.rounds):
                    t_ours, t_cv = dict.fromkeys(kernels, 0.0), 0.0
                    for m, g in zip(maps, gts):   # interleaved map by map
                        t, slow = _timed(opencv_loop, cv2, m, g, multis)
                        t_cv += t
                        slow = [slow[int(multi)] for multi in multis]
                        for kernel in kernels:
                            use_kernel(kernel)
                            t, fast = _timed(camkit_mode, mode, m, g)
                            t_ours[kernel] += t
                            fast = [fast[int(multi)] for multi in multis] if mode == "both" else fast
                            ok &= all(np.array_equal(a, b) for a, b in zip(fast, slow))
                    for kernel in kernels:
                        ours[kernel].append(t_ours[kernel] / len(maps))
                    theirs.append(t_cv / len(maps))
                row = {"kind": kind, "size": size, "mode": mode,
                       "opencv_ms": 1000 * float(np.median(theirs)),
                       "kernels_ms": {k: 1000 * float(np.median(ours[k])) for k in kernels}}
                row["camkit_ms"] = row["kernels_ms"][kernels[0]]
                row["speedup"] = row["opencv_ms"] / row["camkit_ms"]
                row["speedups"] = {k: row["opencv_ms"] / v for k, v in row["kernels_ms"].items()}
                figures["rows"].append(row)
                print(f"{kind:9} {size:>5} {mode:>5}" + "".join(f" {row['kernels_ms'][k]:>12.2f}" for k in kernels)
                      + f" {row['opencv_ms']:>10.2f}" + "".join(f" {row['speedups'][k]:>10.1f}x" for k in kernels)
                      + f" {str(ok):>5}", flush=True)
    use_kernel("auto")
    figures["identical_to_opencv"] = bool(ok)
    return figures, ok


# ----------------------------------------------------------------- --first-call: numba's compile and cache
FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np
from camkit.boxes import best_iou_per_threshold, iou_curves
imported = time.perf_counter()
m = np.random.default_rng(0).random((40, 40))
def calls():
    iou_curves(m, [[2, 3, 20, 30]])
    best_iou_per_threshold(m, [[2, 3, 20, 30]], multi_contour=False)
calls()
first = time.perf_counter()
calls()
print(imported - start, first - imported, time.perf_counter() - first)
"""


def main_first_call(args):
    """Fresh processes: import camkit.boxes, then the first and second V1 + V2 calls on a 40x40 map, with an
    empty numba cache (compiling), with the cache it left (loading), and with ``CAMKIT_NO_NUMBA=1``."""
    import subprocess
    import tempfile
    root = str(Path(__file__).resolve().parents[1])
    figures = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, PYTHONPATH=root, NUMBA_CACHE_DIR=cache)
        env.pop("CAMKIT_NO_NUMBA", None)
        runs = {"compiled, empty cache": env, "compiled, cached": env, "numpy (CAMKIT_NO_NUMBA=1)":
                dict(env, CAMKIT_NO_NUMBA="1")}
        print(f"fresh process, 40x40 map, V1 + V2 (numba {'available' if _compiled.AVAILABLE else 'not installed'})")
        for name, run_env in runs.items():
            out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=run_env, capture_output=True, text=True,
                                 check=True)
            imported, first, second = (float(v) for v in out.stdout.split())
            figures[name] = {"import_s": imported, "first_call_s": first, "second_call_s": second}
            print(f"{name:28} import {imported:6.2f} s   first call {first:6.2f} s   second call "
                  f"{1000 * second:7.1f} ms")
    return figures, True


# -------------------------------------------------------------------------- --end-to-end: the real model
E2E_METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")
E2E_LAYERS = ("features.6", "features.13", "features.18")
ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"


class Dev50(torch.utils.data.Dataset):
    """The 50 dev images of ``shared/assets`` resized to 224x224 (mean = std = 0.5), boxes rescaled."""

    def __init__(self, folder):
        from PIL import Image
        records = json.loads((folder / "annotations.json").read_text())
        self.items = []
        for record in records:
            with Image.open(folder / "images" / record["file"]) as picture:
                rgb = picture.convert("RGB").resize((224, 224), Image.BILINEAR)
            pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
            scale = np.array([224 / record["width"], 224 / record["height"]] * 2)
            boxes = np.clip(np.floor(np.asarray(record["boxes_xyxy"]) * scale), 0, 223).astype(np.int64)
            self.items.append({"image": (pixels - 0.5) / 0.5, "label": record["label"],
                               "boxes": torch.from_numpy(boxes)})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _peak_rss_mib(who):
    return resource.getrusage(who).ru_maxrss / 1024


def main_end_to_end(args):
    import torchvision

    import camkit
    warnings.filterwarnings("ignore", category=camkit.CAMHeadWarning)   # CAM has no head at .6 / .13
    from camkit.data.wsol import collate_wsol

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(ASSETS / "weights" / "mobilenet_v2_imagenet.pth", map_location="cpu",
                                     weights_only=True))
    model = model.eval().to(args.device)
    dataset = Dev50(ASSETS / "imagenet-val-dev50")
    options = dict(methods=E2E_METHODS, layers=E2E_LAYERS)
    explainer = camkit.Explainer(model, **options)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_wsol)

    def engine_alone():
        for batch in loader:
            explanation = explainer(batch["image"].to(args.device), target=batch["label"])
            for maps in explanation.maps.values():
                maps.sum().item()   # wait for the device, as the metric stage does

    def evaluate(workers):
        return camkit.evaluate(model, dataset, batch_size=args.batch_size, progress=False,
                               metric_workers=workers, **options)

    engine_alone()   # warm-up (shape caches, first-call costs)
    figures = {"device": args.device, "images": len(dataset), "rounds": args.rounds, "runs": {}}
    engine, runs, tables = [], {w: [] for w in args.workers}, {}
    for _ in range(args.rounds):   # interleaved rounds
        engine.append(_timed(engine_alone)[0])
        for workers in args.workers:
            t, tables[workers] = _timed(evaluate, workers)
            runs[workers].append(t)
    ok = all(tables[w] == tables[args.workers[0]] for w in args.workers)
    figures["engine_s"] = float(np.median(engine))
    print(f"MobileNetV2, {len(dataset)} images, {len(E2E_METHODS)} methods x {len(E2E_LAYERS)} layers, batch "
          f"{args.batch_size}, {args.device}; median of {args.rounds} rounds")
    print(f"engine alone: {figures['engine_s']:.2f} s")
    for workers in args.workers:
        wall = float(np.median(runs[workers]))
        figures["runs"][str(workers)] = {"evaluate_s": wall, "ratio_to_engine": wall / figures["engine_s"]}
        print(f"evaluate, metric_workers={workers}: {wall:.2f} s = {wall / figures['engine_s']:.2f}x the engine")
    figures["peak_rss_mib"] = {"process": _peak_rss_mib(resource.RUSAGE_SELF),
                               "largest_worker": _peak_rss_mib(resource.RUSAGE_CHILDREN)}
    figures["identical_for_every_worker_count"] = bool(ok)
    print(f"peak RSS: process {figures['peak_rss_mib']['process']:.0f} MiB, largest metric worker "
          f"{figures['peak_rss_mib']['largest_worker']:.0f} MiB; tables identical for every worker count: {ok}")
    return figures, ok


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="random maps (with boxes and masks) to evaluate")
    parser.add_argument("--per-tau-maps", type=int, default=3,
                        help="maps also checked and timed with the slow per-threshold Python reference")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random maps")
    parser.add_argument("--modes", action="store_true", help="each mode alone vs OpenCV, four kinds of maps")
    parser.add_argument("--maps", type=int, default=4, help="--modes: maps per kind and size")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (the median is reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="map sides for --modes")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=["auto"],
                        help="--modes: camkit's box kernels to time side by side (compiled = numba, numpy = "
                             "the fallback, auto = compiled when numba imports)")
    parser.add_argument("--first-call", action="store_true",
                        help="numba's first-call cost in fresh processes: compiling, loading its cache, numpy")
    parser.add_argument("--end-to-end", action="store_true", help="camkit.evaluate vs the engine alone")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="metric worker counts compared by --end-to-end")
    parser.add_argument("--device", default="cpu", help="torch device of the engine for --end-to-end")
    parser.add_argument("--batch-size", type=int, default=10, help="images per engine call for --end-to-end")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.modes:
        figures, ok = main_modes(args)
    elif args.first_call:
        figures, ok = main_first_call(args)
    elif args.end_to_end:
        figures, ok = main_end_to_end(args)
    else:
        return main_reference(args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
