"""Plain records that cross between the parts (backends, execution, results).

A leaf: it imports nothing of lem_ray, so any part may use it without pulling in another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The inverses of RunKey.run_id and RunKey.stem. Numbers as those write them, no leading zero,
# so a parsed name formats back to itself.
_COUNT = r"0|[1-9][0-9]*"
_RUN_ID = re.compile(rf"(?P<experiment_id>.+)-c(?P<cycle>{_COUNT})")
_STEM = re.compile(rf"{_RUN_ID.pattern}-a(?P<attempt>{_COUNT})")


@dataclass
class RequestRecord:
    """Timings of one request, as the backend saw its tokens arrive.

    `itl_ms` are the gaps between consecutive output tokens (len = output_tokens - 1 when the
    backend streams; empty when it can only report the end). Times are from time.perf_counter.
    `itl_mean_ms` is the mean gap of a request whose only known times are its first and last
    token's (`itl_ms` then empty): (last - first) / (output_tokens - 1).
    """

    index: int
    input_tokens: int
    output_tokens: int
    e2e_ms: float
    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    start_s: float = 0.0
    itl_mean_ms: float | None = None


@dataclass(frozen=True, order=True)
class RunKey:
    """One planned run: an experiment in one cycle. `run_id` keys the manifest; each attempt's
    files are named by `stem(attempt)`. The only place these formats are written and read
    back (`parse`, `parse_stem`)."""

    experiment_id: str
    cycle: int

    @property
    def run_id(self) -> str:
        """`<experiment_id>-c<cycle>`: the run's name in the manifest and rows."""
        return f"{self.experiment_id}-c{self.cycle}"

    def stem(self, attempt: int) -> str:
        """File stem of one attempt's result files: `<run_id>-a<attempt>`."""
        return f"{self.run_id}-a{attempt}"

    @classmethod
    def parse(cls, run_id: str) -> RunKey:
        """The run a run_id names; ValueError for text run_id never writes."""
        found = _RUN_ID.fullmatch(run_id)
        if found is None:
            raise ValueError(f"not a run id (<experiment_id>-c<cycle>): {run_id!r}")
        return cls(found["experiment_id"], int(found["cycle"]))

    @classmethod
    def parse_stem(cls, stem: str) -> tuple[RunKey, int]:
        """The run and attempt of an attempt's file stem; ValueError for any other name."""
        found = _STEM.fullmatch(stem)
        if found is None:
            raise ValueError(f"not an attempt's stem (<run_id>-a<attempt>): {stem!r}")
        return cls(found["experiment_id"], int(found["cycle"])), int(found["attempt"])

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> RunKey:
        """The run a row (or manifest entry) belongs to, from its identity columns."""
        return cls(row["experiment_id"], row["cycle"])


@dataclass(frozen=True)
class RunAttempt:
    """One attempt of a run in a campaign: the ids every row of the attempt carries."""

    campaign_name: str
    key: RunKey
    attempt: int

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.key.run_id

    @property
    def stem(self) -> str:
        """File stem of this attempt's result files."""
        return self.key.stem(self.attempt)

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> RunAttempt:
        """The attempt a row belongs to, from its identity columns (as_dict's inverse)."""
        return cls(row["campaign_name"], RunKey.of_row(row), row["attempt"])

    def as_dict(self) -> dict[str, Any]:
        """The identity columns every row of this attempt carries."""
        return {
            "campaign_name": self.campaign_name,
            "experiment_id": self.key.experiment_id,
            "cycle": self.key.cycle,
            "attempt": self.attempt,
            "run_id": self.run_id,
        }


def host_key(node_id: str | None) -> str:
    """The host's key among the campaign's baselines, which are otherwise GPU UUIDs."""
    return f"host:{node_id}"


@dataclass(frozen=True, kw_only=True)
class Baseline:
    """An idle baseline as the sampler measured it, of a GPU (by UUID) or of a node's host
    (by host_key). `age_s` is added where it is handed out; a cached entry has none."""

    power_w: float
    method: str
    measured_at_s: float | None = None
    duration_s: float | None = None
    samples: int | None = None
    compute_processes: int | None = None
    age_s: float | None = None

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Baseline:
        """Typed from the sampler's dict: a key it does not know is an error, not a null."""
        return cls(**entry)


@dataclass(frozen=True, kw_only=True)
class GpuEnvironment:
    """NVML's facts about one GPU, stored with every result so a figure can be judged later
    (telemetry/nvml.py DeviceReader.environment); what a reader could not read is None."""

    uuid: str | None = None
    name: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    power_limit_w: float | None = None
    architecture: str | None = None
    architecture_code: int | None = None
    mig_enabled: bool | None = None
    compute_process_count: int | None = None
    compute_process_pids: list[int] | None = None
    energy_counter_supported: bool | None = None
    power_method: str | None = None

    @classmethod
    def of(cls, entry: dict[str, Any]) -> GpuEnvironment:
        """Typed from the sampler's dict: a key it does not know is an error, not a null."""
        return cls(**entry)
