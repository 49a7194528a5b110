"""``Explanation.boxes``: named box rules on the maps, boxes in the input's (or the picture's) pixels."""
import numpy as np
import pytest
import torch

from camkit.explain import Explanation


def _explanation(maps, input_size=(8, 8)):
    batch = maps.shape[0]
    return Explanation(maps={("gradcam", "layer4"): maps}, logits=torch.zeros(batch, 3),
                       targets=torch.zeros(batch, dtype=torch.long), methods=["gradcam"], layers=["layer4"],
                       images=torch.zeros(batch, 3, *input_size))


def _block(size, rows, cols):
    saliency = torch.zeros(1, size, size)
    saliency[0, rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    return saliency


def test_fixed_rule_in_the_input_pixels():
    exp = _explanation(_block(8, (2, 5), (3, 7)))
    # the block spans x 3..6, y 2..4; wsolevaluation's box is (x, y, x + w, y + h): the far edge + 1
    (boxes,) = exp.boxes("gradcam", "layer4", box_rule="fixed", fraction=0.2)
    assert boxes.tolist() == [[3, 2, 7, 5]]
    assert exp.boxes("gradcam")[0].tolist() == [[3, 2, 7, 5]]  # one layer: the layer may be omitted


def test_boxes_are_mapped_onto_the_original_picture():
    exp = _explanation(_block(8, (2, 5), (3, 7)))
    (boxes,) = exp.boxes("gradcam", sizes=[(16, 24)])  # (H, W): y doubles, x triples
    # x0 = 3 * 3, y0 = 2 * 2, x1 = int((7 + 1) * 3) - 1, y1 = int((5 + 1) * 2) - 1
    assert boxes.tolist() == [[9, 4, 23, 11]]


def test_layer_resolution_maps_still_give_input_pixels():
    exp = _explanation(_block(4, (1, 3), (0, 2)), input_size=(8, 8))
    # map box (0, 1, 2, 3) on a 4 x 4 frame -> x0 0, y0 2, x1 int(3 * 2) - 1 = 5, y1 int(4 * 2) - 1 = 7
    assert exp.boxes("gradcam")[0].tolist() == [[0, 2, 5, 7]]


def test_percentile_and_cicam_rules_and_errors():
    exp = _explanation(_block(8, (2, 5), (3, 7)))
    assert exp.boxes("gradcam", box_rule="percentile", tau=0.5, q=99)[0].tolist() == [[3, 2, 7, 5]]
    assert exp.boxes("gradcam", box_rule="pas", tau=0.5, q=99)[0].tolist() == [[3, 2, 7, 5]]
    assert exp.boxes("gradcam", box_rule="fixed:0.5")[0].tolist() == [[3, 2, 7, 5]]
    peaked = _block(8, (2, 5), (3, 7)) * 0.6
    peaked[0, 3:5, 4:6] = 1.0
    # the released CI-CAM rule keeps map > 0.12 max (the block, 12 pixels), then > the mean over the whole
    # image (8 x 0.6 + 4 x 1.0) / 64 = 0.1375: the whole block x 3..6, y 2..4; box (3, 2, 6 + 1, 4 + 1)
    assert _explanation(peaked).boxes("gradcam", box_rule="cicam")[0].tolist() == [[3, 2, 7, 5]]
    # the kept-mean rule keeps u > 0.2 max (the block), then u > the kept mean (8 x 153 + 4 x 255) / 12 = 187:
    # the 2 x 2 peak at x 4..5, y 3..4, as a tight inclusive box
    assert _explanation(peaked).boxes("gradcam", box_rule="cicam-kept-mean")[0].tolist() == [[4, 3, 5, 4]]
    assert _explanation(peaked).boxes("gradcam", box_rule="cicam", seg_thr=0.8)[0].tolist() == [[4, 3, 6, 5]]
    with pytest.raises(ValueError, match="unknown box rule 'otsu'"):
        exp.boxes("gradcam", box_rule="otsu")
    with pytest.raises(ValueError, match="needs ground-truth boxes"):
        exp.boxes("gradcam", box_rule="wsol")
    with pytest.raises(ValueError, match="renamed"):
        exp.boxes("gradcam", rule="fixed")
    with pytest.raises(ValueError, match="has no option"):
        exp.boxes("gradcam", box_rule="cicam", fraction=0.3)
    with pytest.raises(ValueError, match="sizes has 2 entries for a batch of 1"):
        exp.boxes("gradcam", sizes=[(8, 8), (8, 8)])
    with pytest.raises(KeyError, match="no map for"):
        exp.boxes("cam")


def test_no_foreground_gives_the_empty_box():
    exp = _explanation(torch.zeros(1, 8, 8))
    assert np.array_equal(exp.boxes("gradcam")[0], [[0, 0, 0, 0]])
