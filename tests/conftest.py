"""Shared fixtures: campaign files written to tmp dirs, and the tiny model's base config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

TINY_BASE: dict[str, Any] = {
    "model_name": "builtin:tiny-llama",
    "load_format": "dummy",
    "fp_precision": "float32",
    "max_input_tokens": 32,
    "max_output_tokens": 8,
    "min_output_tokens": 8,
    "prompts": {"source": "synthetic", "count": 6, "input_len": {"mean": 16, "std": 4}},
    "warmup": {"mode": "fixed", "requests": 2},
}


@pytest.fixture
def write_campaign(tmp_path: Path):
    def write(data: dict[str, Any], name: str = "campaign.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests need NVML; without it they are skipped, not failed."""
    from lem_ray.telemetry.nvml import nvml_status

    available, reason = nvml_status()
    if available:
        return
    skip = pytest.mark.skip(reason=f"gpu test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
