"""Turn what a run returned (or how it failed) into rows of the three tables."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import lem_ray
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.results.metrics import energy_metrics, request_metrics, request_rows


@dataclass
class RunIds:
    campaign_name: str
    experiment_id: str
    cycle: int
    attempt: int

    @property
    def run_id(self) -> str:
        return f"{self.experiment_id}-c{self.cycle}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "run_id": self.run_id}


@dataclass
class RunRows:
    experiment: dict[str, Any]
    requests: list[dict[str, Any]] = field(default_factory=list)
    timeseries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.experiment["status"] == "ok"


def batch_bound(config: ExperimentConfig) -> int:
    """The `batch_size` column: the most requests the backend runs at once."""
    options = config.backend_options
    for name in ("batch_size", "max_num_seqs", "max_batch_size"):
        if hasattr(options, name):
            return int(getattr(options, name))
    raise AssertionError(f"no batch bound for {config.backend}")


def config_columns(config: ExperimentConfig) -> dict[str, Any]:
    return {
        "backend": config.backend,
        "model_name": config.model_name,
        "load_format": config.load_format,
        "fp_precision": config.fp_precision,
        "batch_size": batch_bound(config),
        "gpus_per_experiment": config.gpus_per_experiment,
        "max_input_tokens": config.max_input_tokens,
        "max_output_tokens": config.max_output_tokens,
        "config_json": config.model_dump_json(),
    }


def _now() -> datetime:
    return datetime.now(timezone.utc)


def failed_rows(
    ids: RunIds, config: ExperimentConfig, error: str, started_at: datetime,
    identity: dict[str, Any] | None = None,
) -> RunRows:
    return RunRows(
        {
            **ids.as_dict(),
            **config_columns(config),
            **_identity_columns(identity or {}),
            "status": "failed",
            "error": error,
            "started_at": started_at,
            "finished_at": _now(),
        }
    )


def _identity_columns(identity: dict[str, Any]) -> dict[str, Any]:
    keys = ("node_ip", "node_id", "hostname", "device", "gpu_ids", "gpu_uuids", "gpu_names")
    return {k: identity.get(k) for k in keys}


def ok_rows(
    ids: RunIds,
    config: ExperimentConfig,
    identity: dict[str, Any],
    result: dict[str, Any],
    timeseries: list[dict[str, Any]],
    environment: dict[str, Any],
    started_at: datetime,
) -> RunRows:
    records = result["records"]
    window = result["measure_window"]
    warmup = result["warmup"]
    req = request_metrics(records, result["duration_s"])
    energy_j = window.energy_j
    experiment = {
        **ids.as_dict(),
        **config_columns(config),
        **_identity_columns(identity),
        "status": "ok",
        "error": None,
        "started_at": started_at,
        "finished_at": _now(),
        "load_s": result["load_s"],
        "warmup_s": warmup.duration_s,
        "warmup_requests": warmup.requests,
        "warmup_converged": warmup.converged,
        "warmup_final_cv": warmup.final_cv,
        **req,
        "energy_j": energy_j,
        **energy_metrics(energy_j, result["duration_s"], req["output_tokens"], req["num_requests"]),
        "energy_source": window.source,
        "energy_unavailable_reason": window.unavailable_reason,
        "energy_by_gpu_json": json.dumps(window.energy_by_gpu_j) if window.energy_by_gpu_j else None,
        "energy_integrated_j": window.integrated_energy_j,
        "energy_warmup_j": result["warmup_window"].energy_j,
        "temperature_start_c": window.temperature_start_c,
        "temperature_max_c": window.temperature_max_c,
        "throttle_reasons": window.throttle_reasons_seen,
        "peak_memory_mb": result["peak_memory_mb"],
        "versions_json": json.dumps({**result["versions"], "lem_ray": lem_ray.__version__}),
        "environment_json": json.dumps({"gpus": environment, **result["details"]}, default=str),
    }
    ids_row = ids.as_dict()
    requests = [{**ids_row, **row} for row in request_rows(records, result["measure_start_s"])]
    series = [{**ids_row, **row} for row in timeseries]
    return RunRows(experiment, requests, series)
