"""Fixtures shared by the results tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.synthetic_results import write_synthetic


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    write_synthetic(out)
    return out
