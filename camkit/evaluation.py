"""Evaluate CAM methods x layers on a WSOL dataset with wsolevaluation's protocol.

``evaluate(model, dataset, methods, layers)`` computes the ground-truth-class maps of every method at
every layer with one engine call per batch, turns them into boxes at all 1000 thresholds at once
(:func:`camkit.boxes.iou_curves`) and streams them into the metrics of :mod:`camkit.metrics`.
Under ``torchrun`` each rank evaluates a shard (indices ``rank::world_size``) and the metric states
(integer counts) are all-reduced, so the table equals a single process's exactly.

Per (method, layer) the table holds: ``MaxBoxAccV2`` (V2 boxes, IoU 30/50/70), ``MaxBoxAcc@50`` (V2),
``GT-known``, ``Top-1 Loc``, ``Top-5 Loc`` (V1 box, IoU 50, best threshold; also at ``fixed_threshold``
when given), ``PxAP`` / ``pIoU`` / ``PeakIoU`` where the dataset has masks, and ``Top-1 Cls`` /
``Top-5 Cls``.
"""
from __future__ import annotations

import json
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from camkit.boxes import iou_curves, thresholds_for_interval
from camkit.distributed import world as world_info
from camkit.metrics import LocalizationAccuracy, MaxBoxAcc, PeakIoU, PxAP
from camkit.methods import STANDARD_METHODS as DEFAULT_METHODS

__all__ = ["evaluate", "format_table", "add_arguments", "run", "DEFAULT_METHODS"]


COLUMNS = ("MaxBoxAccV2", "MaxBoxAcc@50", "GT-known", "Top-1 Loc", "Top-5 Loc", "PxAP", "pIoU", "PeakIoU",
           "Top-1 Cls", "Top-5 Cls")


def _collate(items):
    """Batch dataset items (dicts with image, label, boxes | box, optional mask)."""
    images = torch.stack([torch.as_tensor(i["image"]) for i in items])
    labels = torch.tensor([int(i["label"]) for i in items], dtype=torch.long)
    boxes = []
    for i in items:
        b = i["boxes"] if "boxes" in i else i["box"]
        boxes.append(np.asarray(torch.as_tensor(b).reshape(-1, 4).cpu(), np.int64))
    masks = None
    if all(i.get("mask") is not None for i in items):
        masks = torch.stack([torch.as_tensor(i["mask"]).to(torch.uint8) for i in items])
    return images, labels, boxes, masks


def _check_every_image_has_a_box(boxes, dataset_indices):
    """The box metrics' policy (:mod:`camkit.metrics`): an image without a ground-truth box is refused."""
    for b, index in zip(boxes, dataset_indices):
        if len(b) == 0:
            raise ValueError(f"dataset item {index} has no ground-truth box; box metrics need one per image (as "
                             "in wsolevaluation): drop it (e.g. a torch.utils.data.Subset), or give a dataset "
                             "where no image has boxes and masks for all, for the mask metrics only")


def evaluate(model, dataset, methods: Sequence[str] = DEFAULT_METHODS, layers=None, batch_size: int = 16,
             num_workers: int = 0, cam_curve_interval: float = 0.001, iou_thresholds=(30, 50, 70),
             fixed_threshold: Optional[float] = None, mean=None, std=None, progress: bool = True,
             limit: Optional[int] = None, **explainer_options) -> Dict[Tuple[str, str], dict]:
    """Localisation metrics of every (method, layer) on ``dataset``.

    Args:
        model: an ``nn.Module`` returning (B, K) logits (maps are computed on its device).
        dataset: items are dicts with ``"image"`` (3, S, S) preprocessed float tensor (uint8 images are
            scaled to [0, 1] and normalised with ``mean``/``std`` when given), ``"label"``, ``"boxes"``
            (g, 4) or ``"box"`` (4,) in the S x S frame, and optionally ``"mask"`` (S, S) (1 / 0 / 255 ignored).
            :mod:`camkit.data.wsol` datasets have this form.
        methods, layers: as in ``camkit.explain`` (``layers=None``: the last spatial layer).
        cam_curve_interval, iou_thresholds: the MaxBoxAcc threshold grid and IoU levels.
        fixed_threshold: also report GT-known / Top-k Loc at this one threshold.
        progress: show a tqdm bar (rank 0 only).
        limit: evaluate only the first ``limit`` items.
        explainer_options: passed to ``camkit.Explainer`` (``head``, ``output``, ``method_options`` ...).

    Returns:
        ``{(method, layer): {metric: value}}``; :func:`format_table` prints it.
    """
    from tqdm.auto import tqdm
    from camkit.explain import Explainer

    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    rank, world = world_info()
    total = len(dataset) if limit is None else min(limit, len(dataset))
    if total < world:  # every rank sees this, so all of them stop (none waits in all_reduce)
        raise ValueError(f"{total} image(s) for {world} processes: each rank needs at least one image")
    indices = list(range(total))[rank::world]
    shard = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate)
    thresholds = thresholds_for_interval(cam_curve_interval)
    explainer = Explainer(model, methods=methods, layers=layers, **explainer_options)
    metrics: Dict[Tuple[str, str], dict] = {}
    keys = None
    norm = None
    if mean is not None and std is not None:
        norm = (torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))
    batches = tqdm(loader, disable=not progress or rank != 0, desc="evaluate", unit="batch")
    for batch_index, (images, labels, boxes, masks) in enumerate(batches):
        if images.dtype == torch.uint8:
            images = images.float() / 255
            if norm is not None:
                images = (images - norm[0]) / norm[1]
        exp = explainer(images, target=labels)  # ground-truth-class maps
        logits = exp.logits.detach().cpu()
        if keys is None:
            keys = [(m, l) for l in exp.layers for m in methods if (m, l) in exp.maps]
            # box metrics unless the dataset is mask-only (OpenImages: no boxes, as in wsolevaluation)
            with_boxes = masks is None or any(len(b) for b in boxes)
            for key in keys:
                metrics[key] = {}
                if with_boxes:
                    metrics[key]["v2"] = MaxBoxAcc(iou_thresholds, cam_curve_interval, multi_contour=True)
                metrics[key]["loc"] = LocalizationAccuracy(50, cam_curve_interval, multi_contour=False,
                                                           fixed_threshold=fixed_threshold)
                if masks is not None:
                    metrics[key]["pxap"] = PxAP(cam_curve_interval)
                    metrics[key]["peak"] = PeakIoU()
        if with_boxes:
            _check_every_image_has_a_box(boxes, indices[batch_index * batch_size:])
        for key in keys:
            maps = exp.maps[key].detach()
            maps_np = maps.float().cpu().numpy()
            if "v2" in metrics[key]:
                v1, v2 = zip(*[iou_curves(m, b, thresholds) for m, b in zip(maps_np, boxes)])
                metrics[key]["v2"].update_from_curves(np.stack(v2))
            else:  # no boxes: localisation columns are meaningless, keep classification only
                v1 = np.zeros((len(maps_np), len(thresholds)))
            metrics[key]["loc"].update_from_curves(np.stack(v1), logits, labels)
            if "pxap" in metrics[key] and masks is not None:
                metrics[key]["pxap"].update(maps, masks.to(maps.device))
                metrics[key]["peak"].update(maps, masks.to(maps.device))
    if keys is None:
        raise ValueError("the dataset (or this rank's shard) is empty; nothing to evaluate")
    results = {}
    for key in keys:
        row = {}
        for name, metric in metrics[key].items():
            if world > 1:
                metric.all_reduce()
            out = metric.compute()
            if name == "v2":
                row["MaxBoxAccV2"] = out["MaxBoxAccV2"]
                for d in iou_thresholds:
                    row[f"MaxBoxAcc@{d}"] = out[f"MaxBoxAcc@{d}"]
                row["best_threshold@50"] = out.get("best_threshold@50")
            elif name == "loc":
                if "v2" in metrics[key]:
                    row.update({k: v for k, v in out.items() if k != "num_images"})
                else:
                    row.update({k: out[k] for k in ("Top-1 Cls", "Top-5 Cls")})
                row["num_images"] = out["num_images"]
            elif name == "pxap":
                row["PxAP"], row["pIoU"] = out["PxAP"], out["pIoU"]
            elif name == "peak":
                row["PeakIoU"] = out["PeakIoU"]
        results[key] = row
    return results


def format_table(results: Dict[Tuple[str, str], dict], columns: Sequence[str] = COLUMNS) -> str:
    """A fixed-width text table: one row per (method, layer), the columns present in the results."""
    cols = [c for c in columns if any(c in r for r in results.values())]
    width_m = max([len("method")] + [len(m) for m, _ in results])
    width_l = max([len("layer")] + [len(str(l)) for _, l in results])
    head = f"{'method':<{width_m}}  {'layer':<{width_l}}  " + "  ".join(f"{c:>12}" for c in cols)
    lines = [head, "-" * len(head)]
    for (m, l), row in results.items():
        cells = "  ".join(f"{row[c]:>12.2f}" if c in row and row[c] is not None else f"{'-':>12}" for c in cols)
        lines.append(f"{m:<{width_m}}  {str(l):<{width_l}}  {cells}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI
EPILOG = """\
examples:
  camkit evaluate --model mobilenet_v2-tf:../shared/assets/weights/mobilenet_v2_imagenet.pth \\
      --data ../shared/assets/imagenet-val-dev50 --layers features.6 features.13 features.18
  camkit evaluate --model torchvision:resnet50 --weights resnet50.pth --data /data/CUB --metadata metadata/CUB/test
  torchrun --nproc_per_node=2 -m camkit.cli evaluate --model ... --data ...   # sharded, exact all-reduce

--data is a folder with annotations.json (the imagenet-val-dev50 format), or a wsolevaluation dataset
root together with --metadata (the folder holding image_ids.txt, class_labels.txt, image_sizes.txt,
localization.txt).
"""


def add_arguments(parser) -> None:
    """Flags of ``camkit evaluate`` (the model flags are added by the CLI)."""
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="folder with annotations.json, or a wsolevaluation dataset root (with --metadata)")
    parser.add_argument("--metadata", default=None, metavar="DIR", help="wsolevaluation metadata folder of the split")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="NAME",
                        help="CAM methods (default: %(default)s)")
    parser.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                        help="layer names (default: the last spatial layer)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward (default 16)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--interval", type=float, default=0.001, help="CAM threshold step (default 0.001)")
    parser.add_argument("--fixed-threshold", type=float, default=None,
                        help="also report GT-known / Top-k Loc at this fixed threshold")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _init_distributed():
    import os
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        return True
    return False


def run(args) -> int:
    """``camkit evaluate``: load the model (camkit.model_spec), the dataset, evaluate, print the table."""
    from camkit.data.wsol import AnnotatedFolderDataset, WSOLDataset, WSOLEvalTransform
    from camkit.model_spec import load_model_from_args

    started = _init_distributed()
    try:
        loaded = load_model_from_args(args)
        pre = loaded.preprocess
        size = pre.size[0] if getattr(pre, "size", None) else 224
        transform = WSOLEvalTransform(size, mean=pre.mean, std=pre.std)
        if args.metadata:
            dataset = WSOLDataset(args.data, args.metadata, transform=transform)
        else:
            dataset = AnnotatedFolderDataset(args.data, transform=transform)
        results = evaluate(loaded.model, dataset, methods=args.methods, layers=args.layers,
                           batch_size=args.batch_size, num_workers=args.num_workers,
                           cam_curve_interval=args.interval, fixed_threshold=args.fixed_threshold,
                           progress=not args.no_progress, limit=args.limit)
        rank, _ = world_info()
        if rank == 0:
            print(format_table(results))
            if args.json:
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump([{"method": m, "layer": l, **row} for (m, l), row in results.items()], f, indent=2)
    finally:
        if started:
            import torch.distributed as dist
            dist.destroy_process_group()
    return 0
