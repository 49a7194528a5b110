"""Shared fixtures. Real assets live in ``../shared/assets`` beside the project root."""
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


@pytest.fixture(scope="session")
def assets_dir():
    """Path to ``../shared/assets``; skips the test when the folder is missing."""
    if not ASSETS.is_dir():
        pytest.skip(f"real test assets not found at {ASSETS}")
    return ASSETS


def asset(relative):
    """Path to one asset file, skipping the calling test when it is missing."""
    path = ASSETS / relative
    if not path.exists():
        pytest.skip(f"real test asset not found: {path}")
    return path
