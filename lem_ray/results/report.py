"""Group a campaign's runs and summarise each group with its uncertainty.

Pure: rows of the experiments table in, summary rows out. Only the latest attempt of a run
counts; failed runs and runs whose energy figure is invalid (valid == False) are counted and
listed, never averaged in. valid == None (energy not measured, e.g. on CPU) is included: its
throughput and latency are sound, its energy columns are null and drop out of n.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from lem_ray.errors import ConfigError
from lem_ray.results.bootstrap import CI_LEVEL, RESAMPLES, SEED, STATS, describe
from lem_ray.results.labels import (
    ENGINE_COLUMNS,
    common_value,
    engine_keys,
    group_labels,
    hashable,
    series_labels,
    value_text,
)
from lem_ray.results.schema import BOOL, EXPERIMENTS, F64, I64, STR, STRS

METRICS = (
    "energy_j_per_output_token",
    "energy_adjusted_j_per_output_token",
    "energy_with_host_j_per_output_token",
    "throughput_tok_s",
    "ttft_ms_p50",
    "ttft_ms_p99",
    "e2e_ms_p50",
    "itl_ms_p50",
    "itl_ms_p99",
    "avg_power_w",
    "sm_clock_mhz_mean",
)
# The energy table; the SM clock beside the power: a group whose J/token moved with its clock
# moved with something that held the clocks back, not with the workload.
ENERGY_METRICS = ("energy_j_per_output_token", "energy_adjusted_j_per_output_token",
                  "energy_with_host_j_per_output_token", "avg_power_w", "sm_clock_mhz_mean")
PERFORMANCE_METRICS = tuple(m for m in METRICS if m not in ENERGY_METRICS)
METRIC_TITLES = {
    "energy_j_per_output_token": "GPU J/out tok",
    "energy_adjusted_j_per_output_token": "adj. GPU J/out tok",
    "energy_with_host_j_per_output_token": "GPU+host J/out tok",
    "throughput_tok_s": "tok/s",
    "ttft_ms_p50": "TTFT p50 ms",
    "ttft_ms_p99": "TTFT p99 ms",
    "e2e_ms_p50": "e2e p50 ms",
    "itl_ms_p50": "ITL p50 ms",
    "itl_ms_p99": "ITL p99 ms",
    "avg_power_w": "power W",
    "sm_clock_mhz_mean": "SM MHz",
}
DEFAULT_GROUP_BY = ("experiment_id",)
ROUNDING = 1e-9
"""A std this small relative to its mean is floating-point rounding, shown as 0."""
# What a reader needs to place a group; null in the summary when the group mixes values.
DESCRIPTIVE = ("campaign_name", "backend", "model_name", "fp_precision", "batch_size", "device")
STATS_NOTE = (
    f"mean ± std (sample, ddof=1), [{CI_LEVEL:.0%} bootstrap CI of the mean: percentile method, "
    f"{RESAMPLES} resamples, seed {SEED}], n = runs with a value; n<2: no std, no CI"
)

# Metrics whose cycle-to-cycle spread is judged against validity.max_cycle_cv.
CYCLE_CV_METRICS = ("energy_j_per_output_token", "throughput_tok_s")
DEFAULT_MAX_CYCLE_CV = 0.05

# Per-request energy (requests table) over a group's counted runs: its spread, not a mean.
REQUEST_METRICS = ("energy_j", "energy_j_per_output_token")
PERCENTILES = (50, 90, 99)

SUMMARY = pa.schema(
    [
        ("group_by", STR),
        ("group", STR),
        ("label", STR),
        ("group_json", STR),
        ("experiment_ids", STRS),
        *[(c, EXPERIMENTS.field(c).type) for c in DESCRIPTIVE],
        ("energy_source", STR),
        ("runs_ok", I64),
        ("runs_invalid", I64),
        ("runs_failed", I64),
        *[(f"{m}_{s}", I64 if s == "n" else F64) for m in METRICS for s in STATS],
        *[(f"{m}_cycle_cv", F64) for m in CYCLE_CV_METRICS],
        ("max_cycle_cv", F64),
        ("cycle_cv_above", BOOL),
        ("engines", I64),
        ("artifacts", I64),
        ("energy_methods_disagree_runs", I64),
        ("host_shared_runs", I64),
        ("request_energy_attribution", STR),
        *[(f"request_{m}_p{p}", F64) for m in REQUEST_METRICS for p in PERCENTILES],
    ]
)


@dataclass
class Report:
    """groups: rows of SUMMARY; members[i]: the runs counted in groups[i], by cycle;
    excluded: failed and invalid runs with their reason; runs: latest attempt of every run."""

    group_by: tuple[str, ...]
    groups: list[dict[str, Any]]
    members: list[list[dict[str, Any]]]
    excluded: list[dict[str, Any]]
    runs: list[dict[str, Any]]

    @property
    def energy_measured(self) -> bool:
        """Whether any group has an energy figure: without one, the report says why."""
        return any(g["energy_j_per_output_token_n"] for g in self.groups)

    def table(self) -> pa.Table:
        """The groups as the summary table written beside the report."""
        return pa.Table.from_pylist(self.groups, schema=SUMMARY)


def latest_attempts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (experiment_id, cycle): the highest attempt; an earlier failure a retry
    fixed, or a figure a rerun replaced, no longer counts."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["experiment_id"], row["cycle"])
        if key not in latest or row["attempt"] > latest[key]["attempt"]:
            latest[key] = row
    return sorted(latest.values(), key=lambda r: (r["experiment_id"], r["cycle"]))


def _lookup(config: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def group_values(runs: list[dict[str, Any]], keys: Sequence[str]) -> list[tuple[Any, ...]]:
    """Each run's value of each key: a column of the experiments table, else a dotted path
    into config_json (null for a run whose config lacks it, e.g. pytorch.* on a vLLM run)."""
    configs = [json.loads(r["config_json"]) if r.get("config_json") else {} for r in runs]
    columns = []
    for key in keys:
        if key in EXPERIMENTS.names:
            columns.append([hashable(r.get(key)) for r in runs])
            continue
        found = [_lookup(c, key) for c in configs]
        if not any(ok for ok, _ in found):
            raise ConfigError(
                f"unknown key {key!r}: neither a column of the experiments table nor a key of "
                "config_json (e.g. batch_size, fp_precision, pytorch.batch_size, "
                "decoder.temperature)",
                path="--group-by",
            )
        section = next((v for _, v in found if isinstance(v, dict)), None)
        if section is not None:
            raise ConfigError(
                f"{key!r} is a section of the config, not a value; name a key inside it "
                f"({', '.join(f'{key}.{k}' for k in list(section)[:4])}, ...)",
                path="--group-by",
            )
        columns.append([hashable(v) for _, v in found])
    return list(zip(*columns)) if columns else [()] * len(runs)


def group_label(keys: Sequence[str], values: Sequence[Any]) -> str:
    """A group's name in the report: the value alone under the default grouping, else
    key=value pairs."""
    if tuple(keys) == DEFAULT_GROUP_BY:
        return value_text(values[0])
    return ", ".join(f"{k}={value_text(v)}" for k, v in zip(keys, values))


def _sort_key(values: Sequence[Any]) -> tuple[Any, ...]:
    """Numbers in numeric order, then text, then nulls; never compares a number to a string."""
    def one(v: Any) -> tuple[Any, ...]:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return (v is None, not number, v if number else value_text(v))
    return tuple(one(v) for v in values)


def _counted(run: dict[str, Any]) -> bool:
    return run["status"] == "ok" and run.get("valid") is not False


def _exclusion(run: dict[str, Any], label: str) -> dict[str, Any]:
    if run["status"] != "ok":
        kind, reason = run["status"], (run.get("error") or "").strip().splitlines()[:1]
    else:
        kind, reason = "invalid", [",".join(run.get("validity_flags") or [])]
    return {
        "group": label,
        **{k: run[k] for k in ("experiment_id", "run_id", "cycle", "attempt")},
        "status": kind,
        "reason": reason[0] if reason and reason[0] else "-",
    }


def cycle_cv(values: Sequence[float | None]) -> float | None:
    """Cycle-to-cycle coefficient of variation (sample std / mean) of a group's runs."""
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    mean = statistics.fmean(present)
    return statistics.stdev(present) / mean if mean else None


def most_per_experiment(runs: list[dict[str, Any]], column: str) -> int | None:
    """The most distinct values of `column` any one experiment's runs had: for engine_id, the
    most engines loaded apart (1 when each experiment's cycles shared one engine, whatever
    else a pooled group mixes); for compile_cache_hash, the most compiled artifacts. None for
    rows written before the column, or engines that compiled nothing."""
    seen: dict[str, set[str]] = {}
    for run in runs:
        if run.get(column):
            seen.setdefault(run["experiment_id"], set()).add(run[column])
    return max(map(len, seen.values())) if seen else None


def request_energy(
    counted: list[dict[str, Any]], requests: dict[tuple[str, int], list[dict[str, Any]]],
) -> dict[str, Any]:
    """p50/p90/p99 of J per request and J per output token over the requests of a group's
    counted runs, and how their energy was attributed (`step`, `token_share`, or `mixed`)."""
    found = [r for run in counted for r in requests.get((run["run_id"], run["attempt"]), [])
             if r.get("energy_j") is not None]
    per_token = [r["energy_j"] / r["output_tokens"] for r in found if r.get("output_tokens")]
    # rows written before energy_attribution were all split by token share
    methods = {r.get("energy_attribution") or "token_share" for r in found}
    out: dict[str, Any] = {"request_energy_attribution": (
        None if not methods else methods.pop() if len(methods) == 1 else "mixed")}
    for metric, values in zip(REQUEST_METRICS, ([r["energy_j"] for r in found], per_token)):
        for p in PERCENTILES:
            out[f"request_{metric}_p{p}"] = (
                float(np.percentile(np.array(values, dtype=float), p)) if values else None)
    return out


def recorded_max_cycle_cv(rows: list[dict[str, Any]]) -> float | None:
    """The campaign's validity.max_cycle_cv as its most recently finished run recorded it (a
    campaign run again with another limit: the newer one); None when no row records one."""
    recorded = [r for r in rows
                if r.get("max_cycle_cv") is not None and r.get("finished_at") is not None]
    return max(recorded, key=lambda r: r["finished_at"])["max_cycle_cv"] if recorded else None


def build_report(
    rows: list[dict[str, Any]], group_by: Sequence[str] = DEFAULT_GROUP_BY,
    max_cycle_cv: float | None = None,
    requests: list[dict[str, Any]] | None = None,
) -> Report:
    """Summarise the runs in `rows` (experiments-table rows, any attempts) per group.

    Each group carries the cycle-to-cycle CV of J/output token and throughput over its
    counted runs, and whether one of them is above max_cycle_cv (None: the campaign's
    validity.max_cycle_cv recorded in the rows, else DEFAULT_MAX_CYCLE_CV); with `requests`
    (requests-table rows), the spread of per-request energy."""
    if max_cycle_cv is None:
        max_cycle_cv = recorded_max_cycle_cv(rows) or DEFAULT_MAX_CYCLE_CV
    by_run: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for request in requests or []:
        by_run.setdefault((request["run_id"], request["attempt"]), []).append(request)
    keys = tuple(group_by)
    runs = latest_attempts(rows)
    buckets: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run, values in zip(runs, group_values(runs, keys)):
        buckets.setdefault(values, []).append(run)
    ordered = sorted(
        buckets.items(),
        key=lambda item: (_sort_key([common_value(item[1], c) for c in DESCRIPTIVE[1:5]]),
                          _sort_key(item[0])),
    )
    groups, members, excluded = [], [], []
    labels = group_labels([bucket for _, bucket in ordered])
    for (values, bucket), readable in zip(ordered, labels):
        label = group_label(keys, values)
        counted = sorted((r for r in bucket if _counted(r)), key=lambda r: r["cycle"])
        left_out = [_exclusion(r, label) for r in bucket if not _counted(r)]
        row: dict[str, Any] = {
            "group_by": ",".join(keys),
            "group": label,
            "label": readable,
            "group_json": json.dumps(dict(zip(keys, values)), default=str),
            "experiment_ids": sorted({r["experiment_id"] for r in bucket}),
            **{c: common_value(bucket, c) for c in DESCRIPTIVE},
            "energy_source": common_value(counted, "energy_source"),
            "runs_ok": len(counted),
            "runs_invalid": sum(e["status"] == "invalid" for e in left_out),
            "runs_failed": sum(e["status"] != "invalid" for e in left_out),
        }
        for metric in METRICS:
            for stat, value in describe([r.get(metric) for r in counted]).items():
                row[f"{metric}_{stat}"] = value
        spreads = [cycle_cv([r.get(m) for r in counted]) for m in CYCLE_CV_METRICS]
        for metric, spread in zip(CYCLE_CV_METRICS, spreads):
            row[f"{metric}_cycle_cv"] = spread
        row["max_cycle_cv"] = max_cycle_cv
        row["cycle_cv_above"] = any(v is not None and v > max_cycle_cv for v in spreads)
        row["engines"] = most_per_experiment(counted, "engine_id")
        row["artifacts"] = most_per_experiment(counted, "compile_cache_hash")
        row["energy_methods_disagree_runs"] = sum(
            "energy_methods_disagree" in (r.get("validity_flags") or []) for r in bucket)
        row["host_shared_runs"] = sum((r.get("host_shared_by_runs") or 0) > 0 for r in counted)
        row.update(request_energy(counted, by_run))
        groups.append(row)
        members.append(counted)
        excluded.extend(left_out)
    return Report(keys, groups, members, excluded, runs)


def batch_series(runs: list[dict[str, Any]]) -> tuple[Report, list[str]]:
    """The batch-size plot's points and the line each is on: runs grouped by batch size and
    by every engine and runtime setting that differs between them, so that eager decode and
    the fast path at one batch size are two points on two lines, each line named by what
    differs between the lines."""
    keys = (*ENGINE_COLUMNS, *engine_keys(runs))
    report = build_report(runs, (*keys, "batch_size"))
    return report, series_labels(report.members, keys)


def pareto_mask(
    xs: Sequence[float], ys: Sequence[float], minimise_x: bool = True, minimise_y: bool = True
) -> list[bool]:
    """True for the points no other point beats on one axis without losing on the other."""
    sx, sy = (1 if minimise_x else -1), (1 if minimise_y else -1)
    points = [(sx * x, sy * y) for x, y in zip(xs, ys)]
    return [
        not any(a <= x and b <= y and (a < x or b < y) for a, b in points)
        for x, y in points
    ]


def format_number(value: float | None, digits: int = 4) -> str:
    """Significant digits for reading (the exact figures are in the files); whole numbers
    with separators from 10,000 on."""
    if value is None:
        return "-"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{float(f'{value:.{digits}g}'):g}"


def cell_lines(group: dict[str, Any], metric: str) -> list[str]:
    """'mean ± std', '[CI low, CI high]', 'n=N': short lines, so a table of many metrics fits a
    terminal; a lone value says it has no CI."""
    n = group[f"{metric}_n"]
    mean = format_number(group[f"{metric}_mean"])
    if n == 0:
        return ["-"]
    if n < 2:
        return [mean, "no CI (n<2)", f"n={n}"]
    std = group[f"{metric}_std"]
    if std is not None and abs(std) <= ROUNDING * abs(group[f"{metric}_mean"]):
        std = 0.0  # equal values whose mean rounded: 2.8e-17 would read as a spread
    ci_low, ci_high = group[f"{metric}_ci_low"], group[f"{metric}_ci_high"]
    return [f"{mean} ± {format_number(std, 2)}",
            f"[{format_number(ci_low)}, {format_number(ci_high)}]",
            f"n={n}"]


def shown_metrics(report: Report) -> list[str]:
    """Metrics with a value in some group: a CPU campaign's table has no empty energy columns."""
    return [m for m in METRICS if any(g[f"{m}_n"] for g in report.groups)]


def cycle_cv_text(group: dict[str, Any]) -> str:
    """'E 1.2% · T 0.8%' (J/output token, throughput), with ' > 5%' when above the limit, and
    ' · 3 engines' when the cycles ran on engines loaded apart (their spread includes the
    engines' own differences, such as kernels tuned per compile), and ' · 2 artifacts' when
    they ran different compiled kernels (compile_cache_hash), or ', 1 artifact' when engines
    loaded apart all ran one compile's kernels (from the compile cache)."""
    parts = []
    for metric, short in zip(CYCLE_CV_METRICS, ("E", "T")):
        value = group[f"{metric}_cycle_cv"]
        parts.append(f"{short} {value:.1%}" if value is not None else f"{short} -")
    text = " · ".join(parts)
    if group["cycle_cv_above"]:
        text = f"{text} > {group['max_cycle_cv']:.0%}"
    engines, artifacts = group.get("engines"), group.get("artifacts")
    if engines and engines > 1:
        text = f"{text} · {engines} engines"
        if artifacts == 1:
            return f"{text}, 1 artifact"
    return f"{text} · {artifacts} artifacts" if artifacts and artifacts > 1 else text
