"""Targets for dense outputs: semantic segmentation and detection.

A class target picks logits from a ``(B, K)`` output. A dense target instead receives the model's
output itself (after ``Explainer(output=)`` selects an entry, e.g. ``output="out"`` for torchvision's
segmentation models) and returns one differentiable score per image, ``(B,)``. It is marked by
``output_target = True``; the engine then skips the ``(B, K)`` logits check, and
``Explanation.logits`` holds the ``(B, 1)`` scores. The maps come from the same one-forward,
one-backward engine; methods that need a class index (CAM) are unavailable.

Example::

    seg = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None)
    mask = torch.zeros(224, 224, dtype=torch.bool); mask[50:150, 60:160] = True
    exp = camkit.explain(seg, images, methods="gradcam", layers="backbone.layer4", output="out",
                         target=camkit.SegmentationTarget(category=15, mask=mask))

    det = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    exp = camkit.explain(det, images, methods="gradcam", layers="backbone.body.layer4",
                         target=camkit.BoxScoreTarget(labels=[3], boxes=[[10, 20, 120, 160]]))
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

__all__ = ["SegmentationTarget", "BoxScoreTarget", "is_output_target", "output_scores"]


def is_output_target(target) -> bool:
    """Whether ``target`` scores the raw model output (a dense target) rather than ``(B, K)`` logits."""
    return getattr(target, "output_target", False) is True


def output_scores(target, output, batch_size: int) -> torch.Tensor:
    """``target(output)``, checked to be ``(B,)`` scores."""
    scores = target(output)
    if not isinstance(scores, torch.Tensor) or scores.shape != (batch_size,):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{type(target).__name__} returned {shape}, not one score per image ({batch_size},)")
    return scores


class SegmentationTarget:
    """The summed logit of ``category`` over ``mask``: ``S_b = sum_{m in mask_b} Y[b, category_b, m]``.

    Args:
        category: the class index, one int or ``B`` ints.
        mask: ``(H, W)`` (shared by the batch) or ``(B, H, W)``, boolean or float weights, at the
            resolution of the model's ``(B, K, H, W)`` output. Usually the pixels predicted as the
            category (``out.argmax(1) == category``), as in pytorch-grad-cam's ``SemanticSegmentationTarget``.

    Called with the ``(B, K, H, W)`` output (use ``output="out"`` for torchvision's dict outputs);
    returns ``(B,)``.
    """

    output_target = True

    def __init__(self, category: Union[int, Sequence[int], torch.Tensor], mask: torch.Tensor):
        self.category = torch.as_tensor(category, dtype=torch.long)
        if self.category.dim() > 1:
            raise ValueError(f"category must be one int or B ints, got shape {tuple(self.category.shape)}")
        mask = torch.as_tensor(mask)
        if mask.dim() not in (2, 3):
            raise ValueError(f"mask must be (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
        self.mask = mask

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"SegmentationTarget needs a (B, K, H, W) output, got {shape}; pass output='out' "
                             f"(or a callable) to select the logits from a dict output")
        batch, classes = output.shape[:2]
        if tuple(self.mask.shape[-2:]) != tuple(output.shape[-2:]):
            raise ValueError(f"the mask is {tuple(self.mask.shape[-2:])} but the output is "
                             f"{tuple(output.shape[-2:])}; give a mask at the output's resolution")
        category = self.category.to(output.device).expand(batch)
        if (category < 0).any() or (category >= classes).any():
            raise IndexError(f"category {self.category.tolist()} is out of range for {classes} classes")
        logits = output[torch.arange(batch, device=output.device), category]           # (B, H, W)
        return (logits * self.mask.to(device=output.device, dtype=logits.dtype)).flatten(1).sum(dim=1)


class BoxScoreTarget:
    """Detection scores matching given boxes: ``S_b = sum_j sum_{d : l_d = l_j, IoU(d, box_j) >= t} s_d``.

    Every given box ``j`` (label ``l_j``) adds the scores ``s_d`` of all the detections of the same
    label whose IoU with it is at least ``iou_threshold``; a detection matching two boxes counts twice.

    Args:
        labels: ``(n,)`` labels for one image, or a list of ``B`` of them.
        boxes: ``(n, 4)`` ``(x1, y1, x2, y2)`` boxes in input pixels, or a list of ``B`` of them.
        iou_threshold: the IoU from which a detection matches a box.

    Called with the list of ``B`` dicts (``"boxes"``, ``"labels"``, ``"scores"``) that torchvision's
    Faster R-CNN, RetinaNet and FCOS return in eval mode; their scores keep the autograd graph, so
    the engine differentiates them. Returns ``(B,)``; an image without matches scores 0, and the
    engine notes that its gradients are zero.
    """

    output_target = True

    def __init__(self, labels, boxes, iou_threshold: float = 0.5):
        self.per_image = isinstance(boxes, (list, tuple)) and len(boxes) > 0 and (
            isinstance(boxes[0], torch.Tensor) and boxes[0].dim() == 2
            or isinstance(boxes[0], (list, tuple)) and len(boxes[0]) > 0 and isinstance(boxes[0][0], (list, tuple)))
        boxes = boxes if self.per_image else [boxes]
        labels = labels if self.per_image else [labels]
        self.boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
        self.labels = [torch.as_tensor(l, dtype=torch.long).reshape(-1) for l in labels]
        if len(self.boxes) != len(self.labels) or any(len(b) != len(l) for b, l in zip(self.boxes, self.labels)):
            raise ValueError("BoxScoreTarget needs one label per box (and, batched, one list per image)")
        if not 0 <= iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)

    def __call__(self, detections) -> torch.Tensor:
        from torchvision.ops import box_iou

        if not isinstance(detections, (list, tuple)) or not all(isinstance(d, dict) for d in detections):
            raise ValueError(f"BoxScoreTarget needs the list of detection dicts of a torchvision detector "
                             f"in eval mode, got {type(detections).__name__}")
        boxes = self.boxes * len(detections) if not self.per_image else self.boxes
        labels = self.labels * len(detections) if not self.per_image else self.labels
        if len(boxes) != len(detections):
            raise ValueError(f"BoxScoreTarget has boxes for {len(boxes)} images, the batch has {len(detections)}")
        scores = []
        for detection, wanted, wanted_labels in zip(detections, boxes, labels):
            found = detection["boxes"]
            wanted, wanted_labels = wanted.to(found), wanted_labels.to(found.device)
            iou = box_iou(wanted, found.detach())                                        # (n, D)
            match = (iou >= self.iou_threshold) & (wanted_labels[:, None] == detection["labels"][None])
            # ``found.sum() * 0`` keeps an image without matches in the graph (a zero score)
            scores.append((match.to(detection["scores"].dtype) @ detection["scores"]).sum()
                          + detection["scores"].sum() * 0)
        return torch.stack(scores)
