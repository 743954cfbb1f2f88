"""Arrow schemas of the three tables. Explicit types, so a null column never changes type."""

from __future__ import annotations

import pyarrow as pa

F64, I64, STR, BOOL = pa.float64(), pa.int64(), pa.string(), pa.bool_()
TS = pa.timestamp("us", tz="UTC")
STRS = pa.list_(STR)

ID_FIELDS = [
    ("campaign_name", STR),
    ("experiment_id", STR),
    ("run_id", STR),
    ("cycle", I64),
    ("attempt", I64),
]


def _latency(prefix: str) -> list[tuple[str, pa.DataType]]:
    return [(f"{prefix}_{s}", F64) for s in ("mean", "p50", "p90", "p99")]


EXPERIMENTS = pa.schema(
    ID_FIELDS
    + [
        ("status", STR),
        ("error", STR),
        ("backend", STR),
        ("model_name", STR),
        ("load_format", STR),
        ("fp_precision", STR),
        ("batch_size", I64),
        ("gpus_per_experiment", I64),
        ("max_input_tokens", I64),
        ("max_output_tokens", I64),
        ("started_at", TS),
        ("finished_at", TS),
        ("node_ip", STR),
        ("node_id", STR),
        ("hostname", STR),
        ("device", STR),
        ("gpu_ids", STRS),
        ("gpu_uuids", STRS),
        ("gpu_names", STRS),
        ("engine_reused", BOOL),
        ("engine_id", STR),
        ("engine_load_s", F64),
        ("compile_cache", STR),
        ("compile_cache_hash", STR),
        ("compile_cache_key", STR),
        ("timing_method", STR),
        ("warmup_s", F64),
        ("warmup_requests", I64),
        ("warmup_steps", I64),
        ("warmup_converged", BOOL),
        ("warmup_final_cv", F64),
        ("num_requests", I64),
        ("input_tokens", I64),
        ("output_tokens", I64),
        ("duration_s", F64),
        ("throughput_tok_s", F64),
        ("requests_per_s", F64),
    ]
    + _latency("ttft_ms")
    + _latency("itl_ms")
    + _latency("e2e_ms")
    + [
        ("energy_j", F64),
        ("energy_j_per_output_token", F64),
        ("energy_j_per_request", F64),
        ("output_tokens_per_j", F64),
        ("avg_power_w", F64),
        ("energy_source", STR),
        ("energy_unavailable_reason", STR),
        ("energy_by_gpu_json", STR),
        ("energy_integrated_j", F64),
        ("energy_window_s", F64),
        ("measure_start_epoch_s", F64),
        ("measure_end_epoch_s", F64),
        ("energy_warmup_j", F64),
        ("baseline_power_w", F64),
        ("baseline_age_s", F64),
        ("baseline_method", STR),
        ("energy_adjusted_j", F64),
        ("energy_adjusted_j_per_output_token", F64),
        ("energy_prefill_j", F64),
        ("energy_decode_j", F64),
        ("prefill_passes", I64),
        ("prefill_window_s", F64),
        ("energy_methods_gap", F64),
        ("cpu_energy_j", F64),
        ("dram_energy_j", F64),
        ("host_energy_j", F64),
        ("host_energy_source", STR),
        ("host_energy_unavailable_reason", STR),
        ("host_baseline_power_w", F64),
        ("host_energy_adjusted_j", F64),
        ("host_shared_by_runs", I64),
        ("energy_with_host_j_per_output_token", F64),
        ("valid", BOOL),
        ("validity_flags", STRS),
        ("temperature_start_c", F64),
        ("temperature_max_c", F64),
        ("sm_clock_mhz_mean", F64),
        ("sm_clock_mhz_min", F64),
        ("throttle_reasons", I64),
        ("throttle_s_json", STR),
        ("other_process_pids", pa.list_(I64)),
        ("max_cycle_cv", F64),
        ("cooldown_wait_s", F64),
        ("cooldown_temp_c", F64),
        ("power_limit_w", F64),
        ("driver_version", STR),
        ("cuda_driver_version", STR),
        ("sampler_cpu_s", F64),
        ("peak_memory_mib", F64),
        ("versions_json", STR),
        ("environment_json", STR),
        ("engine_config_json", STR),
        ("python_executable", STR),
        ("runtime_env_json", STR),
        ("traffic_mode", STR),
        ("steady_start_epoch_s", F64),
        ("steady_duration_s", F64),
        ("steady_opened_by", STR),
        ("steady_output_tokens", I64),
        ("steady_throughput_tok_s", F64),
        ("steady_energy_j", F64),
        ("steady_avg_power_w", F64),
        ("steady_energy_j_per_output_token", F64),
        ("running_batch_mean", F64),
        ("running_batch_p10", F64),
        ("waiting_step_share", F64),
        ("kv_preemptions", I64),
        ("scheduler_steps", I64),
        ("slo_ttft_ms", F64),
        ("slo_tpot_ms", F64),
        ("slo_min_attainment", F64),
        ("slo_attainment", F64),
        ("goodput_tok_s", F64),
        ("energy_j_per_goodput_token", F64),
        ("stream_sha256", STR),
        ("config_json", STR),
    ]
)

REQUESTS = pa.schema(
    ID_FIELDS
    + [
        ("request_index", I64),
        ("input_tokens", I64),
        ("output_tokens", I64),
        ("ttft_ms", F64),
        ("itl_ms_mean", F64),
        ("itl_ms_p50", F64),
        ("itl_ms_max", F64),
        ("e2e_ms", F64),
        ("start_s", F64),
        ("energy_j", F64),
        ("energy_attribution", STR),
    ]
)

TIMESERIES = pa.schema(
    ID_FIELDS
    + [
        ("gpu_uuid", STR),
        ("t_s", F64),
        ("power_w", F64),
        ("energy_j", F64),
        ("temperature_c", F64),
        ("sm_clock_mhz", F64),
        ("mem_clock_mhz", F64),
        ("memory_used_mib", F64),
        ("utilization_pct", F64),
        ("throttle_reasons", I64),
        ("cpu_power_w", F64),
        ("dram_power_w", F64),
        ("cpu_energy_j", F64),
        ("dram_energy_j", F64),
    ]
)

TABLES = {"experiments": EXPERIMENTS, "requests": REQUESTS, "timeseries": TIMESERIES}


def empty_row(table: str) -> dict[str, None]:
    """Every column of `table`, null: the base of a row whose run could not fill them all."""
    return dict.fromkeys(TABLES[table].names)


# Columns renamed since results were first written (docs/results.md, "Renamed columns"):
# table -> {old name: new name}. Readers map old files onto the new names.
RENAMED: dict[str, dict[str, str]] = {
    "experiments": {
        "measure_start_s": "measure_start_epoch_s",
        "measure_end_s": "measure_end_epoch_s",
        "steady_start_s": "steady_start_epoch_s",
        "peak_memory_mb": "peak_memory_mib",
        "load_s": "engine_load_s",
    },
    "requests": {},
    "timeseries": {"memory_used_mb": "memory_used_mib"},
}


def reading_schema(table: str) -> pa.Schema:
    """The table's schema plus its old column names, so files of either shape read whole."""
    schema = TABLES[table]
    old = [pa.field(o, schema.field(n).type) for o, n in RENAMED[table].items()]
    return pa.schema(list(schema) + old)


def upgrade(table: str, data: pa.Table) -> pa.Table:
    """A table read with reading_schema, in the current shape: each new column takes its old
    column's value where only the old name was written."""
    import pyarrow.compute as pc

    for old, new in RENAMED[table].items():
        merged = pc.coalesce(data[new], data[old])
        data = data.set_column(data.schema.get_field_index(new), new, merged)
    return data.select(TABLES[table].names)
