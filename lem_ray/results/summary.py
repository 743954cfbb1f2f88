"""The end-of-campaign table: one line per experiment, means over its ok cycles."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from lem_ray.results.store import read_table

SUMMARY_METRICS = (
    "throughput_tok_s",
    "energy_j_per_output_token",
    "energy_j",
    "ttft_ms_p50",
    "itl_ms_p50",
    "avg_power_w",
)


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def summarize(results_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-experiment means over ok runs, failed attempts of runs that never succeeded)."""
    rows = read_table(results_dir, "experiments").to_pylist()
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault(row["experiment_id"], []).append(row)
    summary = []
    for eid, runs in groups.items():
        first = runs[0]
        summary.append(
            {
                "experiment_id": eid,
                "backend": first["backend"],
                "model_name": first["model_name"],
                "fp_precision": first["fp_precision"],
                "batch_size": first["batch_size"],
                "device": first["device"],
                "cycles_ok": len(runs),
                "energy_source": first["energy_source"],
                **{m: _mean([r[m] for r in runs]) for m in SUMMARY_METRICS},
            }
        )
    summary.sort(key=lambda s: (s["backend"], s["model_name"], s["fp_precision"], s["batch_size"]))
    ok_runs = {(r["experiment_id"], r["cycle"]) for g in groups.values() for r in g}
    failures = [
        {k: r[k] for k in ("experiment_id", "cycle", "attempt", "backend", "error")}
        for r in rows
        if r["status"] != "ok" and (r["experiment_id"], r["cycle"]) not in ok_runs
    ]
    return summary, failures
