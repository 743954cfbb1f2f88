"""Print the measurement-quality figures of a campaign's results as Markdown tables.

    python bench/measurement_report.py RESULTS_DIR
    python bench/measurement_report.py --smoke

Per run: counter energy vs integrated instant power over the same window, J per output token
(raw and idle-adjusted), prefill/decode split, idle baseline, the sampler's CPU cost, validity.
Per experiment: cycle-to-cycle coefficient of variation of J per output token.

--smoke runs a tiny campaign first (the tiny shipped model at batch 1 and 2, 2 cycles, on a
local Ray) into a temporary directory and reports on it, for CI: on a machine without NVML
every energy column reads "-", so it proves the tables, not the energy figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from lem_ray.results.store import read_table

SMOKE_CAMPAIGN: dict[str, Any] = {
    "campaign_name": "measurement-smoke",
    "base": {
        "model_name": "builtin:tiny-llama", "load_format": "dummy", "backend": "pytorch",
        "fp_precision": "float32", "max_output_tokens": 8, "min_output_tokens": 8,
        "prompts": {"source": "synthetic", "count": 4, "input_len": {"mean": 16, "std": 0}},
        "warmup": {"mode": "fixed", "requests": 1},
    },
    "grid": {"backend_overrides": {"pytorch": {"batch_size": [1, 2]}}},
    "execution": {"cycles": 2},
}


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
          "| tok/s | J/out tok | adj. J/out tok | prefill J | decode J | idle W | sampler CPU "
          "| flags |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = r["sampler_cpu_s"] or 0.0
        wall = (r["finished_at"] - r["started_at"]).total_seconds()
        print(f"| {r['batch_size']} | {r['gpus_per_experiment']} | {r['cycle']} "
              f"| {_f(r['energy_window_s'], '.2f')} | {_f(r['energy_j'], '.1f')} "
              f"| {_f(r['energy_integrated_j'], '.1f')} "
              f"| {_pct(r['energy_integrated_j'], r['energy_j'])} "
              f"| {_f(r['throughput_tok_s'], '.0f')} "
              f"| {_f(r['energy_j_per_output_token'])} "
              f"| {_f(r['energy_adjusted_j_per_output_token'])} "
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
              f"| {json.dumps({k: round(v, 1) for k, v in throttle.items()}) if throttle else '-'} "
              "|")


def smoke() -> None:
    import ray

    from lem_ray.execution.driver.campaign import run_campaign
    from lem_ray.execution.driver.cluster import WORKER_ENV

    ray.init(address="local", include_dashboard=False, namespace="lem-ray-bench",
             logging_level="ERROR", runtime_env={"env_vars": WORKER_ENV})
    try:
        with tempfile.TemporaryDirectory() as out:
            run_campaign(SMOKE_CAMPAIGN, results_dir=out)
            main(Path(out))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", nargs="?", type=Path)
    parser.add_argument("--smoke", action="store_true",
                        help="report on a tiny CPU campaign run first: a CI check of the script")
    args = parser.parse_args()
    if args.smoke == (args.results_dir is not None):
        parser.error("give RESULTS_DIR or --smoke")
    if args.smoke:
        smoke()
    else:
        main(args.results_dir)
