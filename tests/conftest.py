"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (override with ``WTAL_SHARED_DATA``).

    Tests that read the real annotation files or the evaluation fixtures skip when it is
    absent: users do not have it, and the package never needs it.
    """
    path = Path(os.environ.get("WTAL_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared benchmark data not found at {path} (set WTAL_SHARED_DATA)")
    return path
