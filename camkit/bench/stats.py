"""Seed statistics for the benchmark tables: a mean and its Student-t confidence interval."""
from __future__ import annotations

import math
from typing import Iterable, Tuple

import numpy as np


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Tuple[float, float]:
    """The mean of ``values`` and the half-width of its two-sided Student-t ``confidence`` interval.

    The half-width is ``t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (``ddof=1``); it is 0 for a single value (no spread can be estimated from one seed).
    """
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_interval needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if values.size < 2:
        return float(values.mean()), 0.0
    from scipy.stats import t
    half = t.ppf((1 + confidence) / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return float(values.mean()), float(half)
