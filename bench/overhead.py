"""What lem-ray costs around a run, three ways, on a local Ray with the tiny model on CPU.

    python bench/overhead.py [--runs N] [--json] [--smoke]

The same campaign (one engine config, N short runs) is run
- `reuse`: as lem-ray runs it by default, one worker keeping its engine;
- `cold`: with execution.force_cold_start (a fresh worker and a load for every run);
- `sequential`: each run in a fresh Python process that loads, warms up and measures, the way
  a one-process-per-experiment tool does (no Ray, no results written).
Per way: runs, wall_s, overhead_s_per_run (wall time minus the measured windows and minus
engine loading, per run), engine_loads, distinct_engines. --smoke is --runs 2: every way in
seconds, for CI (2 runs are too few for the per-run overhead to mean much).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

import ray

from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.execution.driver.cluster import WORKER_ENV
from lem_ray.results.store import read_table

BASE: dict[str, Any] = {
    "model_name": "builtin:tiny-llama", "load_format": "dummy", "backend": "pytorch",
    "fp_precision": "float32", "max_output_tokens": 8, "min_output_tokens": 8,
    "prompts": {"source": "synthetic", "count": 4, "input_len": {"mean": 16, "std": 0}},
    "warmup": {"mode": "fixed", "requests": 1},
}

ONE_RUN = """
import json, sys, time
from lem_ray.backends.base import DeviceInfo
from lem_ray.backends.registry import backend_class
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.planning.prompts import load_prompts
from pathlib import Path
cfg = ExperimentConfig.model_validate_json(sys.argv[1])
prompts = load_prompts(cfg.prompts, Path.cwd(), cfg.random_seed)
backend = backend_class(cfg.backend)(cfg, DeviceInfo("cpu"))
t0 = time.perf_counter(); backend.load(); load_s = time.perf_counter() - t0
backend.generate(prompts[: cfg.warmup.requests] or prompts[:1])
t0 = time.perf_counter(); backend.generate(prompts); measured_s = time.perf_counter() - t0
backend.release()
print(json.dumps({"load_s": load_s, "measured_s": measured_s}))
"""


def campaign_way(runs: int, cold: bool) -> dict[str, Any]:
    campaign = {"campaign_name": f"overhead-{'cold' if cold else 'reuse'}", "base": BASE,
                "execution": {"cycles": runs, "force_cold_start": cold}}
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run_campaign(campaign, results_dir=out)
        wall_s = time.perf_counter() - started
        rows = [r for r in read_table(out, "experiments").to_pylist() if r["status"] == "ok"]
    measured_s = sum(r["energy_window_s"] + (r["prefill_window_s"] or 0.0) for r in rows)
    load_s = sum(r["engine_load_s"] for r in rows)
    keys = {ExperimentConfig.model_validate_json(r["config_json"]).engine_key for r in rows}
    return {
        "runs": len(rows),
        "wall_s": round(wall_s, 3),
        "overhead_s_per_run": round((wall_s - measured_s - load_s) / len(rows), 3),
        "engine_loads": sum(not r["engine_reused"] for r in rows),
        "distinct_engines": len(keys),
    }


def sequential_way(runs: int) -> dict[str, Any]:
    config = ExperimentConfig.model_validate(BASE).model_dump_json()
    measured_s = load_s = 0.0
    started = time.perf_counter()
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", ONE_RUN, config], capture_output=True,
                              text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        measured_s += figures["measured_s"]
        load_s += figures["load_s"]
    wall_s = time.perf_counter() - started
    return {
        "runs": runs,
        "wall_s": round(wall_s, 3),
        "overhead_s_per_run": round((wall_s - measured_s - load_s) / runs, 3),
        "engine_loads": runs,
        "distinct_engines": 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--smoke", action="store_true", help="--runs 2: a CI check of the script")
    args = parser.parse_args()
    if args.smoke:
        args.runs = 2
    ray.init(address="local", include_dashboard=False, namespace="lem-ray-bench",
             logging_level="ERROR", runtime_env={"env_vars": WORKER_ENV})
    try:
        result = {"reuse": campaign_way(args.runs, cold=False),
                  "cold": campaign_way(args.runs, cold=True)}
    finally:
        ray.shutdown()
    result["sequential"] = sequential_way(args.runs)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for way, figures in result.items():
        print(f"{way:10s} " + ", ".join(f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
