"""Fixtures shared by the backend tests."""

from __future__ import annotations

import pytest

from tests.fakes.clock import ManualClock
from tests.fakes.vllm_engine import install_simulated_vllm


@pytest.fixture
def simulated_vllm(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """vLLM's offline engine loop on a manual clock (tests/fakes/vllm_engine.py)."""
    return install_simulated_vllm(monkeypatch)
