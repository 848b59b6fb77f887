"""Fixtures for the storage tests: every test gets its own DuckDB file in tmp_path, never data/bars.duckdb."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "bars.duckdb"
