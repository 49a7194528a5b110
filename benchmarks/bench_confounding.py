"""The confounded synthetic benchmark: a sweep of the confounding knobs, with seeds and 95% intervals.

    PYTHONPATH=. python benchmarks/bench_confounding.py --quick     # base setting, one seed
    PYTHONPATH=. python benchmarks/bench_confounding.py             # the sweep, 3 seeds

Settings: one knob at a time around a base (:data:`camkit.data.synthetic.LEARNABLE`: 24 classes, 48x48
images, parts of radius 0.6, objects of 0.22-0.32 of the side; ``habitat_p`` 0.8, whole-background
context, uniform placement): ``habitat_p`` in {uniform-equivalent
(1 / num_textures), 0.95, 1.0}, the context patch layout, and centred placement (spread 0.15).

Per setting and seed, trained on CPU with camkit's loop (``synthetic-cpu`` preset optimisation):

* ``vanilla``: the ``cam`` recipe on the tiny backbone;
* ``ci-cam``: the ``cicam`` recipe on the same backbone, the same optimisation;
* ``post-hoc``: :func:`camkit.causal.fit_context` on the vanilla model with the training images.

Rows (maps explain the ground-truth class, GT-known): ``vanilla / cam``, ``vanilla / ccam`` (the
combinational CAM with no context: the class combination's own effect), ``post-hoc / ccam`` (the
context's effect on top), ``ci-cam / cam`` and ``ci-cam / ccam`` (the down branch). The two ``... ccam
pred.`` rows rank the classes by the model's prediction instead of putting the ground truth first (the
released code's label-free protocol; the explained class is still the ground truth).

The test split (1000 images) puts each object on its own habitat with probability 0.5 whatever the
training ``habitat_p``, so on- and off-habitat accuracy come from one split of known composition.
Columns: top-1 on and off habitat, the share of map energy on the context (the whole background, or the
patch), MaxBoxAccV2, GT-known (MaxBoxAcc V1 at IoU 0.5) and PxAP, each the mean +- the 95% t-interval
over the seeds. Outputs in ``--out``: ``table.md``, ``results.csv``, ``results.json`` (per seed too),
``context_energy.png`` (energy on the context against ``habitat_p``, per row) and ``learning_curves.png``
(top-1 on a 300-image uniform-context split every 2 epochs, per setting and model). Trained models and
each setting-seed's scores are cached in ``--out``/cache and reused, so several processes can run
disjoint ``--settings`` into one ``--out`` and a last run without ``--settings`` assembles the table.
"""
import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

import camkit
from camkit.bench.stats import mean_interval
from camkit.causal import fit_context
from camkit.data.synthetic import LEARNABLE, context_energy_share, habitat_accuracy, make_synthetic
from camkit.metrics import MaxBoxAcc, PxAP
from camkit.train.loop import train
from camkit.train.recipes import get_recipe

BASE = dict(LEARNABLE, habitat_p=0.8, layout="background", placement="uniform", num_neutral=2)
WIDTHS = (16, 32, 64, 64)
PREDICTED = {"causal": {"ranking": "predicted"}}
ROWS = (("vanilla / cam", "vanilla", "cam", None), ("vanilla / ccam", "vanilla", "causal", None),
        ("post-hoc / ccam", "post-hoc", "causal", None), ("post-hoc / ccam pred.", "post-hoc", "causal", PREDICTED),
        ("ci-cam / cam", "ci-cam", "cam", None), ("ci-cam / ccam", "ci-cam", "causal", None),
        ("ci-cam / ccam pred.", "ci-cam", "causal", PREDICTED))
METRICS = ("top1_on", "top1_off", "context_energy", "MaxBoxAccV2", "GT-known", "PxAP")


#: The class-count settings (not in the default sweep; ``--settings N=4 N=8 N=48``): how the
#: combinational CAM behaves against N, the base otherwise.
CLASS_COUNTS = [(f"N={n}", dict(num_classes=n)) for n in (4, 8, 48)]


def sweep(quick: bool):
    """``[(name, make_synthetic overrides)]``: the base, then one knob at a time."""
    if quick:
        return [("base", {})]
    textures = BASE["num_classes"] + BASE["num_neutral"]
    return [("base", {}), ("p=uniform", dict(habitat_p=1 / textures)), ("p=0.95", dict(habitat_p=0.95)),
            ("p=1.0", dict(habitat_p=1.0)), ("patch", dict(layout="patch")),
            ("centred", dict(placement="centred", spread=0.15))]


def train_cached(recipe, dataset, curve_set, setting, args, folder):
    config = get_recipe(recipe).make_config(
        "synthetic-cpu", epochs=args.epochs, resize_size=setting["image_size"], crop_size=setting["image_size"],
        lr_step_epochs=max(1, int(0.75 * args.epochs)), seed=args.seed_base, eval_every=2, progress=False)
    result = train(recipe, dataset, backbone="tiny", num_classes=setting["num_classes"], config=config,
                   out_dir=folder, model_options=dict(widths=WIDTHS), resume=True, eval_set=curve_set)
    return result.model.eval(), config


def learning_curve(folder):
    """``[(epoch, top-1 on the uniform curve split)]`` from a run's ``metrics.jsonl``."""
    records = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines() if line]
    return sorted({r["epoch"]: r["top1"] for r in records if r.get("event") == "eval"}.items())


def explain_maps(model, dataset, normalise, method, layer, output=None, context=None, options=None, batch=250):
    """GT-class maps ``(N, S, S)`` and the explained branch's predictions ``(N,)``."""
    maps, predictions = [], []
    for start in range(0, len(dataset), batch):
        images = normalise(dataset.images[start:start + batch])
        exp = camkit.explain(model, images, methods=method, layers=layer, output=output, context=context,
                             target=dataset.labels[start:start + batch], method_options=options)
        maps.append(exp.maps[(method, layer)])
        logits = context.predict_logits(model, images) if context is not None else exp.logits
        predictions.append(logits.argmax(1))
    return torch.cat(maps), torch.cat(predictions)


def score(maps, predictions, dataset):
    accuracy = habitat_accuracy(predictions, dataset.labels, dataset.on_habitat)
    boxes = dataset.boxes[:, None, :]
    return {"top1_on": accuracy["on_habitat"], "top1_off": accuracy["off_habitat"],
            "context_energy": float(context_energy_share(maps, dataset.masks, dataset.context_masks).mean()),
            "MaxBoxAccV2": MaxBoxAcc().update(maps, boxes).compute()["MaxBoxAccV2"],
            "GT-known": MaxBoxAcc(iou_thresholds=(50,), multi_contour=False).update(maps, boxes).compute()["MaxBoxAcc@50"],
            "PxAP": PxAP().update(maps, dataset.masks.to(torch.uint8)).compute()["PxAP"]}


def run_setting(name, overrides, seed, args):
    setting = dict(BASE, **overrides)
    folder = Path(args.out) / "cache" / f"{name}-seed{seed}-{args.train}x{args.epochs}"
    scores_file = folder / "scores.json"
    if scores_file.exists():
        return json.loads(scores_file.read_text())
    start = time.time()
    train_set = make_synthetic(args.train, context="habitat", seed=1000 * seed + 1, **setting)
    test_set = make_synthetic(args.test, context="habitat", seed=1000 * seed + 2, **dict(setting, habitat_p=0.5))
    curve_set = make_synthetic(300, context="uniform", seed=1000 * seed + 3, **setting)
    vanilla, config = train_cached("cam", train_set, curve_set, setting, args, folder / "vanilla")
    cicam, _ = train_cached("cicam", train_set, curve_set, setting, args, folder / "cicam")
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)

    def normalise(images):
        return (images.float() / 255 - mean) / std

    context_file = folder / "context.pt"
    if context_file.exists():
        from camkit.causal import CausalContext
        context = CausalContext.load(context_file)
    else:
        context = fit_context(vanilla, "block4", train_set, transform=normalise, epochs=args.context_epochs)
        context.save(context_file)
    specs = {"vanilla": dict(model=vanilla, layer="block4"),
             "post-hoc": dict(model=vanilla, layer="block4", context=context),
             "ci-cam": dict(model=cicam, layer="enhanced", output="down")}
    results = []
    for row, model_name, method, options in ROWS:
        spec = dict(specs[model_name])
        maps, predictions = explain_maps(spec.pop("model"), test_set, normalise, method, options=options, **spec)
        results.append(dict(setting=name, habitat_p=setting["habitat_p"], seed=seed, row=row,
                            **score(maps, predictions, test_set)))
    curves = {"vanilla": learning_curve(folder / "vanilla"), "ci-cam": learning_curve(folder / "cicam")}
    for entry in results:
        entry["compute_s"] = round(time.time() - start, 1)      # training, fit_context and scoring
        entry["curve"] = curves[next(m for r, m, _, _ in ROWS if r == entry["row"]).replace("post-hoc", "vanilla")]
    scores_file.write_text(json.dumps(results))
    return results


def summarise(results):
    table = []
    for setting in dict.fromkeys(r["setting"] for r in results):
        for row, *_ in ROWS:
            group = [r for r in results if r["setting"] == setting and r["row"] == row]
            entry = dict(setting=setting, habitat_p=group[0]["habitat_p"], row=row, seeds=len(group))
            for metric in METRICS:
                entry[metric], entry[metric + "_ci"] = mean_interval([r[metric] for r in group])
            table.append(entry)
    return table


def markdown(table):
    lines = ["| setting | model / maps | top-1 on | top-1 off | energy on context | MaxBoxAccV2 | GT-known | PxAP |",
             "|---|---|---|---|---|---|---|---|"]
    for e in table:
        cells = [f"{e[m]:.3f} ± {e[m + '_ci']:.3f}" if m.startswith(("top1", "context")) else
                 f"{e[m]:.1f} ± {e[m + '_ci']:.1f}" for m in METRICS]
        lines.append(f"| {e['setting']} | {e['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    swept = [e for e in table if e["setting"] == "base" or e["setting"].startswith("p=")]
    for row, *_ in ROWS:
        points = sorted((e["habitat_p"], e["context_energy"], e["context_energy_ci"]) for e in swept if e["row"] == row)
        xs, ys, errs = zip(*points)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=row)
    ax.set_xlabel("training habitat_p (P(object on its own habitat))")
    ax.set_ylabel("share of map energy on the context")
    ax.set_title("Context energy against confounding\n(mean and 95% interval over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_figure(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    settings = list(dict.fromkeys(r["setting"] for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (row, model) in zip(axes, (("vanilla / cam", "vanilla CAM"), ("ci-cam / cam", "CI-CAM"))):
        for setting in settings:
            curves = [r["curve"] for r in results if r["setting"] == setting and r["row"] == row]
            epochs = [e for e, _ in curves[0]]
            ax.plot(epochs, np.mean([[t for _, t in c] for c in curves], axis=0), marker="o", label=setting)
        ax.set_title(f"{model}: top-1 on a uniform-context split")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"top-1 (mean over seeds; chance {1 / BASE['num_classes']:.3f})")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="base setting only, one seed, fewer images and epochs")
    parser.add_argument("--settings", nargs="+", default=None, metavar="NAME",
                        help="run only these settings (base, p=uniform, p=0.95, p=1.0, patch, centred; "
                             "and the class counts N=4, N=8, N=48, not in the default sweep)")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds per setting (default 3; 1 with --quick)")
    parser.add_argument("--train", type=int, default=None, help="training images (default 2500; 1500 with --quick)")
    parser.add_argument("--test", type=int, default=1000, help="test images per setting (habitat_p 0.5)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each training (default 10; 6 with --quick)")
    parser.add_argument("--context-epochs", type=int, default=3, help="fit_context projection epochs")
    parser.add_argument("--seed-base", type=int, default=0, help="the training loop's seed")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", default="outputs/bench_confounding", help="folder for the cache, tables and figure")
    args = parser.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.train = args.train or (1500 if args.quick else 2500)
    args.epochs = args.epochs or (6 if args.quick else 10)
    torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    settings = sweep(args.quick)
    if args.settings:
        known = sweep(False) + CLASS_COUNTS
        unknown = sorted(set(args.settings) - {name for name, _ in known})
        if unknown:
            parser.error(f"unknown --settings {unknown}; the settings are {[n for n, _ in known]}")
        settings = [(name, o) for name, o in known if name in args.settings]
    for name, overrides in settings:
        for seed in range(args.seeds):
            results += run_setting(name, overrides, seed, args)
            print(f"[{time.time() - start:6.0f}s] {name} seed {seed} done", flush=True)
    table = summarise(results)
    text = markdown(table)
    wall = time.time() - start
    computed = sum({(r["setting"], r["seed"]): r.get("compute_s", 0.0) for r in results}.values())
    timing = (f"wall time of this run {wall:.0f} s; {computed:.0f} s of setting-seed compute recorded "
              f"in the scores (cached ones included; older caches record none)")
    (out / "table.md").write_text(text + f"\n\n{timing} ({vars(args)})\n")
    (out / "results.json").write_text(json.dumps(dict(args=vars(args), wall_s=wall, per_seed=results,
                                                      table=table), indent=1))
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    if any(e["setting"].startswith("p=") for e in table):
        figure(table, out / "context_energy.png")
    curves_figure(results, out / "learning_curves.png")
    print(text)
    print(f"{timing}; outputs in {out}")


if __name__ == "__main__":
    main()
