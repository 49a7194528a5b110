"""The seed statistics of the benchmark tables: hand-computed t-intervals."""
import pytest

from camkit.bench.stats import mean_interval


def test_three_seeds_by_hand():
    # mean 2, s = 1, t_{0.975, 2} = 4.302653 (tables), half-width 4.302653 / sqrt(3) = 2.484138
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and half == pytest.approx(2.484138, abs=1e-6)


def test_one_seed_has_no_interval_and_constant_values_have_zero_width():
    assert mean_interval([0.7]) == (0.7, 0.0)
    assert mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.0)


def test_wider_confidence_is_wider_and_shift_invariant():
    _, h95 = mean_interval([1.0, 4.0, 2.0, 8.0])
    _, h99 = mean_interval([1.0, 4.0, 2.0, 8.0], confidence=0.99)
    m, h = mean_interval([101.0, 104.0, 102.0, 108.0])
    assert h99 > h95 and h == pytest.approx(h95) and m == pytest.approx(103.75)


@pytest.mark.parametrize("values, confidence, message", [([], 0.95, "at least one value"),
                                                         ([1.0, 2.0], 1.0, "confidence must be in")])
def test_bad_input(values, confidence, message):
    with pytest.raises(ValueError, match=message):
        mean_interval(values, confidence)
