"""How well runs of mixed GPU counts and lengths pack onto the cluster's GPUs.

    python bench/packing.py [--gpus 4] [--cycles 3] [--prompts 16] [--json] [--smoke]

A local Ray with G logical GPUs runs a grid of real tiny-model runs: GPU counts 1 and 2,
lengths varied through max_output_tokens, several cycles (later cycles know earlier ones'
lengths, which backfill uses). Each run's duration is the time it held its GPUs (started_at to
finished_at in the experiments table); makespan is first start to last finish; ideal is
max(sum of GPU-seconds / G, longest run). ratio = makespan / ideal (1.0 is perfect packing).
A new worker's start (a Ray actor process, before its first run begins) counts in the makespan
but in no run: --prompts sets how long runs are against it.

`idle_gpu_s` says where the makespan's GPU-seconds outside runs went, per GPU from the first
start to the last finish: `new_worker` before a run that loaded its engine (every worker of
this grid holds one engine, so a load means a new worker: the actor's start), `waiting`
before a run on a warm engine (the GPU kept for a run, or the dispatcher's turn), `tail` after
the GPU's last run. `loading_gpu_s` is the part of the runs spent loading.

--smoke is 2 GPUs, 1 cycle, 2 prompts a run: the grid's 6 runs in seconds, for CI (runs that
short are mostly worker starts, so its ratio says little about packing).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

import ray

from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.execution.driver.cluster import WORKER_ENV
from lem_ray.results.store import read_table


def campaign(cycles: int, prompts: int = 16) -> dict[str, Any]:
    return {
        "campaign_name": "packing",
        "base": {
            "model_name": "builtin:tiny-llama", "load_format": "dummy", "backend": "pytorch",
            "fp_precision": "float32",
            "prompts": {"source": "synthetic", "count": prompts,
                        "input_len": {"mean": 16, "std": 0}},
            "warmup": {"mode": "fixed", "requests": 1},
        },
        "grid": {"shared": {"gpus_per_experiment": [1, 2],
                            "max_output_tokens": [32, 96, 192],
                            "min_output_tokens": [32]}},
        "execution": {"cycles": cycles, "prefill": {"enabled": False}},
    }


def idle_gpu_s(rows: list[dict[str, Any]]) -> dict[str, float]:
    """GPU-seconds between the first start and the last finish in no run, by what came next."""
    first, last = min(r["started_at"] for r in rows), max(r["finished_at"] for r in rows)
    idle = {"new_worker": 0.0, "waiting": 0.0, "tail": 0.0}
    for gpu in {g for r in rows for g in r["gpu_ids"]}:
        free_at = first
        for run in sorted((r for r in rows if gpu in r["gpu_ids"]), key=lambda r: r["started_at"]):
            gap_s = (run["started_at"] - free_at).total_seconds()
            idle["waiting" if run["engine_reused"] else "new_worker"] += max(gap_s, 0.0)
            free_at = max(free_at, run["finished_at"])
        idle["tail"] += (last - free_at).total_seconds()
    return {cause: round(seconds, 2) for cause, seconds in idle.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--smoke", action="store_true",
                        help="--gpus 2 --cycles 1 --prompts 2: a CI check of the script")
    args = parser.parse_args()
    if args.smoke:
        args.gpus, args.cycles, args.prompts = 2, 1, 2
    # One intra-op thread per worker: the logical GPUs share the machine's few cores.
    env = {**WORKER_ENV, "OMP_NUM_THREADS": "1"}
    ray.init(address="local", num_cpus=args.gpus + 2, num_gpus=args.gpus, include_dashboard=False,
             namespace="lem-ray-bench", logging_level="ERROR", runtime_env={"env_vars": env})
    try:
        with tempfile.TemporaryDirectory() as out:
            run_campaign(campaign(args.cycles, args.prompts), results_dir=out)
            rows = [r for r in read_table(out, "experiments").to_pylist() if r["status"] == "ok"]
    finally:
        ray.shutdown()
    held = [((r["finished_at"] - r["started_at"]).total_seconds(), r["gpus_per_experiment"])
            for r in rows]
    makespan_s = (max(r["finished_at"] for r in rows)
                  - min(r["started_at"] for r in rows)).total_seconds()
    ideal_s = max(sum(s * g for s, g in held) / args.gpus, max(s for s, _ in held))
    result = {"gpus": args.gpus, "runs": len(rows), "makespan_s": round(makespan_s, 2),
              "ideal_s": round(ideal_s, 2), "ratio": round(makespan_s / ideal_s, 3),
              "idle_gpu_s": idle_gpu_s(rows),
              "loading_gpu_s": round(sum(r["engine_load_s"] * r["gpus_per_experiment"]
                                         for r in rows), 2)}
    print(json.dumps(result, indent=2) if args.json else
          ", ".join(f"{k} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
