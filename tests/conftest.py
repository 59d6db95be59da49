"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPOSITORY_ROOT.parent / "shared" / "data"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh, empty data directory path for one test."""
    return tmp_path / "data"
