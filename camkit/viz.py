"""Pictures: overlays, methods x layers grids, boxes and evaluation curves.

Everything here lives at the edge of the data path, so it works in numpy and matplotlib. Figures are
built on matplotlib's non-interactive Agg canvas (``matplotlib.figure.Figure``, never ``pyplot``), so
nothing here opens a window, needs a display, or touches pyplot's global state.

Conventions:

* Images are **RGB**. ``(H, W, 3)`` float in ``[0, 1]`` or uint8 in ``[0, 255]``, or a ``(3, H, W)``
  tensor/array. Nothing is ever reordered to BGR; colours come from matplotlib colormaps, which are RGB.
  (If you loaded an image with OpenCV, convert it first with ``image[..., ::-1]``.)
* Maps are ``(H, W)`` floats in ``[0, 1]`` (camkit's maps after normalisation). Blending is done in
  float, so there is no uint8 wrap-around; :func:`to_uint8` rounds and clips only at the very end.
* Boxes are ``xyxy`` **inclusive** pixel boxes (wsolevaluation's convention): ``(x0, y0, x1, y1)``
  covers the pixel columns ``x0..x1`` and rows ``y0..y1``, both ends included.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from camkit.inputs import boxes_to_photo
from camkit.pixels import _colormap, _resize_bilinear, _to_numpy, as_map, as_rgb_image, colorize, overlay, to_uint8

__all__ = [
    "as_rgb_image",
    "as_map",
    "colorize",
    "overlay",
    "to_uint8",
    "draw_boxes",
    "box_rectangle",
    "add_boxes",
    "new_figure",
    "explanation_figure",
    "explanation_grid",
    "iou_threshold_figure",
    "precision_recall_figure",
    "metric_by_layer_figure",
    "table_figure",
    "save_figure",
]

_trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # numpy 2 renamed trapz


# ---------------------------------------------------------------------------------------------- boxes
def _as_boxes(boxes) -> np.ndarray:
    """Boxes -> ``(N, 4)`` int64 array, xyxy inclusive."""
    if boxes is None:
        return np.zeros((0, 4), dtype=np.int64)
    array = _to_numpy(boxes)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.int64)
    array = array.reshape(-1, 4) if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) xyxy; got shape {tuple(array.shape)}")
    return np.rint(array).astype(np.int64)


def draw_boxes(image, boxes, color=(0.0, 1.0, 0.0), thickness: int = 1) -> np.ndarray:
    """Draw box outlines into a copy of an RGB image, on exact pixels.

    Args:
        image: any layout :func:`as_rgb_image` accepts.
        boxes: ``(N, 4)`` xyxy inclusive pixel boxes. The outline of ``(x0, y0, x1, y1)`` covers
            rows ``y0`` and ``y1`` between columns ``x0..x1``, and columns ``x0`` and ``x1`` between
            rows ``y0..y1``; ``thickness > 1`` grows the outline inwards. Parts outside the image
            are clipped.
        color: RGB floats in ``[0, 1]``.

    Returns:
        ``(H, W, 3)`` float64 RGB in ``[0, 1]``.
    """
    canvas = as_rgb_image(image).copy()
    height, width = canvas.shape[:2]
    colour = np.asarray(color, dtype=np.float64)[:3]
    for x0, y0, x1, y1 in _as_boxes(boxes):
        x0, x1 = sorted((int(x0), int(x1)))
        y0, y1 = sorted((int(y0), int(y1)))
        for t in range(max(1, int(thickness))):
            top, bottom, left, right = y0 + t, y1 - t, x0 + t, x1 - t
            if top > bottom or left > right:
                break
            cols = slice(max(left, 0), min(right, width - 1) + 1)
            rows = slice(max(top, 0), min(bottom, height - 1) + 1)
            for row in (top, bottom):
                if 0 <= row < height:
                    canvas[row, cols] = colour
            for col in (left, right):
                if 0 <= col < width:
                    canvas[rows, col] = colour
    return canvas


def box_rectangle(box) -> Tuple[float, float, float, float]:
    """An inclusive pixel box -> ``(x, y, width, height)`` of its outline in imshow data coordinates.

    ``imshow`` puts pixel ``i``'s centre at ``i``, so it spans ``i - 0.5 .. i + 0.5``. The box
    ``(x0, y0, x1, y1)`` therefore spans ``x0 - 0.5 .. x1 + 0.5`` (width ``x1 - x0 + 1``).
    """
    x0, y0, x1, y1 = (float(v) for v in _as_boxes(box)[0])
    return x0 - 0.5, y0 - 0.5, x1 - x0 + 1.0, y1 - y0 + 1.0


def add_boxes(ax, boxes, color="lime", linewidth: float = 1.5, label: Optional[str] = None,
              linestyle: str = "-"):
    """Draw xyxy inclusive pixel boxes on an ``imshow`` axes as rectangles; returns the patches."""
    from matplotlib.patches import Rectangle

    patches = []
    for index, box in enumerate(_as_boxes(boxes)):
        x, y, w, h = box_rectangle(box)
        patch = Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=linewidth,
                          linestyle=linestyle, label=label if index == 0 else None)
        ax.add_patch(patch)
        patches.append(patch)
    return patches


# -------------------------------------------------------------------------------------------- figures
def new_figure(width: float, height: float, dpi: int = 100):
    """A matplotlib ``Figure`` on an Agg canvas (no pyplot, no window)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path, dpi: Optional[int] = None) -> None:
    """Write a figure to ``path`` (format from the suffix), creating parent folders."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi or figure.dpi, bbox_inches="tight")


def _show(ax, rgb, title: Optional[str] = None, fontsize: float = 8):
    ax.imshow(np.clip(rgb, 0.0, 1.0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def _not_available(ax, title: Optional[str], picture=None):
    """A panel for a (method, layer) without a map: ``picture`` greyed (when given), marked "n/a"."""
    if picture is not None:
        ax.imshow(0.6 + 0.4 * np.clip(picture, 0, 1).mean(axis=2), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, fontsize=9, color="gray")
    if title:
        ax.set_title(title, fontsize=7)


def _class_label(exp, index: int, rank: int = 0) -> Optional[str]:
    """``"name (p=0.87)"`` for the target of image ``index``, or ``None`` when unknown."""
    targets = getattr(exp, "targets", None)
    if targets is None:
        return None
    target = _to_numpy(targets)[index]
    target = int(np.ravel(target)[rank]) if np.ndim(target) else int(target)
    names = getattr(exp, "class_names", None)
    name = names[target] if names is not None and 0 <= target < len(names) else f"class {target}"
    logits = getattr(exp, "logits", None)
    if logits is not None:
        row = _to_numpy(logits)[index].astype(np.float64)
        row = np.exp(row - row.max())
        return f"{name} (p={row[target] / row.sum():.2f})"
    return name


def _images_rgb(exp):
    images = getattr(exp, "images_rgb", None)
    return None if images is None else _to_numpy(images)


def _map_of(exp, method: str, layer: str, index: int, rank: int = 0) -> np.ndarray:
    maps = _to_numpy(exp.maps[(method, layer)])
    one = maps[index]
    if one.ndim == 3:  # top-k maps: (k, H, W)
        one = one[rank]
    return one


def explanation_figure(exp, index: int = 0, methods: Optional[Sequence[str]] = None,
                       layers: Optional[Sequence[str]] = None, cmap="jet", alpha: float = 0.5,
                       show_maps: bool = True, boxes: Optional[Mapping] = None, gt_boxes=None,
                       rank: int = 0, panel_size: float = 2.0, image=None):
    """One image's explanation: the image, then each (method, layer) map and its overlay.

    Layout: one row per method. Column 0 holds the image (first row only); then, for each layer,
    the raw map (if ``show_maps``) and its overlay. Every panel is titled ``method @ layer``.

    Args:
        exp: a camkit ``Explanation`` (uses ``maps``, ``methods``, ``layers``, ``targets``, ``logits``,
            ``images_rgb`` and ``class_names`` when present).
        index: which image of the batch.
        methods, layers: subsets to show (default: all, in the explanation's order).
        boxes: optional ``{(method, layer): (N, 4)}`` predicted boxes *for this image*, drawn on the
            overlays (xyxy inclusive pixels, in the map's coordinates).
        gt_boxes: optional ``(N, 4)`` ground-truth boxes for this image, drawn dashed on the image and
            on every overlay.
        rank: for top-k explanations, which rank to show.
        image: the display image, when ``exp`` has no ``images_rgb``.

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    methods = list(methods or exp.methods)
    layers = list(layers or exp.layers)
    if image is None:
        images = _images_rgb(exp)
        image = images[index] if images is not None else None
    rgb = as_rgb_image(image) if image is not None else None

    per_layer = 2 if show_maps else 1
    n_rows, n_cols = len(methods), 1 + per_layer * len(layers)
    figure = new_figure(panel_size * n_cols, panel_size * n_rows + 0.4)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    label = _class_label(exp, index, rank)

    for row, method in enumerate(methods):
        first = axes[row][0]
        if row == 0 and rgb is not None:
            _show(first, rgb, "image" + (f"\n{label}" if label else ""))
            if gt_boxes is not None:
                add_boxes(first, gt_boxes, color="white", linestyle="--", label="ground truth")
        else:
            first.axis("off")
        for column, layer in enumerate(layers):
            col = 1 + per_layer * column
            title = f"{method} @ {layer}"
            if (method, layer) not in exp.maps:  # e.g. CAM at a layer the classifier does not fit
                for ax in axes[row][col:col + per_layer]:
                    _not_available(ax, title)
                continue
            saliency = as_map(_map_of(exp, method, layer, index, rank))
            if show_maps:
                _show(axes[row][col], colorize(saliency, cmap), title + "\nmap")
                col += 1
            if rgb is not None:
                blended = overlay(rgb, saliency, cmap=cmap, alpha=alpha)
            else:
                blended = colorize(saliency, cmap)
            ax = axes[row][col]
            _show(ax, blended, title + ("\noverlay" if show_maps else ""))
            if gt_boxes is not None:
                add_boxes(ax, gt_boxes, color="white", linestyle="--")
            if boxes is not None and (method, layer) in boxes:
                add_boxes(ax, boxes[(method, layer)], color="lime")
    figure.tight_layout()
    return figure


def explanation_grid(exp, indices: Optional[Iterable[int]] = None,
                     methods: Optional[Sequence[str]] = None, layers: Optional[Sequence[str]] = None,
                     cmap="jet", alpha: float = 0.5, boxes: Optional[Mapping] = None, gt_boxes=None,
                     rank: int = 0, panel_size: float = 1.8, show_maps: bool = False,
                     layer_labels: Optional[Mapping[str, str]] = None):
    """One row per image and layer: the photo, then one overlay per method; a shared colourbar.

    Panels keep the photo's aspect ratio; with camkit's preprocessing the maps are drawn back onto the
    whole photo (the dotted frame is the centre crop the model saw, :attr:`Explanation.frames`).
    Columns are titled with the method, rows with the layer's label (``layer_labels[layer]``, else
    ``exp.layer_labels[layer]``, which says why the layer was chosen, else the layer key). A method
    without a map at a layer (e.g. CAM where no linear head fits, see ``exp.notes``) gets a greyed photo
    marked "n/a", aligned with the others.

    Args:
        exp: a camkit ``Explanation``.
        indices: images of the batch to show (default: all).
        boxes: optional ``{(method, layer): per-image list of (N, 4) boxes}`` (indexed by batch index,
            in the input's pixels).
        gt_boxes: optional per-image list of ``(N, 4)`` ground-truth boxes (indexed by batch index).
        show_maps: also draw each map alone (colour only), after its overlay.
        layer_labels: ``{layer key: readable label}``, e.g. ``{"_swish": "last conv block (_swish)"}``.

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    layers = list(layers or exp.layers)
    methods = [m for m in (methods or exp.methods) if any((m, l) in exp.maps for l in layers)]
    labels = {**getattr(exp, "layer_labels", {}), **(layer_labels or {})}
    batch = _to_numpy(next(iter(exp.maps.values()))).shape[0]
    indices = list(range(batch) if indices is None else indices)
    photos, frames = getattr(exp, "photos", None), getattr(exp, "frames", None)
    images = _images_rgb(exp) if photos is None else [photo / 255.0 for photo in photos]
    per_method = 2 if show_maps else 1
    rows = [(index, layer) for index in indices for layer in layers]
    n_cols = 1 + per_method * len(methods)
    height, width = (images[indices[0]].shape[:2] if images is not None else
                     _to_numpy(next(iter(exp.maps.values()))).shape[-2:])
    figure = new_figure(panel_size * width / height * n_cols + 0.8, panel_size * len(rows) + 0.6)
    figure.set_layout_engine("constrained")
    axes = figure.subplots(len(rows), n_cols, squeeze=False)
    for row, (index, layer) in enumerate(rows):
        rgb = as_rgb_image(images[index]) if images is not None else None
        frame = frames[index] if photos is not None else None
        first = axes[row][0]
        if rgb is not None:
            _show(first, rgb, _class_label(exp, index, rank) if layer == layers[0] else None, fontsize=7)
        else:
            first.set_xticks([])
            first.set_yticks([])
        first.set_ylabel(labels.get(layer, layer), fontsize=7)
        for column, method in enumerate(methods):
            cells = axes[row][1 + per_method * column: 1 + per_method * (column + 1)]
            title = method if row == 0 else None
            if (method, layer) not in exp.maps:
                for ax in cells:
                    _not_available(ax, title, rgb)
                continue
            saliency = as_map(_map_of(exp, method, layer, index, rank))
            if frame is not None:
                _show_on_photo(cells[0], rgb, saliency, frame, cmap, alpha, title)
            else:
                if rgb is not None and saliency.shape != rgb.shape[:2]:
                    saliency = _resize_bilinear(saliency, rgb.shape[:2])
                blended = overlay(rgb, saliency, cmap, alpha) if rgb is not None else colorize(saliency, cmap)
                _show(cells[0], blended, title, fontsize=7)
            if show_maps:
                _show(cells[1], colorize(saliency, cmap), "map" if row == 0 else None, fontsize=7)
            for given, colour, style in ((None if gt_boxes is None else gt_boxes[index], "white", "--"),
                                         (boxes[(method, layer)][index] if boxes and (method, layer) in boxes
                                          else None, "lime", "-")):
                if given is not None:
                    shown = given if frame is None else boxes_to_photo(given, frame, saliency.shape)
                    add_boxes(cells[0], shown, color=colour, linestyle=style, linewidth=1.0)
    _shared_colorbar(figure, axes, cmap)
    return figure


def _show_on_photo(ax, photo, saliency, frame, cmap, alpha: float, title: Optional[str]) -> None:
    """The whole photo, the map blended over the part the model saw (``frame.box``), outlined dotted."""
    x0, y0, x1, y1 = frame.box
    ax.imshow(photo, interpolation="nearest")
    ax.imshow(_colormap(cmap)(saliency)[..., :3], extent=(x0 - 0.5, x1 - 0.5, y1 - 0.5, y0 - 0.5), alpha=alpha, interpolation="bilinear")
    ax.add_patch(_rectangle((x0, y0, x1, y1), "white"))
    ax.set_xlim(-0.5, frame.width - 0.5)
    ax.set_ylim(frame.height - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _rectangle(edges, colour):
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = edges
    return Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linestyle=":",
                     linewidth=0.8)


def _shared_colorbar(figure, axes, cmap) -> None:
    """One colourbar for every map of a figure (maps are in ``[0, 1]``)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=_colormap(cmap))
    bar = figure.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, shrink=0.9)
    bar.ax.tick_params(labelsize=6)
    bar.set_label("map (0 = low, 1 = high)", fontsize=7)


def _curves(curves) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """``(x, y)`` or ``{label: (x, y)}`` -> ``{label: (x, y)}`` as float arrays."""
    if isinstance(curves, Mapping):
        items = curves.items()
    else:
        items = [(None, curves)]
    out = {}
    for label, (x, y) in items:
        x, y = _to_numpy(x).astype(np.float64).ravel(), _to_numpy(y).astype(np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"curve {label!r}: x and y lengths differ ({x.size} vs {y.size})")
        out[label] = (x, y)
    return out


def iou_threshold_figure(curves, ax=None, title: str = "IoU vs threshold"):
    """The IoU-threshold curve of LID (2020): IoU of the thresholded map with the mask per threshold.

    Args:
        curves: ``(thresholds, ious)`` arrays of equal length, or ``{label: (thresholds, ious)}``.
            The peak of each curve (its Peak-IoU) is marked and given in the legend.
        ax: an axes to draw into (default: a new figure).

    Returns:
        the ``Figure``.
    """
    figure, ax = _figure_and_axes(ax)
    for label, (x, y) in _curves(curves).items():
        peak = int(np.argmax(y)) if y.size else None
        text = f"peak IoU {y[peak]:.3f} @ {x[peak]:.3g}" if peak is not None else ""
        line, = ax.plot(x, y, label=f"{label}: {text}" if label else text)
        if peak is not None:
            ax.plot([x[peak]], [y[peak]], "o", color=line.get_color())
    ax.set_xlabel("threshold")
    ax.set_ylabel("IoU")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return figure


def precision_recall_figure(curves, ax=None, title: str = "Pixel precision-recall"):
    """The pixel precision-recall curve (the curve whose area is PxAP).

    Args:
        curves: ``(precision, recall)`` arrays of equal length, or ``{label: (precision, recall)}``.
            Each legend entry gives the area under the curve (trapezoids over recall; the metrics
            module's PxAP is the number of record, this is only a label).
        ax: an axes to draw into (default: a new figure).
    """
    figure, ax = _figure_and_axes(ax)
    for label, (precision, recall) in _curves(curves).items():
        order = np.argsort(recall, kind="stable")
        area = float(_trapezoid(precision[order], recall[order])) if recall.size > 1 else 0.0
        ax.plot(recall, precision, label=f"{label}: area {area:.3f}" if label else f"area {area:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return figure


#: Marker shapes of :func:`metric_by_layer_figure`, one per line, so that coinciding points stay apart.
LINE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _dodge_offsets(count: int, spread: float = 0.2) -> np.ndarray:
    """``count`` sideways offsets centred on 0, ``spread`` apart end to end (none for one line)."""
    if count < 2:
        return np.zeros(max(count, 1))
    return np.linspace(-spread / 2, spread / 2, count)


def metric_by_layer_figure(values: Mapping[str, Mapping[str, float]], metric: str = "MaxBoxAccV2",
                           layers: Optional[Sequence[str]] = None, ax=None):
    """One line per method: ``metric`` against layer (layers in the given order, shallow to deep).

    Methods that score the same stay visible: each has its own hollow marker and is shifted
    sideways by a small offset (at most ``0.2`` of the spacing between layers, centred on the tick).

    Args:
        values: ``{method: {layer: value}}``; missing entries are left as gaps.
        layers: the x-axis order (default: first-seen order).
    """
    figure, ax = _figure_and_axes(ax, size=(6.0, 3.6))
    if layers is None:
        layers = []
        for per_layer in values.values():
            layers += [l for l in per_layer if l not in layers]
    x = np.arange(len(layers))
    offsets = _dodge_offsets(len(values))
    for index, (method, per_layer) in enumerate(values.items()):
        y = [per_layer.get(l, math.nan) for l in layers]
        y = [math.nan if v is None else float(v) for v in y]
        ax.plot(x + offsets[index], y, marker=LINE_MARKERS[index % len(LINE_MARKERS)], markerfacecolor="none",
                label=method)
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.5, max(len(layers), 1) - 0.5)  # half a layer either side, so the offsets stay small
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by layer")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def table_figure(header: Sequence[str], rows: Sequence[Sequence], title: Optional[str] = None):
    """A table rendered as a figure (e.g. the benchmark's cost table)."""
    n_rows = len(rows)
    figure = new_figure(max(4.0, 1.3 * len(header)), 0.6 + 0.28 * (n_rows + 1))
    ax = figure.add_subplot(1, 1, 1)
    ax.axis("off")
    cells = [[_format_cell(v) for v in row] for row in rows]
    table = ax.table(cellText=cells or [[""] * len(header)], colLabels=list(header), loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.2)
    if title:
        ax.set_title(title, fontsize=9)
    return figure


def _format_cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def _figure_and_axes(ax, size=(4.5, 3.4)):
    if ax is not None:
        return ax.figure, ax
    figure = new_figure(*size)
    return figure, figure.add_subplot(1, 1, 1)
