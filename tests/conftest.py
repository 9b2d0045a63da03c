"""Shared fixtures: the real cryo-EM data in ``../shared/data`` (tests skip cleanly without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Real maps and models, outside the repository (``<repo>/../shared/data``); read-only.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data directory; skips the test when it is not available."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_file(shared_data):
    """``shared_file("maps/x/y.mrc")`` → path of that shared file; skips the test if it is missing."""

    def get(relative: str) -> Path:
        path = shared_data / relative
        if not path.is_file():
            pytest.skip(f"shared data file not available: {path}")
        return path

    return get
