"""camkit.boxes.iou: wsolevaluation's own IoU and resize values, a loop reference, one return type."""
import numpy as np
import pytest
import torch

import wsol_reference as ref
from camkit.boxes import box_iou, resize_boxes, validate_boxes


# ---------------------------------------------------------------- wsolevaluation unit-test values
def test_iou_expected_values():
    assert box_iou([[1, 2, 5, 6]], [[3, 1, 4, 5]])[0, 0] == pytest.approx(8 / 27, abs=0)
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 1.0


def test_invalid_box():
    with pytest.raises(ValueError, match="invalid boxes"):
        validate_boxes([[1, 1, 0, 0]])
    # its area is 0 under the +1 convention, so its IoU with itself has a zero denominator -> 0
    assert box_iou([[1, 1, 0, 0]], [[1, 1, 0, 0]])[0, 0] == 0.0


def test_resize_expected_value():
    assert resize_boxes([[1, 2, 4, 3]], (10, 20), (35, 10)).tolist() == [[3, 1, 14, 1]]



def test_iou_of_torch_boxes_is_float64_numpy():
    # one return type whatever the input: a float64 numpy array (the values of the numpy path)
    iou = box_iou(torch.tensor([[1, 2, 5, 6]]), torch.tensor([[3, 1, 4, 5], [1, 2, 5, 6]]))
    assert isinstance(iou, np.ndarray) and iou.dtype == np.float64 and iou.tolist() == [[8 / 27, 1.0]]


def test_box_iou_matches_loop_reference():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 20, (30, 4))
    b = rng.integers(0, 20, (20, 4))
    np.testing.assert_array_equal(box_iou(a, b), ref.iou_matrix(a, b))

