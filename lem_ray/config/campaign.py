"""The campaign file: a base experiment, a grid over it, and how to run the result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from lem_ray.config.base import StrictModel

Backend = Literal["pytorch", "vllm", "tensorrt"]


class GridConfig(StrictModel):
    backends: list[Backend] = Field(default_factory=list)
    shared: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted experiment keys -> values, for all backends"
    )
    backend_overrides: dict[Backend, dict[str, list[Any]]] = Field(
        default_factory=dict, description="per backend: keys of its own section -> values"
    )

    @field_validator("shared")
    @classmethod
    def _non_empty_axes(cls, axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in axes.items():
            if not values:
                raise ValueError(f"axis {key!r} has no values")
        return axes


class ExecutionConfig(StrictModel):
    cycles: int = Field(3, ge=1, description="each experiment is run this many times")
    structure: Literal["interleaved", "shuffled", "grouped"] = "interleaved"
    seed: int = 0
    config_gap_s: float = Field(0, ge=0, description="pause between runs on the same GPUs")
    cycle_gap_s: float = Field(0, ge=0, description="pause between cycles")


class OutputConfig(StrictModel):
    results_dir: str | None = Field(None, description="default: results/<campaign_name>")


class CampaignConfig(StrictModel):
    campaign_name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base: dict[str, Any] = Field(default_factory=dict)
    grid: GridConfig = Field(default_factory=GridConfig)
    experiments: list[dict[str, Any]] = Field(default_factory=list)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
