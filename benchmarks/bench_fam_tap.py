"""FAM and the "Rethinking CAM" tricks (TAP, NWC, PaS) on the learnable synthetic setting, with seeds.

    PYTHONPATH=. python benchmarks/bench_fam_tap.py --quick --threads 1   # one seed, small, a smoke run
    PYTHONPATH=. python benchmarks/bench_fam_tap.py                       # 3 seeds, the table

Setting: :data:`camkit.data.synthetic.LEARNABLE` (24 classes, 48x48, parts of radius 0.6) with
``habitat_p`` 0.8 for training; the test split has uniform context (no class habitat), so top-1 and the
maps measure the object. Every model: the tiny backbone, ``widths=(16, 32, 64, 64)``, the recipe's
``synthetic-cpu`` preset (the same optimisation for all), ``--epochs`` epochs, loop seed = the seed.

Rows (maps explain the ground-truth class; FAM's map is class-agnostic):

* ``CAM``: the ``cam`` recipe (GAP), method ``cam``;
* ``CAM+TAP``: the ``cam`` recipe with ``pool="tap"`` (tau 0.1), method ``cam``;
* ``CAM+NWC``: the GAP model, ``cam`` with ``clamp_negative_weights``;
* ``CAM+PaS``: the GAP model's CAM, boxes by PaS (``boxes_percentile_threshold``, q 90, tau 0.35, the
  largest contour);
* ``TAP+NWC+PaS``: the TAP model, NWC, PaS boxes (the LID 2020 Track-3 combination);
* ``FAM``: the ``fam`` recipe (N 3, K 5, 0.04 / 0.01), method ``fam``; and its ablations
  ``FAM -L_spa`` (``lambda_spa=0``), ``FAM -memory`` (``memory=False``: three 1x1 convs),
  ``FAM -parts`` (``parts=0``).

Columns, each the mean +- the half-width of the 95% t-interval over the seeds:

* ``top-1`` (%) of the model on the test split;
* ``MaxBoxAccV2`` (the threshold sweep of :class:`camkit.metrics.MaxBoxAcc`); for the PaS rows, whose
  threshold is PaS's own, the same mean over IoU 30/50/70 at that single threshold (not a max);
* ``GT-known@0.5``: :func:`camkit.fam_metrics.fixed_threshold_localization`, threshold 0.5 and the
  largest connected component, on FAM's raw ``M`` and on the min-max normalised CAM (half its range);
  for the PaS rows the PaS box (IoU >= 0.5);
* ``PxAP`` (:class:`camkit.metrics.PxAP`) and ``energy out`` (share of the normalised map's energy
  outside the object mask, :func:`camkit.data.synthetic.context_energy_share`): box-rule free, so a PaS
  row repeats its model's values.

Trained models (``--out``/cache/MODEL-seedS-NxE, camkit checkpoints, resumed when present) and each
model-seed's scores are cached. Outputs: ``table.md``, ``results.json``.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import camkit
from camkit.bench.stats import mean_interval
from camkit.boxes import box_iou, boxes_percentile_threshold
from camkit.data.synthetic import LEARNABLE, context_energy_share, make_synthetic
from camkit.fam_metrics import fixed_threshold_localization
from camkit.metrics import MaxBoxAcc, PxAP
from camkit.train.loop import train
from camkit.train.recipes import get_recipe

SETTING = dict(LEARNABLE, habitat_p=0.8)
WIDTHS = (16, 32, 64, 64)
#: model name -> (recipe, model options)
MODELS = {"gap": ("cam", {}), "tap": ("cam", {"pool": "tap"}), "fam": ("fam", {}),
          "fam-nospa": ("fam", {"lambda_spa": 0.0}), "fam-nomem": ("fam", {"memory": False}),
          "fam-noparts": ("fam", {"parts": 0})}
NWC = {"cam": {"clamp_negative_weights": True}}
#: row -> (model, method, method options, box rule: "sweep" or "pas")
ROWS = {"CAM": ("gap", "cam", None, "sweep"), "CAM+TAP": ("tap", "cam", None, "sweep"),
        "CAM+NWC": ("gap", "cam", NWC, "sweep"), "CAM+PaS": ("gap", "cam", None, "pas"),
        "TAP+NWC+PaS": ("tap", "cam", NWC, "pas"), "FAM": ("fam", "fam", None, "sweep"),
        "FAM -L_spa": ("fam-nospa", "fam", None, "sweep"), "FAM -memory": ("fam-nomem", "fam", None, "sweep"),
        "FAM -parts": ("fam-noparts", "fam", None, "sweep")}
METRICS = ("top1", "MaxBoxAccV2", "GT-known@0.5", "PxAP", "energy_out")


def train_cached(name, train_set, seed, args):
    recipe, options = MODELS[name]
    size = SETTING["image_size"]
    config = get_recipe(recipe).make_config(
        "synthetic-cpu", epochs=args.epochs, resize_size=size, crop_size=size,
        lr_step_epochs=max(1, int(0.75 * args.epochs)), seed=seed, eval_every=0, progress=False)
    folder = Path(args.out) / "cache" / f"{name}-seed{seed}-{args.train}x{args.epochs}"
    result = train(recipe, train_set, backbone="tiny", num_classes=SETTING["num_classes"], config=config,
                   out_dir=folder, model_options=dict(options, widths=WIDTHS), resume=True)
    return result.model.eval(), config


def explain_all(model, images, labels, method, options, normalize, batch=250):
    """Maps ``(N, S, S)`` of ``method`` for the ground-truth classes, and the logits ``(N, K)``."""
    maps, logits = [], []
    for start in range(0, len(images), batch):
        exp = camkit.explain(model, images[start:start + batch], methods=method, target=labels[start:start + batch],
                             method_options=options, normalize=normalize)
        maps.append(exp[method])
        logits.append(exp.logits)
    return torch.cat(maps), torch.cat(logits)


def pas_scores(maps, boxes):
    """PaS's single-threshold box accuracies: the mean over IoU 30/50/70 and the one at 50 (%)."""
    ious = np.asarray([box_iou(boxes_percentile_threshold(m.numpy(), tau=0.35, q=90), b).max()
                       for m, b in zip(maps, boxes)])
    return float(np.mean([100 * np.mean(ious >= d / 100) for d in (30, 50, 70)])), float(100 * np.mean(ious >= 0.5))


def score_rows(seed, args):
    folder = Path(args.out) / "cache" / f"scores-seed{seed}-{args.train}x{args.epochs}x{args.test}.json"
    if folder.exists():
        return json.loads(folder.read_text())
    train_set = make_synthetic(args.train, context="habitat", seed=1000 * seed + 1, **SETTING)
    test_set = make_synthetic(args.test, context="uniform", seed=1000 * seed + 2, **SETTING)
    models, config = {}, None
    for name in dict.fromkeys(model for model, *_ in ROWS.values()):
        models[name], config = train_cached(name, train_set, seed, args)
    mean, std = torch.tensor(config.mean).view(1, 3, 1, 1), torch.tensor(config.std).view(1, 3, 1, 1)
    images = (test_set.images.float() / 255 - mean) / std
    labels, boxes, masks = test_set.labels, test_set.boxes, test_set.masks
    results = []
    for row, (model_name, method, options, rule) in ROWS.items():
        model = models[model_name]
        maps, logits = explain_all(model, images, labels, method, options, normalize=True)
        raw = explain_all(model, images, labels, method, options, normalize=False)[0] if method == "fam" else maps
        entry = dict(row=row, seed=seed, top1=float(100 * (logits.argmax(1) == labels).double().mean()),
                     PxAP=PxAP().update(maps, masks.to(torch.uint8)).compute()["PxAP"],
                     energy_out=float(context_energy_share(maps, masks).mean()))
        if rule == "pas":
            entry["MaxBoxAccV2"], entry["GT-known@0.5"] = pas_scores(maps, boxes)
        else:
            entry["MaxBoxAccV2"] = MaxBoxAcc().update(maps, boxes[:, None, :]).compute()["MaxBoxAccV2"]
            entry["GT-known@0.5"] = fixed_threshold_localization(raw, boxes[:, None, :])["GT-known"]
        results.append(entry)
    folder.write_text(json.dumps(results))
    return results


def markdown(results):
    lines = ["| row | top-1 | MaxBoxAccV2 | GT-known@0.5 | PxAP | energy out |", "|---|---|---|---|---|---|"]
    table = []
    for row in ROWS:
        group = [r for r in results if r["row"] == row]
        entry = dict(row=row, seeds=len(group))
        for metric in METRICS:
            entry[metric], entry[metric + "_ci"] = mean_interval([r[metric] for r in group])
        table.append(entry)
        cells = [f"{entry[m]:.3f} ± {entry[m + '_ci']:.3f}" if m == "energy_out" else
                 f"{entry[m]:.1f} ± {entry[m + '_ci']:.1f}" for m in METRICS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines), table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, few images and epochs (a smoke run)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 3; 1 with --quick)")
    parser.add_argument("--train", type=int, default=None, help="training images (default 2500; 300 with --quick)")
    parser.add_argument("--test", type=int, default=None, help="test images (default 1000; 100 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per model (default 10; 2 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", default="outputs/bench_fam_tap", help="folder for the cache and the table")
    args = parser.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.train = args.train or (300 if args.quick else 2500)
    args.test = args.test or (100 if args.quick else 1000)
    args.epochs = args.epochs or (2 if args.quick else 10)
    torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    results = []
    for seed in range(args.seeds):
        results += score_rows(seed, args)
        print(f"[{time.time() - start:6.0f}s] seed {seed} done", flush=True)
    text, table = markdown(results)
    wall = time.time() - start
    (out / "table.md").write_text(text + f"\n\nwall time {wall:.0f} s ({vars(args)})\n")
    (out / "results.json").write_text(json.dumps(dict(args=vars(args), wall_s=wall, per_seed=results, table=table),
                                                 indent=1))
    print(text)
    print(f"wall time {wall:.0f} s; outputs in {out}")


if __name__ == "__main__":
    main()
