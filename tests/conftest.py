"""Shared fixtures. Real assets live in ``../shared/assets`` beside the project root.

Tests that need an asset skip when it is missing, unless ``CAMKIT_REQUIRE_ASSETS=1`` (set by
``.ci/run``), which turns a missing asset into a failure so CI never passes by skipping them.
"""
import os
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def _missing(message):
    if os.environ.get("CAMKIT_REQUIRE_ASSETS") == "1":
        pytest.fail(message + " (CAMKIT_REQUIRE_ASSETS=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def assets_dir():
    """Path to ``../shared/assets``; skips the test when the folder is missing."""
    if not ASSETS.is_dir():
        _missing(f"real test assets not found at {ASSETS}")
    return ASSETS


def asset(relative):
    """Path to one asset file, skipping the calling test when it is missing."""
    path = ASSETS / relative
    if not path.exists():
        _missing(f"real test asset not found: {path}")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of many small CPU calls (spin contention on a busy 2-core box).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
