"""A results directory into MLflow: each counted run (ok, and not invalid: the report's own
rule) as an MLflow run with its resolved config as parameters, its row's figures as metrics
and its GPUs' instant power as metric histories.

Idempotent: each MLflow run is tagged with lem-ray's run_id and attempt, and an attempt already
exported (finished) is skipped; one whose export was cut off is deleted and logged again.
MLflow is an optional extra (`lem-ray[mlflow]`), imported only here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from lem_ray.errors import ConfigError
from lem_ray.records import RunKey
from lem_ray.results.report import build_report
from lem_ray.results.schema import EXPERIMENTS
from lem_ray.results.store import open_dataset, read_table

ATTEMPT_TAG = "lem_ray.attempt_key"
"""`<run_id>-a<attempt>`: what makes an export idempotent."""
IDS = ("campaign_name", "experiment_id", "run_id", "cycle", "attempt")
TAGS = ("status", "device", "node_ip", "energy_source", "backend", "model_name")
NOT_METRICS = {*IDS, "batch_size", "gpus_per_experiment", "max_input_tokens", "max_output_tokens"}
"""Ids, and config keys that are parameters already."""
METRICS = tuple(
    f.name for f in EXPERIMENTS
    if (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
    and f.name not in NOT_METRICS and not f.name.endswith("_epoch_s")
)
POWER_METRIC = "gpu_power_w"
"""One history per GPU: `gpu_power_w/<gpu_uuid>`, a step per sample, stamped with its time."""
BATCH = 1000
"""MLflow takes at most 1000 metrics, 100 parameters, per log_batch call."""
PARAMS_PER_BATCH = 100
PARAM_VALUE_CHARS = 6000
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
DATABASE_HINT = (" (lem-ray[mlflow] installs MLflow's client only, mlflow-skinny: a database store "
                 "needs the full package, pip install mlflow; or log to a tracking server)")


@dataclass(frozen=True)
class ExportResult:
    """What an export logged, where, and how many attempts it skipped as already there."""

    experiment_name: str
    experiment_id: str
    tracking_uri: str
    logged: list[str]
    """`<run_id>-a<attempt>` of each attempt logged now."""
    skipped: int
    """Attempts already in MLflow from an earlier export."""


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys (`pytorch.batch_size`), values as JSON text (strings as they are)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            flat[name] = text[:PARAM_VALUE_CHARS]
    return flat


def attempt_key(row: dict[str, Any]) -> str:
    """`<run_id>-a<attempt>`: one attempt, as tagged in MLflow."""
    return RunKey.parse(row["run_id"]).stem(row["attempt"])


def _ms(value: Any) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def figures(row: dict[str, Any]) -> dict[str, float]:
    """The row's numbers, nulls and NaNs left out."""
    out = {}
    for name in METRICS:
        value = row.get(name)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[name] = float(value)
    return out


def power_series(results_dir: str | Path, rows: list[dict[str, Any]]) -> dict[str, list[dict]]:
    """Timeseries samples (gpu_uuid, t_s, power_w) of each attempt, by attempt key, in time
    order."""
    dataset = open_dataset(results_dir, "timeseries")
    if dataset is None or not rows:
        return {}
    table = dataset.to_table(columns=["run_id", "attempt", "gpu_uuid", "t_s", "power_w"],
                             filter=ds.field("run_id").isin(sorted({r["run_id"] for r in rows})))
    found: dict[str, list[dict]] = {}
    for sample in table.to_pylist():
        if sample["power_w"] is not None:
            found.setdefault(attempt_key(sample), []).append(sample)
    for samples in found.values():
        samples.sort(key=lambda s: (s["gpu_uuid"], s["t_s"]))
    return found


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _exported(client: Any, experiment_id: str) -> set[str]:
    """Attempt keys already exported; unfinished exports of them (cut off) are deleted."""
    done: set[str] = set()
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            key = run.data.tags.get(ATTEMPT_TAG)
            if key is None:
                continue
            if run.info.status == "FINISHED":
                done.add(key)
            else:
                client.delete_run(run.info.run_id)
        token = page.token
        if not token:
            return done


def _log_run(client: Any, experiment_id: str, row: dict[str, Any], label: str,
             samples: list[dict]) -> None:
    from mlflow.entities import Metric, Param

    started_ms = _ms(row.get("started_at"))
    tags = {ATTEMPT_TAG: attempt_key(row), "mlflow.runName": f"{label} · cycle {row['cycle']}",
            **{f"lem_ray.{k}": str(row[k]) for k in IDS},
            **{f"lem_ray.{k}": str(row[k]) for k in TAGS if row.get(k) is not None},
            "lem_ray.valid": json.dumps(row.get("valid"))}
    run = client.create_run(experiment_id, start_time=started_ms, tags=tags)
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in flatten(json.loads(row["config_json"])).items()]
    for chunk in _chunks(params, PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    stamp_ms = _ms(row.get("finished_at")) or started_ms or 0
    metrics = [Metric(k, v, stamp_ms, 0) for k, v in figures(row).items()]
    steps: dict[str, int] = {}
    for sample in samples:
        key = f"{POWER_METRIC}/{sample['gpu_uuid']}"
        steps[key] = steps.get(key, -1) + 1
        metrics.append(Metric(key, float(sample["power_w"]), int(sample["t_s"] * 1000), steps[key]))
    for chunk in _chunks(metrics, BATCH):
        client.log_batch(run_id, metrics=chunk)
    client.set_terminated(run_id, "FINISHED", end_time=_ms(row.get("finished_at")))


def export_mlflow(results_dir: str | Path, tracking_uri: str | None = None,
                  experiment_name: str | None = None) -> ExportResult:
    """Log every counted run not yet in the MLflow experiment (default: the campaign's name)."""
    import mlflow
    from mlflow import MlflowClient

    rows = read_table(results_dir, "experiments").to_pylist()
    if not rows:
        raise ConfigError(f"{results_dir}: no runs in the experiments table")
    report = build_report(rows)
    counted = [(run, group["label"]) for group, members in zip(report.groups, report.members)
               for run in members]
    names = sorted({r["campaign_name"] for r in rows})
    name = experiment_name or names[0]
    uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(name))
        done = _exported(client, experiment_id)
        todo = [(run, label) for run, label in counted if attempt_key(run) not in done]
        series = power_series(results_dir, [run for run, _ in todo])
        for run, label in todo:
            _log_run(client, experiment_id, run, label, series.get(attempt_key(run), []))
    except mlflow.exceptions.MlflowException as exc:
        hint = DATABASE_HINT if uri.split(":", 1)[0].split("+")[0] in DATABASES else ""
        raise ConfigError(f"MLflow at {uri}: {' '.join(exc.message.split())}{hint}") from None
    return ExportResult(name, experiment_id, uri,
                        [attempt_key(r) for r, _ in todo], len(counted) - len(todo))
