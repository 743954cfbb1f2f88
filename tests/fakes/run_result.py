"""One run's worth of what the actors hand the driver, every field set by hand: the known input
that tests/data/rows_known.json pins the rows of (two GPUs, a host, traffic, prefill, an SLO)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from lem_ray.backends.traffic import EngineLoad, SteadyWindow
from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.worker.handoff import RunResult, WorkerIdentity
from lem_ray.measure.protocol import GpuConditions, PrefillResult, figures_of
from lem_ray.measure.sampler import SamplerReport
from lem_ray.measure.warmup import WarmupOutcome
from lem_ray.records import RequestRecord, RunAttempt, RunKey
from lem_ray.telemetry.rapl import HostWindow
from lem_ray.telemetry.sampler import WindowResult

UUIDS = ["GPU-a", "GPU-b"]
STARTED_AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
FINISHED_AT = datetime(2026, 1, 2, 3, 9, 0, tzinfo=timezone.utc)
IDS = RunAttempt("known", RunKey("0123456789ab", 2), 3)
RUNTIME_ENV_JSON = '{"kind": "none"}'


def config() -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "model_name": "builtin:tiny-llama", "backend": "vllm", "gpus_per_experiment": 2,
        "vllm": {"max_num_seqs": 4, "tensor_parallel_size": 2,
                 "traffic": {"mode": "poisson", "rate_rps": 2.0}},
        "slo": {"ttft_ms": 300.0, "tpot_ms": 40.0},
    })


def execution() -> ExecutionConfig:
    return ExecutionConfig()


def identity() -> WorkerIdentity:
    return WorkerIdentity(device="cuda", gpu_ids=["0", "1"], gpu_uuids=UUIDS,
                          gpu_names=["H100", "H100"], node_ip="10.0.0.2", node_id="node-1",
                          hostname="gpu-host", python_executable="/venv/bin/python")


def _window(name: str, start_s: float, end_s: float, energy_j: float | None,
            host: HostWindow | None = None) -> WindowResult:
    return WindowResult(
        name=name, start_s=start_s, end_s=end_s, duration_s=end_s - start_s, energy_j=energy_j,
        energy_by_gpu_j={"GPU-a": energy_j * 0.6, "GPU-b": energy_j * 0.4} if energy_j else {},
        integrated_energy_j=None if energy_j is None else energy_j * 0.98, source="nvml_counter",
        temperature_start_c=41.0, temperature_max_c=63.0, throttle_reasons_seen=0x4,
        samples=40, sm_clock_mhz_mean=1830.5, sm_clock_mhz_min=1755.0, host=host)


def _records() -> list[RequestRecord]:
    return [RequestRecord(index=i, input_tokens=10 + i, output_tokens=8, e2e_ms=200.0 + 30 * i,
                          ttft_ms=80.0 + 10 * i, itl_ms=[15.0 + i] * 7, start_s=1000.2 + 0.5 * i)
            for i in range(4)]


def result() -> RunResult:
    measure_window = _window("measure", 1700000004.0, 1700000006.0, 1200.0,
                             HostWindow(80.0, 12.0, "rapl:package+dram", None))
    prefill = PrefillResult(window=_window("prefill", 1700000007.0, 1700000007.5, 100.0),
                            passes=2, duration_s=0.5)
    records = _records()
    return RunResult(
        records=records, measure_start_perf_s=1000.0, duration_s=2.0, engine_load_s=12.5,
        engine_reused=False, engine_id="eng-1", compile_cache="miss",
        compile_cache_hash="f" * 64, compile_cache_key="key-1", timing_method="vllm_engine_stats",
        warmup=WarmupOutcome(requests=8, steps=2, converged=True, final_cv=0.02, duration_s=3.5),
        warmup_window=_window("warmup", 1700000000.0, 1700000003.5, 900.0),
        measure_window=measure_window,
        prefill=prefill,
        energy=figures_of(measure_window, conditions(), UUIDS,
                          sum(r.output_tokens for r in records), len(records), prefill),
        own_pids={111, 112}, peak_memory_mib=40960.0, versions={"vllm": "0.9.0"},
        details={"attention": "flash"}, engine_config={"max_num_seqs": 4},
        steady_window=SteadyWindow(1000.5, 1001.5, "4 requests in flight (max_num_seqs)", 20),
        epoch_minus_perf_s=1699999004.0, host_shared_by_runs=0,
        engine_load=EngineLoad(running_mean=3.5, running_p10=2.0, waiting_step_share=0.6,
                               preemptions=1, steps=50, saturating=True),
        stream_sha256="a" * 64,
    )


def _samples() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for k in range(5):
        t_s = 1700000004.0 + 0.5 * k
        for uuid, power_w in (("GPU-a", 300.0 + k), ("GPU-b", 200.0 + k)):
            rows.append({"gpu_uuid": uuid, "t_s": t_s, "power_w": power_w, "temperature_c": 50.0,
                         "sm_clock_mhz": 1800.0, "mem_clock_mhz": 2600.0,
                         "memory_used_mib": 1024.0, "utilization_pct": 90.0,
                         "throttle_reasons": 4, "energy_j": power_w * 0.5 * k})
        rows.append({"gpu_uuid": None, "t_s": t_s, "cpu_power_w": 40.0, "dram_power_w": 6.0,
                     "cpu_energy_j": 20.0 * k, "dram_energy_j": 3.0 * k})
    return rows


def telemetry() -> SamplerReport:
    gpu = {"driver_version": "570.86", "cuda_driver_version": "12.8", "power_limit_w": 700.0,
           "mig_enabled": False, "name": "H100"}
    return SamplerReport(timeseries=_samples(),
                         environment={u: {**gpu, "uuid": u} for u in UUIDS},
                         sampler_cpu_s=0.25, compute_pids={"measure": [111, 999]},
                         sample_interval_s=0.5)


def conditions() -> GpuConditions:
    baseline = {"measured_at_s": 1699999000.0, "method": "idle_mean_instant", "samples": 200,
                "duration_s": 20.0, "compute_processes": 0}
    return GpuConditions(cooldown_wait_s=4.0, cooldown_temp_c=44.0, baselines={
        "GPU-a": {**baseline, "power_w": 60.0, "age_s": 30.0},
        "GPU-b": {**baseline, "power_w": 55.0, "age_s": 45.0},
        "host:node-1": {"power_w": 35.0, "measured_at_s": 1699999000.0,
                        "method": "idle_mean_rapl:package+dram", "duration_s": 20.0,
                        "age_s": 30.0},
    })
