"""Print the measurement-quality figures of a campaign's results as Markdown tables.

    python bench/measurement_report.py RESULTS_DIR

Per run: counter energy vs integrated instant power over the same window, J per output token
(raw and idle-adjusted), prefill/decode split, idle baseline, the sampler's CPU cost, validity.
Per experiment: cycle-to-cycle coefficient of variation of J per output token.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from lem_ray.results.store import read_table


def _pct(a: float | None, b: float | None) -> str:
    return f"{100 * (a - b) / b:+.2f}%" if a is not None and b else "-"


def _f(value: float | None, fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)


def main(results_dir: Path) -> None:
    rows = [r for r in read_table(results_dir, "experiments").to_pylist() if r["status"] == "ok"]
    rows.sort(key=lambda r: (r["gpus_per_experiment"], r["batch_size"], r["cycle"]))
    gpu = rows[0]["gpu_names"][0] if rows and rows[0]["gpu_names"] else "?"
    print(f"GPU: {gpu}; driver {rows[0]['driver_version'] if rows else '?'}\n")
    print("| batch | GPUs | cycle | window s | counter J | integrated J | integ. vs counter "
          "| tok/s | J/out tok | adj. J/out tok | prefill J | decode J | idle W | sampler CPU | flags |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = r["sampler_cpu_s"] or 0.0
        wall = (r["finished_at"] - r["started_at"]).total_seconds()
        print(f"| {r['batch_size']} | {r['gpus_per_experiment']} | {r['cycle']} "
              f"| {_f(r['energy_window_s'], '.2f')} | {_f(r['energy_j'], '.1f')} "
              f"| {_f(r['energy_integrated_j'], '.1f')} "
              f"| {_pct(r['energy_integrated_j'], r['energy_j'])} | {_f(r['throughput_tok_s'], '.0f')} "
              f"| {_f(r['energy_j_per_output_token'])} | {_f(r['energy_adjusted_j_per_output_token'])} "
              f"| {_f(r['energy_prefill_j'], '.1f')} | {_f(r['energy_decode_j'], '.1f')} "
              f"| {_f(r['baseline_power_w'], '.1f')} "
              f"| {_f(cpu, '.2f')} s ({100 * cpu / wall:.2f}% of {wall:.0f} s) "
              f"| {','.join(r['validity_flags'] or []) or ('valid' if r['valid'] else '-')} |")
    print("\n| batch | GPUs | cycles | mean J/out tok | CV J/out tok | mean adj. J/out tok "
          "| mean tok/s | throttle s |")
    print("|---|---|---|---|---|---|---|---|")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["experiment_id"], []).append(r)
    for runs in groups.values():
        jpt = [r["energy_j_per_output_token"] for r in runs if r["energy_j_per_output_token"]]
        adj = [r["energy_adjusted_j_per_output_token"] for r in runs
               if r["energy_adjusted_j_per_output_token"] is not None]
        cv = statistics.stdev(jpt) / statistics.fmean(jpt) if len(jpt) > 1 else None
        throttle: dict[str, float] = {}
        for r in runs:
            for k, v in json.loads(r["throttle_s_json"] or "{}").items():
                throttle[k] = throttle.get(k, 0.0) + v
        first = runs[0]
        print(f"| {first['batch_size']} | {first['gpus_per_experiment']} | {len(runs)} "
              f"| {_f(statistics.fmean(jpt) if jpt else None)} "
              f"| {'-' if cv is None else f'{100 * cv:.2f}%'} "
              f"| {_f(statistics.fmean(adj) if adj else None)} "
              f"| {_f(statistics.fmean(r['throughput_tok_s'] for r in runs), '.0f')} "
              f"| {json.dumps({k: round(v, 1) for k, v in throttle.items()}) if throttle else '-'} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
