"""camkit.bench.cost: the floor pass, peak memory and the checks of measure_cost. (No timings are asserted.)"""
import pytest
import torch

from camkit.bench import cost
from camkit.model_spec import load_model
from test_cli import TINY


def test_floor_pass_is_the_gradient_of_the_top1_logit():
    # GAP + linear head: d logit_c / d A[k, i, j] = W[c, k] / (h * w), the same at every position.
    model = load_model(TINY).model
    x = torch.randn(2, 3, 32, 32)
    grad = cost.floor_pass(model, x, "layer2")
    classes = model(x).argmax(1)
    expected = (model.fc.weight[classes] / (16 * 16))[:, :, None, None].expand(-1, -1, 16, 16)
    torch.testing.assert_close(grad, expected)
    assert not model.layer2._forward_hooks  # the hook is gone


def test_peak_memory_is_non_negative():
    with cost.PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(4_000_000)  # 16 MB
        del block
    assert memory.peak_mib >= 0


@pytest.mark.parametrize("repeats, fragment", [
    (0, "repeats must be at least 1 .timed rounds after the warm-up., got 0"),
    (-2, "repeats must be at least 1 .timed rounds after the warm-up., got -2"),
])
def test_measure_cost_needs_a_timed_round(repeats, fragment):
    model = load_model(TINY).model.eval()
    with pytest.raises(ValueError, match=fragment):
        cost.measure_cost(model, torch.randn(2, 3, 32, 32), ["gradcam"], ["layer2"], repeats=repeats)
    assert not model.layer2._forward_hooks


def test_environment_records_the_camkit_version():
    from camkit._version import __version__

    info = cost.environment(torch.device("cpu"))
    assert info["camkit"] == __version__ == "0.1.0" and info["device"] == "cpu"
