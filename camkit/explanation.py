"""The result of an explanation call: maps keyed by (method, layer), logits, targets, boxes and pictures."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["Explanation", "MapKey"]

MapKey = Tuple[str, str]


@dataclass(repr=False)
class Explanation:
    """The result of one explanation call.

    Attributes:
        maps: ``{(method, layer): maps}``; maps are ``(B, H, W)``, or ``(B, T, H, W)`` when several
            targets per image were asked for (``TopK`` or a ``(B, T)`` target tensor). With the
            defaults they are upsampled to the input size and min-max normalised to ``[0, 1]``.
        logits: ``(B, K)`` model outputs.
        targets: ``(B,)`` or ``(B, T)`` explained classes; ``None`` for a callable target.
        methods, layers: the method names and layer keys, in the order asked for.
        images: ``(B, C, H, W)`` the model input.
        images_rgb: ``(B, H, W, 3)`` float pictures in ``[0, 1]`` for display, when known.
        negative_target_logit: ``(B,)`` / ``(B, T)`` bool, targets whose logit (or score) is ``<= 0`` (BagCAMs
            then differentiates ``log`` of a non-positive score; see :func:`camkit.methods.bagcams`).
        class_names: class names for display, when known.
        notes: what was skipped or is worth knowing (e.g. CAM at a layer no linear head fits).
        photos: the ``B`` original ``(H, W, 3)`` uint8 pictures, when raw images went through
            camkit's :class:`camkit.Preprocess` (else ``None``).
        frames: per photo, the :class:`camkit.inputs.PhotoFrame` saying where the model input (the
            centre crop) lies on it; :meth:`photo_map`, :meth:`boxes` (``on_photo=True``) and the figures
            use it to put the maps back onto the photos.
        layer_labels: ``{layer key: readable label}`` saying why a layer was chosen, e.g.
            ``"last spatial layer (_swish)"`` for ``layers=None`` or ``"2nd deepest stage (features.13)"``
            for ``layers="stage:-2"``; the figures title their rows with it (a named layer: its key).
    """

    maps: Dict[MapKey, torch.Tensor]
    logits: torch.Tensor
    targets: Optional[torch.Tensor]
    methods: List[str]
    layers: List[str]
    images: torch.Tensor
    images_rgb: Optional[np.ndarray] = None
    negative_target_logit: Optional[torch.Tensor] = None
    class_names: Optional[Sequence[str]] = None
    notes: List[str] = field(default_factory=list)
    photos: Optional[List[np.ndarray]] = None
    frames: Optional[list] = None
    layer_labels: Dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: Union[str, MapKey]) -> torch.Tensor:
        """``exp["gradcam"]`` when one layer was explained, else ``exp["gradcam", "layer4"]``."""
        if isinstance(key, str):
            if len(self.layers) != 1:
                raise KeyError(f"several layers were explained ({', '.join(self.layers)}); "
                               f"index with (method, layer)")
            key = (key, self.layers[0])
        if key not in self.maps:
            notes = "".join(f"\n  note: {note}" for note in self.notes)
            raise KeyError(f"no map for {key}; available: {sorted(self.maps)}{notes}")
        return self.maps[key]

    def top_k(self, k: int = 5) -> Tuple[torch.Tensor, torch.Tensor]:
        """Softmax probabilities and class indices of the ``k`` best classes: two ``(B, k)``."""
        probabilities = self.logits.detach().softmax(dim=1)
        result = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
        return result.values, result.indices

    def class_name(self, index: int) -> str:
        """The name of class ``index``, or ``"class {index}"``."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return str(self.class_names[index])
        return f"class {index}"

    def photo_map(self, method: str, layer: Optional[str] = None, index: int = 0) -> np.ndarray:
        """The map of image ``index`` on its original photo: ``(H, W)`` float64, ``NaN`` where the model
        did not look (outside the centre crop). Without :attr:`frames` (tensor inputs) the map itself."""
        from camkit.inputs import map_to_photo

        maps = self[(method, layer) if layer is not None else method].detach()
        saliency = (maps[index, 0] if maps.dim() == 4 else maps[index]).float().cpu().numpy()
        return saliency if self.frames is None else map_to_photo(saliency, self.frames[index])

    def boxes(self, method: str, layer: Optional[str] = None, box_rule="fixed",
              sizes: Optional[Sequence[Tuple[int, int]]] = None, on_photo: bool = False,
              **options) -> List[np.ndarray]:
        """Boxes of one map per image, from a box rule (:func:`camkit.boxes.box_rule`).

        Args:
            method, layer: which maps (``layer`` may be omitted when one layer was explained).
            box_rule: ``"fixed"`` (``u > int(fraction * max)``, option ``fraction=0.2``, the largest
                contour's box) or ``"fixed:F"``, ``"pas"`` / ``"percentile"`` (``tau``, ``q``),
                ``"cicam"`` (the released CI-CAM rule, ``seg_thr``), ``"cicam-kept-mean"``, a callable
                ``score_map (H, W) -> (n, 4)`` or a :class:`camkit.boxes.BoxRule`. ``"wsol"`` (the
                metric's threshold sweep) needs ground-truth boxes and is refused here.
            sizes: ``(H, W)`` of each original picture to map the boxes onto (an inclusive pixel edge
                ``x1`` of a ``w`` wide map becomes ``int((x1 + 1) * W / w) - 1``). Default: the input's
                pixels (``images.shape[-2:]``), also for maps kept at the layer's resolution.
            on_photo: map the boxes onto the original photos through :attr:`frames` (the centre
                crop's place on each photo) instead of ``sizes``.
            options: the rule's options.

        Returns:
            ``B`` int64 arrays ``(n, 4)`` of inclusive ``x0, y0, x1, y1`` boxes (``(B, T)`` targets: the
            first target's).

        Raises:
            ValueError: an unknown or sweeping rule, a bad option (checked before any map is boxed),
                ``sizes`` of the wrong length, ``on_photo`` without frames.
        """
        from camkit.boxes import box_rule as resolve_box_rule
        from camkit.inputs import boxes_to_photo

        if "rule" in options:
            raise ValueError("Explanation.boxes takes box_rule= (the rule= keyword was renamed), e.g. "
                             "box_rule='fixed:0.2'")
        rule = resolve_box_rule(box_rule, **options)
        if rule.sweep:
            raise ValueError("box_rule 'wsol' is MaxBoxAcc's threshold sweep, which needs ground-truth boxes; to box "
                             "a map on its own use e.g. box_rule='fixed:0.2', 'pas' or 'cicam'")
        maps = self[(method, layer) if layer is not None else method].detach()
        if maps.dim() == 4:
            maps = maps[:, 0]
        if sizes is None:
            sizes = [tuple(self.images.shape[-2:])] * len(maps)
        if len(sizes) != len(maps):
            raise ValueError(f"sizes has {len(sizes)} entries for a batch of {len(maps)} maps")
        if on_photo and self.frames is None:
            raise ValueError("on_photo=True needs the photos' frames, known only when camkit preprocessed "
                             "raw images (PIL, uint8 arrays, paths); for tensor inputs give sizes=")
        out = []
        for index, (size, saliency) in enumerate(zip(sizes, maps.float().cpu().numpy())):
            boxes = rule(saliency)
            if on_photo:
                boxes = boxes_to_photo(boxes, self.frames[index], saliency.shape)
            elif tuple(size) != saliency.shape:
                boxes = _rescale_inclusive(boxes, saliency.shape, tuple(size))
            out.append(boxes)
        return out

    def __repr__(self) -> str:
        """A few lines: batch and map shapes, methods, layers, the explained classes by name, notes."""
        first = next(iter(self.maps.values()), None)
        map_shape = tuple(first.shape) if first is not None else None
        lines = [f"Explanation(images={tuple(self.images.shape)}, logits={tuple(self.logits.shape)}, "
                 f"maps={len(self.maps)} x {map_shape},",
                 f"  methods={list(self.methods)},", f"  layers={list(self.layers)},",
                 f"  targets={self._targets_text()}"]
        if self.notes:
            lines[-1] += ","
            lines.append(f"  notes={len(self.notes)} (see .notes)")
        return "\n".join(lines) + ")"

    def _targets_text(self, limit: int = 4) -> str:
        if self.targets is None:
            return "a callable score"
        flat = self.targets.detach().reshape(self.targets.shape[0], -1)[:, 0].tolist()
        shown = [f"{index} {self.class_name(index)!r}" if self.class_names is not None else str(index)
                 for index in flat[:limit]]
        more = f", ... ({len(flat)} images)" if len(flat) > limit else ""
        per_image = f" (first of {self.targets.shape[1]} per image)" if self.targets.dim() == 2 else ""
        return f"[{', '.join(shown)}{more}]{per_image}"

    def figure(self, index: Optional[int] = None, **kwargs):
        """A matplotlib figure, one row per image: the photo, then one overlay per (method, layer).

        ``index`` draws that image only (default: every image of the batch); ``kwargs`` go to
        :func:`camkit.viz.explanation_grid` (``methods``, ``layers``, ``layer_labels``, ``cmap``,
        ``alpha``, ``show_maps``, ``boxes``, ``gt_boxes``, ``rank``).
        """
        from camkit.viz import explanation_grid
        return explanation_grid(self, indices=None if index is None else [index], **kwargs)

    def save(self, path, index: Optional[int] = None, dpi: int = 110, **kwargs) -> None:
        """Write :meth:`figure` to ``path`` (PNG, PDF, ... by extension): every image of the batch, one
        row each, or image ``index`` alone."""
        from camkit.viz import save_figure
        save_figure(self.figure(index=index, **kwargs), path, dpi=dpi)

    def _repr_png_(self) -> bytes:
        """The PNG bytes of :meth:`figure`, so that a notebook shows the explanation."""
        import io

        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        return buffer.getvalue()


def _rescale_inclusive(boxes: np.ndarray, frame: Tuple[int, int], size: Tuple[int, int]) -> np.ndarray:
    """Inclusive ``(n, 4)`` boxes on an ``(h, w)`` frame -> the same pixels' boxes on an ``(H, W)`` picture."""
    (h, w), (height, width) = frame, size
    sx, sy = width / w, height / h
    return np.stack([(boxes[:, 0] * sx).astype(np.int64), (boxes[:, 1] * sy).astype(np.int64),
                     np.minimum(((boxes[:, 2] + 1) * sx).astype(np.int64) - 1, width - 1),
                     np.minimum(((boxes[:, 3] + 1) * sy).astype(np.int64) - 1, height - 1)], axis=1)
