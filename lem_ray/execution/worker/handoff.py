"""What the run's actors hand back to the driver, typed: a misspelt field is an error where it
is written, not a silent null column in the results."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lem_ray.backends.traffic import EngineLoad, SteadyWindow
from lem_ray.execution.worker.gpus import GpuIdentity
from lem_ray.measure.energy import EnergyFigures
from lem_ray.measure.protocol import GpuConditions, PrefillResult
from lem_ray.measure.sampler import SamplerReport
from lem_ray.measure.warmup import WarmupOutcome
from lem_ray.records import RequestRecord
from lem_ray.telemetry.sampler import WindowResult


@dataclass
class WorkerIdentity(GpuIdentity):
    """Where the worker landed and which GPUs it holds."""

    node_ip: str | None = None
    node_id: str | None = None
    hostname: str | None = None
    python_executable: str | None = None


@dataclass(frozen=True)
class RunResult:
    """The worker's account of one run: the protocol's Measurement (less its conditions, which
    RunOutcome carries) and the engine's facts. `measure_start_perf_s` is in the worker's
    perf_counter clock; `epoch_minus_perf_s` maps that clock onto the sampler's epoch stamps."""

    records: list[RequestRecord]
    measure_start_perf_s: float
    duration_s: float
    engine_load_s: float
    """Seconds this run spent getting its engine ready before warmup: loading and preparing
    it, or, on a reused engine, applying the run's options and preparing shapes the engine had
    not met (the fast path's graphs of a new batch size; near 0 otherwise)."""
    engine_reused: bool
    engine_id: str
    """The loaded engine instance that served the run (Backend.engine_id)."""
    compile_cache: str | None
    """hit, miss or off (results/compile_cache.py); None: the engine compiles nothing."""
    compile_cache_hash: str | None
    """SHA-256 of the compiled artifact the engine runs (loaded or its own)."""
    compile_cache_key: str | None
    timing_method: str | None
    warmup: WarmupOutcome
    warmup_window: WindowResult
    measure_window: WindowResult
    prefill: PrefillResult | None
    energy: EnergyFigures
    """The measured window's figures (lem_ray/measure/energy.py), adjusted by the idle power
    of the run's GPUs."""
    own_pids: set[int]
    peak_memory_mib: float | None
    versions: dict[str, str]
    details: dict[str, Any]
    engine_config: dict[str, Any] | None
    steady_window: SteadyWindow | None
    epoch_minus_perf_s: float
    host_shared_by_runs: int | None = None
    """Other runs of the campaign active on the node during the measured window (their work
    is in its host energy); None where the worker had no record to ask."""
    engine_load: EngineLoad | None = None
    """How full the engine ran (Backend.engine_load), where the backend can tell."""
    stream_sha256: str | None = None
    """The request stream the measured window sent (Backend.stream_sha256)."""


@dataclass(frozen=True)
class RunOutcome:
    """Everything one run on a worker hands back: where, when, what, and its phases' seconds
    (cooldown, baseline, loading, warmup, measuring) for the GPU-time ledger."""

    identity: WorkerIdentity
    started_at: datetime
    result: RunResult
    telemetry: SamplerReport
    conditions: GpuConditions
    phases_s: dict[str, float]
    engines: list[str]
    """Engine keys the worker holds after the run, least recently used first."""
