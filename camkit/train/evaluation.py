"""Periodic localisation evaluation for the training loop (``train(..., evaluate_fn=...)``).

:func:`localization_evaluator` returns ``evaluate_fn(model, dataset) -> dict`` that explains the
ground-truth class of every image with :func:`camkit.explain` and scores the maps with
:mod:`camkit.metrics` (MaxBoxAccV2, PxAP; wsolevaluation semantics), at the images' (transformed)
resolution. It needs items with a ``"box"`` ``(4,)`` or ``"boxes"`` ``(g, 4)`` and/or a ``"mask"``
``(H, W)`` (1 object, 0 background, 255 ignored) at the image's size, e.g.
:class:`camkit.data.synthetic.SyntheticWSOL` or :class:`camkit.data.wsol.WSOLDataset`. For the full
wsolevaluation protocol (224 x 224, all metrics) use ``camkit.evaluate``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from camkit.train.transforms import EvalTransform, sample_fields

__all__ = ["localization_evaluator"]


def localization_evaluator(methods: Sequence[str] = ("cam",), layers=None, transform: Optional[Callable] = None,
                           batch_size: int = 64, max_images: Optional[int] = None,
                           output: Any = None) -> Callable[[torch.nn.Module, Any], Dict[str, float]]:
    """An ``evaluate_fn`` giving ``"{method}/{layer}/MaxBoxAccV2"`` and ``".../PxAP"`` per method and layer.

    ``transform`` must not move pixels relative to each other beyond a resize (boxes and masks are
    rescaled to the transformed size); default :class:`EvalTransform` at the image's own size with
    mean = std = 0.5. ``layers=None`` uses the model's ``cam_layer`` (camkit backbones) or the engine's
    automatic choice. ``output`` adapts dict/tuple model outputs (see :class:`camkit.Explainer`).
    """

    def evaluate(model: torch.nn.Module, dataset) -> Dict[str, float]:
        import camkit
        from camkit.metrics import MaxBoxAcc, PxAP

        chosen = layers if layers is not None else getattr(model, "cam_layer", None)
        explainer = camkit.Explainer(model, methods=tuple(methods), layers=chosen, output=output)
        device = next(model.parameters()).device
        n = len(dataset) if max_images is None else min(len(dataset), max_images)
        box_metrics: Dict[tuple, MaxBoxAcc] = {}
        mask_metrics: Dict[tuple, PxAP] = {}
        for start in range(0, n, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, n))]
            images, labels, boxes, masks = [], [], [], []
            for item in items:
                image, label = sample_fields(item)
                original = image.shape[-2:] if isinstance(image, torch.Tensor) else image.size[::-1]
                tf = transform or EvalTransform(int(original[-1]), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
                x = tf(image)
                images.append(x)
                labels.append(label)
                sy, sx = x.shape[-2] / original[0], x.shape[-1] / original[1]
                given = item.get("box", item.get("boxes")) if isinstance(item, dict) else None
                if given is not None and torch.as_tensor(given).numel() > 0:
                    b = torch.as_tensor(given, dtype=torch.float64).view(-1, 4)
                    boxes.append((b * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)).long())
                if isinstance(item, dict) and item.get("mask") is not None:
                    m = torch.as_tensor(item["mask"]).float()[None, None]
                    masks.append(F.interpolate(m, size=x.shape[-2:], mode="nearest")[0, 0].to(torch.uint8))
            batch = torch.stack(images).to(device)
            exp = explainer(batch, target=torch.tensor(labels, device=device))
            for key, maps in exp.maps.items():
                maps = maps.detach().float().cpu()
                if len(boxes) == len(items):
                    box_metrics.setdefault(key, MaxBoxAcc()).update(maps, boxes)
                if len(masks) == len(items):
                    mask_metrics.setdefault(key, PxAP()).update(maps, torch.stack(masks))
        out: Dict[str, float] = {}
        for (method, layer), metric in box_metrics.items():
            out[f"{method}/{layer}/MaxBoxAccV2"] = metric.compute()["MaxBoxAccV2"]
        for (method, layer), metric in mask_metrics.items():
            out[f"{method}/{layer}/PxAP"] = metric.compute()["PxAP"]
        return out

    return evaluate
