"""KD-CI-CAM on the synthetic benchmark: does the student beat both of its teachers?

    PYTHONPATH=. python examples/distill_synthetic.py --quick       # one seed, small: a check that it runs
    PYTHONPATH=. python examples/distill_synthetic.py               # 3 seeds, 2500 images, 10 epochs

The data is the benchmark's learnable setting (:data:`camkit.data.synthetic.LEARNABLE`: 24 classes,
48x48 images, class parts), trained with ``habitat_p`` 0.8 (each class on its own texture 80% of the
time). Per seed the script trains, on CPU with camkit's loop, the tiny backbone
(``widths=(16, 32, 64, 64)``) and each recipe's ``synthetic-cpu`` preset:

* ``ci-cam``: the vanilla CI-CAM (recipe ``cicam``);
* ``cls teacher``: ``kd-cls-teacher`` (CI-CAM + CE(s_fg) + area loss);
* ``loc teacher``: ``kd-loc-teacher`` (CI-CAM + CE(s_fg - s_bg) + aux);
* ``student``: ``kd-student`` distilled from those two checkpoints (T²·KL, the paper's softmax
  normalisation of the maps);
* ``student (released KL)``: the same student with ``distillation="released"``, the released code's
  probabilities-into-KLDivLoss objective without T², so the corrected loss is measured, not assumed;
* ``student (sigmoid maps)``: the student with the released code's elementwise sigmoid for the map
  term (``activation_norm="sigmoid"``). With the softmax over positions, the maps are distributions
  over ``h*w`` positions whose squared differences are tiny, so at ``beta = 1`` the map term barely
  moves the student. This row shows what the localization teacher adds when its term has weight.

Evaluation on a uniform-context test split (no habitat, so the object alone explains the class), with
the down branch's combinational CAM (method ``causal`` at layer ``enhanced``, the ground-truth class's
map): classification top-1, Top-1 Loc and GT-known (box from one contour, IoU 0.5, at the threshold
that maximises GT-known; :class:`camkit.metrics.LocalizationAccuracy`) and MaxBoxAccV2. Each value is
the mean +- the half-width of the 95% t-interval over the seeds. Outputs in ``--out``: ``table.md``
and ``results.json`` (per seed, with each training's wall time). Trained runs and per-seed scores are
cached there and reused, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import camkit
from camkit.bench.stats import mean_interval
from camkit.data.synthetic import LEARNABLE, make_synthetic
from camkit.metrics import LocalizationAccuracy, MaxBoxAcc
from camkit.train.loop import train
from camkit.train.recipes import get_recipe

SETTING = dict(LEARNABLE, habitat_p=0.8)
WIDTHS = (16, 32, 64, 64)
#: ``(row, recipe, extra model options)``, trained in this order (the students need the teachers).
ROWS = (
    ("ci-cam", "cicam", {}),
    ("cls teacher", "kd-cls-teacher", {}),
    ("loc teacher", "kd-loc-teacher", {}),
    ("student", "kd-student", {}),
    ("student (released KL)", "kd-student", {"distillation": "released"}),
    ("student (sigmoid maps)", "kd-student", {"activation_norm": "sigmoid"}),
)
METRICS = ("top1", "Top-1 Loc", "GT-known", "MaxBoxAccV2")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a check that the pipeline runs: 1 seed, 300 training and 200 test images, 2 epochs")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds (data and training; default 3, 1 with --quick)")
    parser.add_argument("--train", type=int, default=None, help="training images (default 2500, 300 with --quick)")
    parser.add_argument("--test", type=int, default=None,
                        help="uniform-context test images (default 1000, 200 with --quick)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every training (default 10, 2 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", default="outputs/distill_synthetic",
                        help="folder for the runs, the cache and the table")
    args = parser.parse_args()
    for name, full, quick in (("seeds", 3, 1), ("train", 2500, 300), ("test", 1000, 200), ("epochs", 10, 2)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def train_row(recipe, options, dataset, seed, args, folder):
    """Train (or reload the finished run in ``folder``); returns the model in eval mode and the config."""
    size = SETTING["image_size"]
    config = get_recipe(recipe).make_config(
        "synthetic-cpu", epochs=args.epochs, resize_size=size, crop_size=size,
        lr_step_epochs=max(1, int(0.75 * args.epochs)), seed=seed, eval_every=0, progress=False)
    model_options = dict(widths=WIDTHS, input_size=size, **options)
    result = train(recipe, dataset, backbone="tiny", num_classes=SETTING["num_classes"], config=config,
                   out_dir=folder, model_options=model_options, resume=True)
    return result.model.eval(), config


def evaluate(model, dataset, config, batch=250):
    """Top-1, Top-1 Loc, GT-known and MaxBoxAccV2 (percent) of the down branch's combinational CAM."""
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    loc, boxes_v2 = LocalizationAccuracy(), MaxBoxAcc()
    for start in range(0, len(dataset), batch):
        images = (dataset.images[start:start + batch].float() / 255 - mean) / std
        labels = dataset.labels[start:start + batch]
        boxes = dataset.boxes[start:start + batch, None, :]
        exp = camkit.explain(model, images, methods="causal", layers="enhanced", output="down", target=labels)
        maps = exp.maps[("causal", "enhanced")]
        loc.update(maps, boxes, exp.logits, labels)
        boxes_v2.update(maps, boxes)
    scores = loc.compute()
    return {"top1": scores["Top-1 Cls"], "Top-1 Loc": scores["Top-1 Loc"], "GT-known": scores["GT-known"],
            "MaxBoxAccV2": boxes_v2.compute()["MaxBoxAccV2"]}


def run_seed(seed, args):
    folder = Path(args.out) / "cache" / f"seed{seed}-{args.train}x{args.epochs}-test{args.test}"
    scores_file = folder / "scores.json"
    if scores_file.exists():
        return json.loads(scores_file.read_text())
    train_set = make_synthetic(args.train, context="habitat", seed=1000 * seed + 1, **SETTING)
    test_set = make_synthetic(args.test, context="uniform", seed=1000 * seed + 2, **SETTING)
    teachers = {"cls_teacher": str(folder / "kd-cls-teacher" / "checkpoint.pt"),
                "loc_teacher": str(folder / "kd-loc-teacher" / "checkpoint.pt")}
    results = []
    for row, recipe, options in ROWS:
        name = recipe + "".join(f"-{k}={v}" for k, v in options.items())
        if recipe == "kd-student":
            options = dict(options, **teachers)
        start = time.time()
        model, config = train_row(recipe, options, train_set, seed, args, folder / name)
        trained = time.time() - start
        results.append(dict(row=row, seed=seed, train_s=round(trained, 1), **evaluate(model, test_set, config)))
        print(f"  seed {seed} {row}: {results[-1]}", flush=True)
    scores_file.write_text(json.dumps(results))
    return results


def markdown(results):
    lines = ["| model | seeds | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for row, *_ in ROWS:
        group = [r for r in results if r["row"] == row]
        cells = []
        for metric in METRICS:
            mean, half = mean_interval([r[metric] for r in group])
            cells.append(f"{mean:.1f} ± {half:.1f}")
        lines.append(f"| {row} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in range(args.seeds):
        results += run_seed(seed, args)
        print(f"[{time.time() - start:6.0f}s] seed {seed} done", flush=True)
    text = markdown(results)
    wall = time.time() - start
    settings = {k: v for k, v in vars(args).items() if k != "quick"}
    (out / "table.md").write_text(f"{text}\n\nuniform-context test split, percent; wall time {wall:.0f} s "
                                  f"({settings})\n")
    (out / "results.json").write_text(json.dumps(dict(args=vars(args), wall_s=wall, per_seed=results), indent=1))
    print(text)
    print(f"wall time {wall:.0f} s; outputs in {out}")


if __name__ == "__main__":
    main()
