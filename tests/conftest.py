"""Shared fixtures: the real data beside the checkout, and small generated images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """../shared/data beside the checkout, or $FEWCELLS_SHARED_DATA."""
    return Path(os.environ.get("FEWCELLS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def real_data() -> Path:
    """The real data sets; the test is skipped where they are absent."""
    path = shared_data()
    if not (path / "ALL_IDB2").is_dir():
        pytest.skip(f"real data not found at {path}")
    return path
