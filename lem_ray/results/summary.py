"""The end-of-campaign table: the report's grouping by experiment, means only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lem_ray.results.report import build_report
from lem_ray.results.store import read_table

SUMMARY_METRICS = (
    "throughput_tok_s",
    "energy_j_per_output_token",
    "energy_adjusted_j_per_output_token",
    "ttft_ms_p50",
    "itl_ms_p50",
    "avg_power_w",
)


def summarize(
    results_dir: str | Path, labels: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-experiment means over its counted runs, runs left out with their reason), each
    with its experiment's label.

    Counted as in `lem-ray report`: the latest attempt of each run, ok and not invalid.
    `labels` (experiment_labels of the campaign's plan) name its experiments as its live lines
    did, even where the directory also holds other campaigns' experiments, which would change
    what sets one apart; an experiment not among them keeps the report's label.
    """
    report = build_report(read_table(results_dir, "experiments").to_pylist())
    named = {g["group"]: (labels or {}).get(g["group"], g["label"]) for g in report.groups}
    summary = [
        {
            "experiment_id": group["group"],
            "label": named[group["group"]],
            **{c: group[c] for c in ("backend", "model_name", "fp_precision", "batch_size",
                                     "device", "energy_source")},
            "cycles_ok": group["runs_ok"],
            **{m: group[f"{m}_mean"] for m in SUMMARY_METRICS},
        }
        for group in report.groups
        if group["runs_ok"]
    ]
    return summary, [{**run, "label": named[run["group"]]} for run in report.excluded]
