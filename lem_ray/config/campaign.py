"""The campaign file: a base experiment, a grid over it, and how to run the result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from lem_ray.config.automation import NotifyConfig, ScheduleConfig
from lem_ray.config.base import PathText, Seed, StrictModel, no_control_characters
from lem_ray.config.experiment import BackendName
from lem_ray.config.limits import MAX_WAIT_S
from lem_ray.config.runtime_env import RuntimeEnvSpec


class GridConfig(StrictModel):
    """The axes whose product makes the experiments: shared ones, then each backend's own."""

    backends: list[BackendName] = Field(default_factory=list)
    shared: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted experiment keys -> values, for all backends"
    )
    backend_overrides: dict[BackendName, dict[str, list[Any]]] = Field(
        default_factory=dict, description="per backend: keys of its own section -> values"
    )


class TelemetryConfig(StrictModel):
    """How often GPUs are sampled, and whether live figures go to Ray's metrics."""

    sample_interval_ms: float = Field(
        100, ge=10, le=60_000, description="instant power etc., per GPU"
    )
    ray_metrics: bool = Field(
        True, description="power, temperature, runs by state, energy and GPU-seconds on Ray's "
        "metrics endpoint (ray.util.metrics), for Ray's dashboard and Prometheus"
    )


class BaselineConfig(StrictModel):
    """Idle power per GPU, measured once and reused while fresh."""

    enabled: bool = True
    duration_s: float = Field(20, gt=0, le=MAX_WAIT_S)
    ttl_s: float = Field(
        3600, ge=0, le=MAX_WAIT_S, description="a cached baseline older than this is remeasured"
    )


class CooldownConfig(StrictModel):
    """Before each run, wait for its GPUs to cool (off unless target_temp_c is set)."""

    target_temp_c: float | None = Field(None, gt=0)
    max_wait_s: float = Field(300, ge=0, le=MAX_WAIT_S)


class PrefillConfig(StrictModel):
    """A second window: the same prompts with one output token, to split prefill from decode."""

    enabled: bool = True
    max_repeats: int = Field(
        20, ge=1, le=10_000, description="passes to reach validity.min_window_s"
    )


class ValidityConfig(StrictModel):
    """The limits outside which a run is flagged not valid."""

    min_window_s: float = Field(
        5, gt=0, le=MAX_WAIT_S, description="shorter measured windows are flagged"
    )
    max_cycle_cv: float = Field(
        0.05, gt=0, description="lem-ray report marks groups whose cycle-to-cycle CV of "
        "J/output token or throughput is above this (also `report --max-cycle-cv`)")
    temperature_min_c: float = 20
    temperature_max_c: float = 95
    max_energy_methods_gap: float = Field(
        0.02, gt=0, le=1, description="a measured window whose energy counter and integrated "
        "instant power differ by more than this fraction of the counter's figure is flagged "
        "energy_methods_disagree (judged on windows of at least min_window_s; H200 windows "
        "of 14-41 s agreed within 0.7%)")

    power_cap_invalidates: bool = Field(
        False, description="flag rows `throttled` when the GPU sat at its software power cap "
        "(NVML 0x4); by default only thermal and hardware slowdowns do: a GPU at its power "
        "limit is measured as configured")
    min_batch_fraction: float = Field(
        0.8, gt=0, le=1, description="an offline or saturating run whose engine ran a mean "
        "batch under this share of its limit (vLLM max_num_seqs) is flagged `unsaturated`")
    min_steady_s: float = Field(
        30, ge=0, le=MAX_WAIT_S, description="a run under traffic whose steady-state window "
        "is shorter (or absent) is flagged `short_steady`")
    max_kv_preemptions: int = Field(
        0, ge=0, description="a run whose engine preempted more requests (KV cache full) "
        "inside its window is flagged `preempted`")


class CompileCacheDir(StrictModel):
    """Where the compile cache lives when not beside the results."""

    dir: str = Field(..., min_length=1, description="a path every node sees, or a URI "
                     "(s3://...); entries are keyed, so campaigns may share one")


class ExecutionConfig(StrictModel):
    """How runs are repeated, ordered, spaced and measured."""

    cycles: int = Field(3, ge=1, description="each experiment is run this many times")
    structure: Literal["interleaved", "shuffled", "grouped"] = "interleaved"
    seed: Seed = Field(0, description="orders the runs (shuffled)")
    config_gap_s: float = Field(
        0, ge=0, le=MAX_WAIT_S, description="pause between runs on the same GPUs"
    )
    cycle_gap_s: float = Field(0, ge=0, le=MAX_WAIT_S, description="pause between cycles")
    max_attempts: int = Field(
        3, ge=1, le=100, description="a run whose worker dies (killed, node lost, OOM) is retried"
    )
    run_timeout_s: float | None = Field(
        None, gt=0, le=MAX_WAIT_S,
        description="a run's worker taking longer (loading, warmup and measuring; cooldown "
        "and baseline waits come on top) is stopped and the run failed",
    )
    force_cold_start: bool = Field(
        False, description="load the engine in a fresh worker for every run (to measure "
        "loading); by default a worker keeps its engine for the next run with an equal "
        "engine config"
    )
    max_engines_per_worker: int = Field(
        4, ge=1, le=64, description="loaded engines a worker keeps for later runs (least "
        "recently used out first); on GPUs fewer where free memory would not hold the next "
        "one, and engines that reserve most of GPU memory (vllm, tensorrt) are kept alone",
    )
    runtime_env_timeout_s: float = Field(
        600, gt=0, le=MAX_WAIT_S, description="how long a backend's runtime_env may take to "
        "come up (image pull, package install) before its runs fail up front",
    )
    compile_cache: bool | CompileCacheDir = Field(
        True, description="compiled kernels and graphs, built once per engine key and loaded "
        "by every later engine of that key: on (default: <results_dir>/compile_cache), off, "
        "or {dir: PATH}",
    )
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

    @field_validator("compile_cache", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        """"on" and "off" quoted, or from JSON (YAML reads the bare words as booleans); an
        error names the three forms rather than each branch of the union."""
        if isinstance(value, str):
            value = {"on": True, "off": False}.get(value, value)
        if isinstance(value, bool | CompileCacheDir):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"dir"})
            if not unknown and isinstance(value.get("dir"), str):
                return value
        raise ValueError(f"on, off or {{dir: PATH}}, got {value!r}")
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    cooldown: CooldownConfig = Field(default_factory=CooldownConfig)
    prefill: PrefillConfig = Field(default_factory=PrefillConfig)
    validity: ValidityConfig = Field(default_factory=ValidityConfig)


class OutputConfig(StrictModel):
    """Where the results go."""

    results_dir: PathText | None = Field(None, description="default: results/<campaign_name>")


class CampaignConfig(StrictModel):
    """A whole campaign file: the grid, how it runs, where results go, automation."""

    campaign_name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base: dict[str, Any] = Field(default_factory=dict)
    grid: GridConfig = Field(default_factory=GridConfig)
    experiments: list[dict[str, Any]] = Field(default_factory=list)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    runtime_env: dict[BackendName, str | RuntimeEnvSpec] = Field(
        default_factory=dict,
        description="per backend: a runtime_envs/*.yaml file (relative to the campaign file) "
        "or the spec inline; a backend not named runs in the driver's environment",
    )
    notify: NotifyConfig | None = None
    schedule: ScheduleConfig | None = None

    @field_validator("runtime_env")
    @classmethod
    def _env_files(cls, envs: dict[str, str | RuntimeEnvSpec]) -> dict[str, str | RuntimeEnvSpec]:
        for backend, given in envs.items():
            if isinstance(given, str):
                try:
                    no_control_characters(given)
                except ValueError as exc:
                    raise ValueError(f"{backend}: {exc}") from None
        return envs
