"""Train a tiny CNN with the CAM recipe on the confounded synthetic benchmark, then compare CAM methods.

    python examples/train_synthetic.py --out outputs/train_synthetic          # 2500 images x 10 epochs, one thread; prints its wall time
    python examples/train_synthetic.py --quick                                # smoke run, < 1 minute

What it shows (see camkit.data.synthetic):

1. Train split: each class sits on its "habitat" texture with probability p = 0.8, so the background
   predicts the class 80% of the time ("fish in water"). Each object also carries a small class-coloured
   "discriminative part".
2. Test splits: ``uniform`` (background independent of the class) and ``swapped`` (class k on the
   habitat of class k+1 with probability 0.8). Accuracy on-habitat vs off-habitat measures how much the
   classifier relies on context.
3. Every CAM method (cam, gradcam, gradcam++, pcs, bagcams) at three layers of the tiny CNN, explained
   for the ground-truth class as in wsolevaluation: MaxBoxAccV2 and PxAP on the uniform test split
   (at the images' native resolution), and the share of map energy outside the object mask
   (context share; a map spread evenly would score the background's area fraction, ~0.9).

Outputs in ``--out``: ``run/`` (checkpoint.pt, metrics.jsonl), ``results.json``, ``example_maps.png``.
"""
from __future__ import annotations

import argparse
import json
import warnings
import time
from pathlib import Path

import torch

import camkit
from camkit.data.synthetic import LEARNABLE, context_energy_share, habitat_accuracy, make_synthetic
from camkit.train import get_recipe, train

METHODS = ("cam", "gradcam", "gradcam++", "pcs", "bagcams")
LAYERS = ("block2", "block3", "block4")


# ------------------------------------------------------------------ localisation metrics

def localisation_scores(maps: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor):
    """MaxBoxAccV2 and PxAP (camkit.metrics, wsolevaluation semantics) in percent.

    ``maps`` (N, H, W) in [0, 1]; ``boxes`` (N, 4) inclusive; ``masks`` (N, H, W) bool.
    """
    from camkit.metrics import MaxBoxAcc, PxAP
    box_acc = MaxBoxAcc(multi_contour=True).update(maps, boxes.view(-1, 1, 4)).compute()["MaxBoxAccV2"]
    pxap = PxAP().update(maps, masks.to(torch.uint8)).compute()["PxAP"]
    return float(box_acc), float(pxap)


# ------------------------------------------------------------------ the run

def normalise(images_uint8: torch.Tensor, config) -> torch.Tensor:
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (images_uint8.float() / 255 - mean) / std


@torch.no_grad()
def predict(model, images: torch.Tensor, batch: int = 200) -> torch.Tensor:
    return torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])


def explain_all(model, images, labels, batch: int = 100):
    """Maps ``{(method, layer): (N, H, W)}`` for the true classes. CAM only at the layer feeding the
    GAP + linear head (block4): elsewhere it is not a decomposition of the logits."""
    explainers = [camkit.Explainer(model, methods=("cam",), layers=(LAYERS[-1],)),
                  camkit.Explainer(model, methods=[m for m in METHODS if m != "cam"], layers=LAYERS)]
    maps = {}
    for start in range(0, len(images), batch):
        for explainer in explainers:
            exp = explainer(images[start:start + batch], target=labels[start:start + batch])
            for key, value in exp.maps.items():
                maps.setdefault(key, []).append(value.detach().float().cpu())
    return {key: torch.cat(chunks) for key, chunks in maps.items()}


def save_figure(path, test, maps, predictions, indices, config):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = "block4"
    columns = ["image"] + [f"{m}" for m in METHODS] + ["gradcam @ block3"]
    fig, axes = plt.subplots(len(indices), len(columns), figsize=(1.7 * len(columns), 1.8 * len(indices)))
    for row, i in enumerate(indices):
        image = test.images[i].permute(1, 2, 0).numpy()
        label, pred = int(test.labels[i]), int(predictions[i])
        panels = [None] + [maps[(m, layer)][i] for m in METHODS] + [maps[("gradcam", "block3")][i]]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image)
            if panel is not None:
                ax.imshow(panel.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.contour(test.masks[i].numpy(), levels=[0.5], colors="white", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col] if col else "image", fontsize=8)
            if col == 0:
                habitat = "on" if bool(test.on_habitat[i]) else "off"
                ax.set_ylabel(f"{test.class_names[label]}\npred {test.class_names[pred]}, {habitat}", fontsize=7)
    fig.suptitle(f"tiny CNN trained on p=0.8 habitats; maps at {layer} for the true class (uniform test)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/train_synthetic", help="folder for the run, tables and figures")
    parser.add_argument("--train-images", type=int, default=2500, help="training images")
    parser.add_argument("--test-images", type=int, default=400, help="images per test split")
    parser.add_argument("--image-size", type=int, default=LEARNABLE["image_size"], help="image side in pixels")
    parser.add_argument("--num-classes", type=int, default=LEARNABLE["num_classes"], help="classes (2 to 64)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument("--habitat-p", type=float, default=0.8,
                        help="probability that a training image shows its class's own habitat (the confounder)")
    parser.add_argument("--part-radius", type=float, default=LEARNABLE["part_radius"],
                        help="radius of the coloured discriminative part (make_synthetic's part_radius; 0: none)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; the tiny CNN is fastest on 1, especially on a shared machine")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--fresh", action="store_true", help="retrain even if OUT/run/checkpoint.pt exists")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_images, args.test_images, args.epochs = 600, 100, 2
    torch.set_num_threads(args.threads)
    # BagCAMs warns when a true-class logit is <= 0 (log of a non-positive score); expected for a few
    # misclassified images here, and reported by Explanation.negative_target_logit.
    warnings.filterwarnings("ignore", message=r".*target logit\(s\) are <= 0")
    out = Path(args.out)
    start = time.time()

    common = dict(LEARNABLE, num_classes=args.num_classes, image_size=args.image_size, part_radius=args.part_radius)
    train_set = make_synthetic(args.train_images, context="habitat", habitat_p=args.habitat_p, seed=1, **common)
    uniform = make_synthetic(args.test_images, context="uniform", seed=2, **common)
    swapped = make_synthetic(args.test_images, context="swapped", habitat_p=0.8, seed=3, **common)
    print(f"data: {len(train_set)} train (p={args.habitat_p}, on-habitat share "
          f"{float(train_set.on_habitat.float().mean()):.2f}), {len(uniform)} uniform + {len(swapped)} swapped "
          f"test images of {args.image_size}px  [{time.time() - start:.1f}s]")

    recipe = get_recipe("cam")
    config = recipe.make_config("synthetic-cpu", epochs=args.epochs, resize_size=args.image_size,
                                crop_size=args.image_size, lr_step_epochs=max(1, args.epochs * 3 // 4),
                                eval_every=args.epochs)
    # resume=True: re-running with the same --out reuses (or finishes) the trained checkpoint
    result = train(recipe, train_set, backbone="tiny", num_classes=args.num_classes, out_dir=out / "run", config=config,
                   eval_set=uniform, resume=not args.fresh)
    model = result.model.eval()
    train_time = time.time() - start
    print(f"trained {args.epochs} epochs  [{train_time:.1f}s]")

    x_uniform, x_swapped = normalise(uniform.images, config), normalise(swapped.images, config)
    pred_uniform, pred_swapped = predict(model, x_uniform), predict(model, x_swapped)
    acc_uniform = habitat_accuracy(pred_uniform, uniform.labels, uniform.on_habitat)
    acc_swapped = habitat_accuracy(pred_swapped, swapped.labels, swapped.on_habitat)
    acc_train = habitat_accuracy(predict(model, normalise(train_set.images[:1000], config)),
                                 train_set.labels[:1000], train_set.on_habitat[:1000])

    maps = explain_all(model, x_uniform, uniform.labels)
    rows = []
    background_fraction = float((~uniform.masks).float().mean())
    for layer in LAYERS:
        for method in METHODS:
            if (method, layer) not in maps:
                continue
            m = maps[(method, layer)]
            box_acc, pxap = localisation_scores(m, uniform.boxes, uniform.masks)
            share = float(context_energy_share(m, uniform.masks).mean())
            part_share = float((m * uniform.parts).flatten(1).sum(1).div(
                m.flatten(1).sum(1).clamp_min(1e-12)).mean())
            rows.append(dict(method=method, layer=layer, MaxBoxAccV2=box_acc, PxAP=pxap,
                             context_share=share, part_share=part_share))

    print()
    print("classification top-1 (chance 25%):")
    print(f"  train (p={args.habitat_p}):  on-habitat {acc_train['on_habitat']:.3f}   "
          f"off-habitat {acc_train['off_habitat']:.3f}")
    print(f"  uniform test:      on-habitat {acc_uniform['on_habitat']:.3f} (n={acc_uniform['n_on']})   "
          f"off-habitat {acc_uniform['off_habitat']:.3f} (n={acc_uniform['n_off']})   "
          f"all {acc_uniform['accuracy']:.3f}")
    print(f"  swapped test:      all off-habitat {acc_swapped['accuracy']:.3f}")
    print()
    print(f"localisation on the uniform test split, true-class maps (camkit.metrics); context share = map energy "
          f"outside the mask (even spread: {background_fraction:.2f}); part share = energy on the "
          f"class-coloured part (area {float(uniform.parts.float().sum() / uniform.masks.float().sum()):.2f} "
          "of the object):")
    header = f"{'method':<10} {'layer':<7} {'MaxBoxAccV2':>11} {'PxAP':>6} {'context share':>13} {'part share':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['method']:<10} {r['layer']:<7} {r['MaxBoxAccV2']:>11.1f} {r['PxAP']:>6.1f} "
              f"{r['context_share']:>13.3f} {r['part_share']:>10.3f}")

    # figure: the first 3 off-habitat and 2 on-habitat uniform test images
    off = torch.nonzero(~uniform.on_habitat).flatten()[:3].tolist()
    on = torch.nonzero(uniform.on_habitat).flatten()[:2].tolist()
    out.mkdir(parents=True, exist_ok=True)
    save_figure(out / "example_maps.png", uniform, maps, pred_uniform, off + on, config)
    (out / "results.json").write_text(json.dumps(dict(
        settings=vars(args), accuracy=dict(train=acc_train, uniform=acc_uniform, swapped=acc_swapped),
        localisation=rows, wall_time_s=time.time() - start), indent=1))
    print(f"\nwrote {out / 'example_maps.png'} and {out / 'results.json'}; wall time {time.time() - start:.1f}s "
          f"(training {train_time:.1f}s)")


if __name__ == "__main__":
    main()
