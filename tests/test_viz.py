"""camkit.viz: pixel values of overlays, colours that follow the map, boxes on the right pixels."""
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch

from camkit import viz

JET = matplotlib.colormaps["jet"]
TOP = np.array(JET(1.0)[:3])       # jet's top colour: dark red (0.5, 0, 0)
BOTTOM = np.array(JET(0.0)[:3])    # jet's bottom colour: dark blue (0, 0, 0.5)


def test_jet_ends_are_what_the_tests_assume():
    # Hand-checked: jet runs from dark blue to dark red. If this fails, the oracle below is wrong.
    np.testing.assert_allclose(TOP, [0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(BOTTOM, [0.0, 0.0, 0.5], atol=1e-6)


def test_map_of_ones_is_top_colour_and_zeros_bottom_colour():
    image = np.full((5, 7, 3), 0.3)
    ones = viz.overlay(image, np.ones((5, 7)), alpha=1.0)
    zeros = viz.overlay(image, np.zeros((5, 7)), alpha=1.0)
    assert ones.shape == (5, 7, 3)
    np.testing.assert_allclose(ones, np.broadcast_to(TOP, ones.shape), atol=1e-12)
    np.testing.assert_allclose(zeros, np.broadcast_to(BOTTOM, zeros.shape), atol=1e-12)


def test_rgb_not_bgr():
    # A hot map must be red in channel 0 (RGB), not in channel 2 (the OpenCV BGR trap).
    out = viz.to_uint8(viz.overlay(np.zeros((2, 2, 3)), np.ones((2, 2)), alpha=1.0))
    assert out[0, 0, 0] == 128 and out[0, 0, 2] == 0


def test_alpha_blend_is_exact_in_float():
    rng = np.random.default_rng(0)
    image = rng.random((4, 6, 3))
    saliency = rng.random((4, 6))
    alpha = 0.37
    expected = (1 - alpha) * image + alpha * np.asarray(JET(saliency))[..., :3]
    np.testing.assert_allclose(viz.overlay(image, saliency, alpha=alpha), expected, atol=1e-12)
    np.testing.assert_allclose(viz.overlay(image, saliency, alpha=0.0), image, atol=1e-12)


def test_uint8_input_has_no_wraparound():
    # 250 + a bright colour would wrap around in uint8 arithmetic; in float it saturates.
    image = np.full((3, 3, 3), 250, dtype=np.uint8)
    out = viz.to_uint8(viz.overlay(image, np.full((3, 3), 0.75), cmap="gray", alpha=0.5))
    # gray(0.75) = 0.75 -> 0.5 * 250/255 + 0.5 * 0.75 = 0.865196 -> 221
    assert out.dtype == np.uint8
    assert np.all(out == 221)
    white = viz.to_uint8(viz.overlay(np.full((2, 2, 3), 255, np.uint8), np.ones((2, 2)), "gray", 0.5))
    assert np.all(white == 255)


def test_uint8_and_float_and_chw_tensor_agree():
    rng = np.random.default_rng(1)
    image8 = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    saliency = rng.random((4, 5))
    a = viz.overlay(image8, saliency)
    b = viz.overlay(image8 / 255.0, saliency)
    c = viz.overlay(torch.from_numpy(image8 / 255.0).permute(2, 0, 1), torch.from_numpy(saliency))
    np.testing.assert_allclose(a, b, atol=1e-12)
    np.testing.assert_allclose(a, c, atol=1e-12)


def test_map_is_resized_bilinearly_to_the_image():
    small = np.array([[0.0, 1.0], [1.0, 0.0]])
    out = viz.as_map(small, size=(4, 4))
    # align_corners=False, scale 2: output pixel 0 samples input coordinate -0.25 -> clamped to 0.
    assert out.shape == (4, 4)
    assert out[0, 0] == 0.0 and out[0, 3] == 1.0
    # output column 1 samples x = 0.25: 0.75 * 0 + 0.25 * 1 at row 0
    assert out[0, 1] == pytest.approx(0.25)


def test_normalised_input_is_refused_with_advice():
    with pytest.raises(ValueError, match="normalis"):
        viz.overlay(np.full((2, 2, 3), -1.5), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        viz.overlay(np.zeros((2, 2, 3)), np.full((2, 2), 3.0))
    np.testing.assert_allclose(
        viz.overlay(np.zeros((1, 2, 3)), np.array([[2.0, 4.0]]), alpha=1.0, normalize=True)[0, 1], TOP)


def test_draw_boxes_hits_exact_pixels():
    out = viz.draw_boxes(np.zeros((8, 10, 3)), [[2, 1, 5, 4]], color=(1.0, 0.0, 0.0))
    red = out[..., 0] == 1.0
    expected = np.zeros((8, 10), dtype=bool)
    expected[1, 2:6] = expected[4, 2:6] = True   # top and bottom rows, columns 2..5 inclusive
    expected[1:5, 2] = expected[1:5, 5] = True   # left and right columns, rows 1..4 inclusive
    np.testing.assert_array_equal(red, expected)
    # a one-pixel box is that pixel
    single = viz.draw_boxes(np.zeros((3, 3, 3)), [[1, 1, 1, 1]], color=(0, 0, 1))
    assert single[1, 1, 2] == 1.0 and single[..., 2].sum() == 1.0
    # clipped at the border without error
    clipped = viz.draw_boxes(np.zeros((3, 3, 3)), [[-2, -2, 1, 1]], color=(0, 1, 0))
    # visible edges: row 1 (columns 0..1) and column 1 (rows 0..1); rows/columns -2 are off-image
    np.testing.assert_array_equal(clipped[..., 1] == 1.0,
                                  [[False, True, False], [True, True, False], [False, False, False]])


def test_box_rectangle_covers_inclusive_pixels():
    assert viz.box_rectangle([2, 1, 5, 4]) == (1.5, 0.5, 4.0, 4.0)


def _render(figure):
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3]


def _centre_pixel(figure, ax, pixels):
    x0, y0, x1, y1 = ax.get_window_extent().extents
    height = pixels.shape[0]
    return pixels[int(height - (y0 + y1) / 2), int((x0 + x1) / 2)]


def _fake_explanation(maps, images):
    return SimpleNamespace(
        maps=maps, methods=sorted({m for m, _ in maps}), layers=sorted({l for _, l in maps}),
        logits=torch.tensor([[0.0, 2.0, 1.0]]), targets=torch.tensor([1]),
        images_rgb=images, class_names=["cat", "dog", "owl"])


def test_explanation_figure_renders_colours_that_follow_the_map():
    images = np.full((1, 16, 16, 3), 0.5)
    maps = {("gradcam", "layer4"): torch.ones(1, 16, 16), ("cam", "layer4"): torch.zeros(1, 16, 16)}
    exp = _fake_explanation(maps, images)
    figure = viz.explanation_figure(exp, alpha=1.0)
    pixels = _render(figure).astype(int)
    axes = figure.axes
    titles = [ax.get_title() for ax in axes]
    assert "dog (p=0.67)" in titles[0]
    for method, colour in (("gradcam", TOP), ("cam", BOTTOM)):
        map_ax = next(ax for ax in axes if ax.get_title() == f"{method} @ layer4\nmap")
        overlay_ax = next(ax for ax in axes if ax.get_title() == f"{method} @ layer4\noverlay")
        for ax in (map_ax, overlay_ax):
            np.testing.assert_allclose(_centre_pixel(figure, ax, pixels), np.rint(colour * 255), atol=1)


def test_explanation_grid_and_boxes_patches():
    images = np.zeros((2, 8, 8, 3))
    maps = {("gradcam", "a"): torch.rand(2, 8, 8), ("gradcam", "b"): torch.rand(2, 8, 8)}
    exp = _fake_explanation(maps, images)
    exp.logits, exp.targets = torch.zeros(2, 3), torch.tensor([0, 2])
    figure = viz.explanation_grid(exp, boxes={("gradcam", "a"): [[[1, 1, 3, 3]], [[0, 0, 7, 7]]]},
                                  gt_boxes=[[[2, 2, 4, 4]], []])
    assert len(figure.axes) == (2 * 2) * 2 + 1     # rows: image x layer; photo + gradcam; the colourbar
    patches = figure.axes[1].patches  # row 0, (gradcam, a)
    corners = sorted((p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in patches)
    assert corners == [(0.5, 0.5, 3.0, 3.0), (1.5, 1.5, 3.0, 3.0)]


def test_curves_figures():
    thresholds = np.linspace(0, 1, 11)
    ious = 1 - np.abs(thresholds - 0.3)
    figure = viz.iou_threshold_figure({"gradcam": (thresholds, ious)})
    assert "peak IoU 1.000 @ 0.3" in figure.axes[0].get_legend().get_texts()[0].get_text()
    recall = np.array([0.0, 0.5, 1.0])
    precision = np.array([1.0, 1.0, 0.5])
    figure = viz.precision_recall_figure((precision, recall))
    assert "area 0.875" in figure.axes[0].get_legend().get_texts()[0].get_text()


def test_metric_by_layer_and_table_figures(tmp_path):
    figure = viz.metric_by_layer_figure({"cam": {"l1": 0.1, "l2": 0.5}, "gradcam": {"l2": 0.4}})
    lines = figure.axes[0].get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), [0.1, 0.5])
    assert np.isnan(lines[1].get_ydata()[0])
    viz.save_figure(figure, tmp_path / "sub" / "m.png")
    table = viz.table_figure(["method", "img/s"], [["cam", 12.345]])
    viz.save_figure(table, tmp_path / "t.png")
    assert (tmp_path / "sub" / "m.png").stat().st_size > 0 and (tmp_path / "t.png").stat().st_size > 0


def test_box_patch_renders_on_the_pixel_edges():
    # A 10x10 image filling a 100x100-pixel canvas: image pixel i spans canvas pixels 10i .. 10i+9.
    figure = viz.new_figure(1.0, 1.0, dpi=100)
    ax = figure.add_axes([0, 0, 1, 1])
    ax.imshow(np.zeros((10, 10, 3)), interpolation="nearest")
    ax.axis("off")
    viz.add_boxes(ax, [[2, 3, 5, 6]], color=(0.0, 1.0, 0.0), linewidth=1.0)
    pixels = _render(figure).astype(int)
    green = (pixels[..., 1] > 128) & (pixels[..., 0] < 100)
    cols = np.nonzero(green[45])[0]   # a row through the box's middle: the left and right edges
    rows = np.nonzero(green[:, 35])[0]  # a column through the middle: the top and bottom edges
    # inclusive box columns 2..5 -> outer edges at canvas x = 20 and 60; rows 3..6 -> y = 30 and 70
    assert cols.min() in (19, 20) and cols.max() in (59, 60) and set(cols) <= {19, 20, 59, 60}
    assert rows.min() in (29, 30) and rows.max() in (69, 70) and set(rows) <= {29, 30, 69, 70}
    assert not green[45, 35]  # the inside stays the image's colour


def test_metric_by_layer_keeps_coinciding_points_apart():
    # three methods with the same value at every layer: hollow, distinct markers, dodged sideways
    same = {"l1": 0.5, "l2": 0.7}
    figure = viz.metric_by_layer_figure({"cam": same, "gradcam": same, "pcs": same}, layers=["l1", "l2"])
    lines = figure.axes[0].get_lines()
    xs = [tuple(line.get_xdata()) for line in lines]
    assert len(set(xs)) == 3  # no two lines on the same x positions
    for x in xs:  # each offset stays near its tick (within 0.1 of the layer spacing)
        np.testing.assert_allclose(x, [0, 1], atol=0.1 + 1e-9)
    np.testing.assert_allclose(np.mean(xs, axis=0), [0, 1])  # centred on the ticks
    assert len({line.get_marker() for line in lines}) == 3
    assert all(line.get_markerfacecolor() == "none" for line in lines)
    np.testing.assert_allclose(figure.axes[0].get_xticks(), [0, 1])
    assert figure.axes[0].get_xlim() == (-0.5, 1.5)  # one layer's width per layer, whatever the offsets
    single = viz.metric_by_layer_figure({"cam": same}).axes[0].get_lines()[0]
    np.testing.assert_allclose(single.get_xdata(), [0, 1])  # one line: on the ticks
