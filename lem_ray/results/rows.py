"""Turn what a run returned (or how it failed) into rows of the three tables. Each group of
columns is built as its typed record (results/columns.py): a misspelt or forgotten column is
an error where the row is made, not a null in the results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import lem_ray
from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.measure.energy import adjusted_energy_j, attribute_energy, idle_power_w
from lem_ray.records import Baseline, GpuEnvironment, RunAttempt, host_key
from lem_ray.results.attribution import STEP, TOKEN_SHARE, attribute_by_step
from lem_ray.results.columns import (
    Conditions,
    ConfigKeys,
    Energy,
    EngineWarmup,
    Host,
    Ids,
    Load,
    Outcome,
    Placement,
    Provenance,
    Request,
    Runtime,
    Sample,
    Slo,
    Software,
    Steady,
    Throughput,
    Times,
    Validity,
)
from lem_ray.results.fields import names
from lem_ray.results.metrics import request_metrics, request_rows
from lem_ray.results.schema import row
from lem_ray.results.slo import slo_columns
from lem_ray.results.validity import (
    ValidityInputs,
    energy_methods_gap,
    is_valid,
    other_processes,
    throttle_seconds,
    validity_flags,
)
from lem_ray.telemetry.energy import trapezoid_energy_j
from lem_ray.telemetry.sampler import SOURCE_COUNTER

if TYPE_CHECKING:  # what the actors hand the driver: results is given them, imports no actor
    from lem_ray.backends.traffic import EngineLoad, SteadyWindow
    from lem_ray.execution.worker.handoff import RunResult, WorkerIdentity
    from lem_ray.measure.protocol import GpuConditions
    from lem_ray.measure.sampler import SamplerReport


@dataclass
class RunRows:
    """One attempt's rows of the three tables, as the writer stores them."""

    experiment: dict[str, Any]
    requests: list[dict[str, Any]] = field(default_factory=list)
    timeseries: list[dict[str, Any]] = field(default_factory=list)
    retryable: bool = False
    """The worker died (killed, node lost, out of memory): another attempt follows."""

    @property
    def ok(self) -> bool:
        """Whether the run succeeded: only then are its figures counted."""
        return self.experiment["status"] == "ok"


def _ids(ids: RunAttempt) -> Ids:
    return Ids(**ids.as_dict())


def _config_keys(config: ExperimentConfig) -> ConfigKeys:
    return ConfigKeys(
        backend=config.backend,
        model_name=config.model_name,
        load_format=config.load_format,
        fp_precision=config.fp_precision,
        batch_size=config.backend_options.concurrency,
        gpus_per_experiment=config.gpus_per_experiment,
        max_input_tokens=config.max_input_tokens,
        max_output_tokens=config.max_output_tokens,
    )


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _placement(identity: WorkerIdentity | None) -> Placement:
    return Placement(**{name: getattr(identity, name) if identity else None
                        for name in names(Placement)})


def _runtime(identity: WorkerIdentity | None, runtime_env_json: str | None) -> Runtime:
    return Runtime(python_executable=identity.python_executable if identity else None,
                   runtime_env_json=runtime_env_json)


def failed_rows(
    ids: RunAttempt, config: ExperimentConfig, error: str, started_at: datetime,
    identity: WorkerIdentity | None = None, runtime_env_json: str | None = None,
    retryable: bool = False,
) -> RunRows:
    """Every column is present; those a failed run cannot know are null."""
    return RunRows(
        row("experiments", _ids(ids), Outcome(status="failed", error=error),
            _config_keys(config), Times(started_at=started_at, finished_at=_now()),
            _placement(identity), _runtime(identity, runtime_env_json),
            Provenance(stream_sha256=None, config_json=config.model_dump_json())),
        retryable=retryable,
    )


def _baseline(baselines: dict[str, dict[str, Any]], uuids: list[str]) -> dict[str, Any]:
    """Summed idle power over the run's GPUs, the oldest age, and how it was taken."""
    power_w = idle_power_w(baselines, uuids)
    if power_w is None:
        return {"baseline_power_w": None, "baseline_age_s": None, "baseline_method": None}
    entries = [Baseline.of(baselines[u]) for u in uuids]
    return {
        "baseline_power_w": power_w,
        "baseline_age_s": max(0.0 if e.age_s is None else e.age_s for e in entries),
        "baseline_method": entries[0].method,
    }


def _conditions(conditions: GpuConditions, gpus: list[GpuEnvironment]) -> Conditions:
    """The GPUs' state before the run; the power limit only when every GPU's is known."""
    limits = [g.power_limit_w for g in gpus if g.power_limit_w is not None]
    return Conditions(
        cooldown_wait_s=conditions.cooldown_wait_s,
        cooldown_temp_c=conditions.cooldown_temp_c,
        power_limit_w=sum(limits) if gpus and len(limits) == len(gpus) else None,
        driver_version=gpus[0].driver_version if gpus else None,
        cuda_driver_version=gpus[0].cuda_driver_version if gpus else None,
    )


def power_series(samples: list[Sample]) -> dict[str, list[tuple[float, float]]]:
    """(t_s, power_w) per GPU from the sampler's rows (the host's rows carry no power_w)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for sample in samples:
        if sample.power_w is not None and sample.gpu_uuid is not None:
            series.setdefault(sample.gpu_uuid, []).append((sample.t_s, sample.power_w))
    return series


def _steady(config: ExperimentConfig, window: SteadyWindow | None, epoch_minus_perf_s: float,
            samples: list[Sample]) -> Steady:
    """The steady-state window under traffic (vLLM constant / poisson), beside the whole run.

    Its energy is integrated from the sampler's instant-power series (the window's edges fall
    inside the measured window, where no counter was read), summed over the run's GPUs.
    """
    traffic = getattr(config.backend_options, "traffic", None)
    mode = traffic.mode if traffic is not None else "offline"
    if window is None or window.duration_s <= 0:
        return Steady(traffic_mode=mode, steady_start_epoch_s=None, steady_duration_s=None,
                      steady_opened_by=None, steady_output_tokens=None,
                      steady_throughput_tok_s=None, steady_energy_j=None,
                      steady_avg_power_w=None, steady_energy_j_per_output_token=None)
    start = window.start_s + epoch_minus_perf_s
    end = window.end_s + epoch_minus_perf_s
    series = power_series(samples)
    energy = None
    if series and all(len(points) >= 2 for points in series.values()):
        energy = sum(trapezoid_energy_j([t for t, _ in points], [p for _, p in points], start, end)
                     for points in series.values())
    tokens = window.output_tokens
    return Steady(
        traffic_mode=mode,
        steady_start_epoch_s=start, steady_duration_s=window.duration_s,
        steady_opened_by=window.opened_by, steady_output_tokens=tokens,
        steady_throughput_tok_s=tokens / window.duration_s,
        steady_energy_j=energy,
        steady_avg_power_w=None if energy is None else energy / window.duration_s,
        steady_energy_j_per_output_token=None if energy is None or not tokens else energy / tokens,
    )


def _energy_columns(result: RunResult, baseline: dict[str, Any]) -> dict[str, Any]:
    window = result.measure_window
    energy = result.energy
    prefill = result.prefill
    return {
        "energy_j": energy.energy_j,
        **energy.ratios(),
        "energy_source": window.source,
        "energy_unavailable_reason": window.unavailable_reason,
        "energy_by_gpu_json": (
            json.dumps(window.energy_by_gpu_j) if window.energy_by_gpu_j else None),
        "energy_integrated_j": window.integrated_energy_j,
        "energy_methods_gap": energy_methods_gap(window.energy_j, window.integrated_energy_j,
                                                 window.source, SOURCE_COUNTER),
        "energy_window_s": energy.window_s,
        "measure_start_epoch_s": window.start_s,
        "measure_end_epoch_s": window.end_s,
        "energy_warmup_j": result.warmup_window.energy_j,
        **baseline,
        "energy_adjusted_j": energy.adjusted_j,
        "energy_adjusted_j_per_output_token": energy.adjusted_j_per_output_token,
        "energy_prefill_j": energy.prefill_j,
        "energy_decode_j": energy.decode_j,
        "prefill_passes": prefill.passes if prefill else None,
        "prefill_window_s": prefill.window.duration_s if prefill else None,
    }


def _engine_warmup(result: RunResult) -> EngineWarmup:
    warmup = result.warmup
    return EngineWarmup(
        engine_reused=result.engine_reused,
        engine_id=result.engine_id,
        engine_load_s=result.engine_load_s,
        compile_cache=result.compile_cache,
        compile_cache_hash=result.compile_cache_hash,
        compile_cache_key=result.compile_cache_key,
        timing_method=result.timing_method,
        warmup_s=warmup.duration_s,
        warmup_requests=warmup.requests,
        warmup_steps=warmup.steps,
        warmup_converged=warmup.converged,
        warmup_final_cv=warmup.final_cv,
    )


def _validity(
    result: RunResult, telemetry: SamplerReport, gpus: list[GpuEnvironment],
    execution: ExecutionConfig, avg_power_w: float | None, power_limit_w: float | None,
    baseline_power_w: float | None, config: ExperimentConfig,
) -> Validity:
    window = result.measure_window
    load = result.engine_load
    traffic = getattr(config.backend_options, "traffic", None)
    steady = result.steady_window
    others = other_processes(telemetry.compute_pids.get("measure", []), result.own_pids)
    flags = validity_flags(ValidityInputs(
        energy_j=window.energy_j,
        window_s=window.duration_s,
        min_window_s=execution.validity.min_window_s,
        throttle_reasons=window.throttle_reasons_seen,
        temperature_start_c=window.temperature_start_c,
        temperature_max_c=window.temperature_max_c,
        temperature_min_c=execution.validity.temperature_min_c,
        temperature_limit_c=execution.validity.temperature_max_c,
        avg_power_w=avg_power_w,
        power_limit_w=power_limit_w,
        baseline_power_w=baseline_power_w,
        other_process_pids=others,
        mig_enabled=any(g.mig_enabled for g in gpus),
        warmup_converged=result.warmup.converged,
        energy_methods_gap=energy_methods_gap(window.energy_j, window.integrated_energy_j,
                                              window.source, SOURCE_COUNTER),
        max_energy_methods_gap=execution.validity.max_energy_methods_gap,
        samples_per_gpu=window.samples / max(len(window.energy_by_gpu_j), 1),
        power_cap_invalidates=execution.validity.power_cap_invalidates,
        running_batch_mean=load.running_mean if load else None,
        batch_limit=config.backend_options.concurrency,
        saturating=load.saturating if load else False,
        min_batch_fraction=execution.validity.min_batch_fraction,
        traffic_run=traffic is not None and traffic.mode != "offline",
        steady_window_s=steady.duration_s if steady is not None else None,
        min_steady_s=execution.validity.min_steady_s,
        kv_preemptions=load.preemptions if load else None,
        max_kv_preemptions=execution.validity.max_kv_preemptions,
    ))
    throttled = throttle_seconds(telemetry.timeseries, window.start_s, window.end_s,
                                 telemetry.sample_interval_s)
    return Validity(
        valid=is_valid(flags),
        validity_flags=flags,
        temperature_start_c=window.temperature_start_c,
        temperature_max_c=window.temperature_max_c,
        sm_clock_mhz_mean=window.sm_clock_mhz_mean,
        sm_clock_mhz_min=window.sm_clock_mhz_min,
        throttle_reasons=window.throttle_reasons_seen,
        throttle_s_json=json.dumps(throttled),
        other_process_pids=others,
        max_cycle_cv=execution.validity.max_cycle_cv,
    )


def _host(
    result: RunResult, baselines: dict[str, Baseline], node_id: str | None,
    gpu_energy_j: float | None, output_tokens: int,
) -> Host:
    """The node's CPU and DRAM energy over the measured window (docs/measurement.md). GPU +
    host per output token only where no other run shared the node during the window: the
    host counters meter the node, so a shared window's host energy is not this run's alone."""
    window = result.measure_window
    host = window.host
    energy_j = host.energy_j if host else None
    idle = baselines.get(host_key(node_id))
    idle_w = idle.power_w if idle else None
    shared = result.host_shared_by_runs
    with_host = None
    if energy_j is not None and gpu_energy_j is not None and shared == 0 and output_tokens:
        with_host = (gpu_energy_j + energy_j) / output_tokens
    return Host(
        cpu_energy_j=host.cpu_energy_j if host else None,
        dram_energy_j=host.dram_energy_j if host else None,
        host_energy_j=energy_j,
        host_energy_source=host.source if host else None,
        host_energy_unavailable_reason=(
            host.unavailable_reason if host else "the sampler read no host counters"),
        host_baseline_power_w=idle_w,
        host_energy_adjusted_j=adjusted_energy_j(energy_j, idle_w, window.duration_s),
        host_shared_by_runs=shared,
        energy_with_host_j_per_output_token=with_host,
    )


def _load(load: EngineLoad | None) -> Load:
    """How full the engine ran (its scheduler's per-step stats; steady window under traffic)."""
    return Load(
        running_batch_mean=load.running_mean if load else None,
        running_batch_p10=load.running_p10 if load else None,
        waiting_step_share=load.waiting_step_share if load else None,
        kv_preemptions=load.preemptions if load else None,
        scheduler_steps=load.steps if load else None,
    )


def _software(result: RunResult, telemetry: SamplerReport) -> Software:
    return Software(
        sampler_cpu_s=telemetry.sampler_cpu_s,
        peak_memory_mib=result.peak_memory_mib,
        versions_json=json.dumps({**result.versions, "lem_ray": lem_ray.__version__}),
        environment_json=json.dumps(
            {"gpus": telemetry.environment, **result.details}, default=str
        ),
        engine_config_json=(
            json.dumps(result.engine_config, default=str)
            if result.engine_config is not None else None
        ),
    )


def ok_rows(
    ids: RunAttempt,
    config: ExperimentConfig,
    execution: ExecutionConfig,
    identity: WorkerIdentity,
    result: RunResult,
    telemetry: SamplerReport,
    conditions: GpuConditions,
    started_at: datetime,
    runtime_env_json: str | None,
) -> RunRows:
    """A finished run's rows: everything measured, with the conditions it was measured in."""
    records = result.records
    req = request_metrics(records, result.duration_s)
    baselines = {key: Baseline.of(entry) for key, entry in conditions.baselines.items()}
    gpus = [GpuEnvironment.of(entry) for entry in telemetry.environment.values()]
    samples = [Sample(**sample) for sample in telemetry.timeseries]
    baseline = _baseline(conditions.baselines, identity.gpu_uuids)
    gpu_conditions = _conditions(conditions, gpus)
    energy = result.energy
    experiment = row(
        "experiments",
        _ids(ids),
        Outcome(status="ok", error=None),
        _config_keys(config),
        Times(started_at=started_at, finished_at=_now()),
        _placement(identity),
        _engine_warmup(result),
        Throughput(**req),
        Energy(**_energy_columns(result, baseline)),
        _host(result, baselines, identity.node_id, energy.energy_j, req["output_tokens"]),
        _validity(result, telemetry, gpus, execution, energy.avg_power_w,
                  gpu_conditions.power_limit_w, baseline["baseline_power_w"], config),
        gpu_conditions,
        _software(result, telemetry),
        _runtime(identity, runtime_env_json),
        _steady(config, result.steady_window, result.epoch_minus_perf_s, samples),
        _load(result.engine_load),
        Slo(**slo_columns(config.slo, records, result.duration_s, energy.energy_j)),
        Provenance(stream_sha256=result.stream_sha256, config_json=config.model_dump_json()),
    )
    window = result.measure_window
    by_step = attribute_by_step(records, window.start_s, window.end_s, result.epoch_minus_perf_s,
                                energy.energy_j, power_series(samples))
    energies = by_step if by_step is not None else attribute_energy(
        records, energy.energy_j, energy.prefill_j, energy.decode_j)
    method = (STEP if by_step is not None else TOKEN_SHARE) if energy.energy_j is not None else None
    id_group = _ids(ids)
    requests = [row("requests", id_group, Request(**columns, energy_attribution=method))
                for columns in request_rows(records, result.measure_start_perf_s, energies)]
    series = [row("timeseries", id_group, sample) for sample in samples]
    return RunRows(experiment, requests, series)
