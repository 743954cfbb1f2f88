"""The vLLM campaign's table from its results: per max_num_seqs, each cycle's J/output token,
output tok/s, TTFT p50, ITL p50, mean power and the engine's mean running batch, and their
cycle-to-cycle CV (sample std / mean, as
`lem-ray report` computes it). Under traffic, the steady-state window's figures too.

    python3 dev/gpu-vllm/summarize.py RESULTS_DIR OUT_STEM

writes OUT_STEM.json and OUT_STEM.md and prints the markdown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lem_ray.results.report import cycle_cv
from lem_ray.results.store import read_table

FIGURES = (
    ("energy_j_per_output_token", "J/out tok", 4),
    ("throughput_tok_s", "out tok/s", 0),
    ("ttft_ms_p50", "TTFT p50 ms", 1),
    ("itl_ms_p50", "ITL p50 ms", 2),
    ("avg_power_w", "power W", 0),
    ("running_batch_mean", "mean running batch", 1),
)
STEADY = (
    ("steady_energy_j_per_output_token", "steady J/out tok", 4),
    ("steady_throughput_tok_s", "steady tok/s", 0),
    ("steady_duration_s", "steady s", 1),
)
ROW_FIELDS = ("run_id", "cycle", "status", "valid", "validity_flags", "duration_s",
              "timing_method", "engine_reused", "engine_load_s", "traffic_mode",
              "gpus_per_experiment", "gpu_uuids", "energy_by_gpu_json")


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One group per experiment, labelled by what varies here (max_num_seqs, GPUs, traffic)."""
    by_experiment: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (r["batch_size"] or 0, r["traffic"],
                                           r["experiment_id"], r["cycle"])):
        by_experiment.setdefault(row["experiment_id"], []).append(row)
    labels = {}
    for experiment_id, members in by_experiment.items():
        label = f"max_num_seqs {members[0]['batch_size']}"
        if (members[0].get("gpus_per_experiment") or 1) > 1:
            label += f", {members[0]['gpus_per_experiment']} GPUs"
        if members[0]["traffic"] != "offline":
            label += f", {members[0]['traffic']}"
        labels[experiment_id] = label
    taken = list(labels.values())
    return {(label if taken.count(label) == 1 else f"{label} [{eid}]"): by_experiment[eid]
            for eid, label in labels.items()}


def _fmt(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summarize(results_dir: str) -> dict[str, Any]:
    rows = read_table(results_dir, "experiments").to_pylist()
    for row in rows:
        row["traffic"] = row.get("traffic_mode") or "offline"
    figures = FIGURES + (STEADY if any(r["traffic"] != "offline" for r in rows) else ())
    groups = {}
    for label, members in _groups(rows).items():
        ok = [r for r in members if r["status"] == "ok"]
        groups[label] = {
            "runs": [{**{k: r.get(k) for k in ROW_FIELDS}, "traffic_mode": r["traffic"],
                      **{name: r.get(name) for name, _, _ in figures}} for r in members],
            "cv": {name: cycle_cv([r.get(name) for r in ok]) for name, _, _ in figures},
            "engine_config": json.loads(ok[0]["engine_config_json"])
            if ok and ok[0].get("engine_config_json") else None,
        }
    return {"results_dir": results_dir, "figures": [name for name, _, _ in figures],
            "groups": groups}


def markdown(summary: dict[str, Any]) -> str:
    figures = [f for f in FIGURES + STEADY if f[0] in summary["figures"]]
    head = ["group", "cycle", "status", "load s", "window s"] + [title for _, title, _ in figures]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, group in summary["groups"].items():
        for run in group["runs"]:
            flags = "" if run["valid"] or run["status"] != "ok" else " (flags: " + ", ".join(
                run["validity_flags"] or []) + ")"
            cells = [label, str(run["cycle"]), f"{run['status']}{flags}",
                     _fmt(run["engine_load_s"], 1), _fmt(run["duration_s"], 1)]
            cells += [_fmt(run[name], digits) for name, _, digits in figures]
            lines.append("| " + " | ".join(cells) + " |")
        cv = group["cv"]
        cells = [label, "CV", "", "", ""] + [
            "-" if cv[name] is None else f"{cv[name]:.2%}" for name, _, _ in figures]
        lines.append("| " + " | ".join(cells) + " |")
    timing = sorted({str(r["timing_method"]) for g in summary["groups"].values()
                     for r in g["runs"]})
    lines.append("")
    lines.append(f"timing_method: {', '.join(timing)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    results_dir, stem = sys.argv[1], Path(sys.argv[2])
    summary = summarize(results_dir)
    stem.with_name(stem.name + ".json").write_text(
        json.dumps(summary, indent=1, default=str) + "\n")
    text = markdown(summary)
    stem.with_name(stem.name + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
