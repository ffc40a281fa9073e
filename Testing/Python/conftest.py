"""Shared pytest helpers: the third-party data beside the repository, skipped when absent."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_data(name: str) -> Path:
    """``../shared/data/<name>``, or skip the test with the reason when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"needs real data at {path} (the project's ../shared/data, present in CI)")
    return path
