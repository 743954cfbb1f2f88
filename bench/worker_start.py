"""How long a new worker takes to come up: what a run waits for while its GPUs are held.

    python bench/worker_start.py [--gpus 4] [--repeats 3] [--json] [--smoke]

On a local Ray with G logical GPUs (as bench/packing.py starts it), from the slot's opening
(placement group and actor requested, as the dispatcher does) to the worker's first call
answered, for 1 worker of 1 GPU, 1 of 2 GPUs, 2 of 2 GPUs and G of 1 GPU at once (a switch of
all GPUs between sizes); the median of the repeats, each on a cluster otherwise at rest.
--smoke is --gpus 2 --repeats 1: every case once, for CI.
"""

from __future__ import annotations

import argparse
import json
import time
from statistics import median

import ray

from lem_ray.execution.driver.cluster import WORKER_ENV
from lem_ray.execution.driver.slots import Slot


def start_s(node: str, workers: int, gpus: int) -> float:
    t0 = time.perf_counter()
    slots = [Slot.open(i, gpus, node, f"lem-ray:start:{i}") for i in range(workers)]
    try:
        ray.get([slot.starting for slot in slots])
        return time.perf_counter() - t0
    finally:
        for slot in slots:
            slot.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--smoke", action="store_true",
                        help="--gpus 2 --repeats 1: a CI check of the script")
    args = parser.parse_args()
    if args.smoke:
        args.gpus, args.repeats = 2, 1
    env = {**WORKER_ENV, "OMP_NUM_THREADS": "1"}
    ray.init(address="local", num_cpus=args.gpus + 2, num_gpus=args.gpus, include_dashboard=False,
             namespace="lem-ray-bench", logging_level="ERROR", runtime_env={"env_vars": env})
    try:
        node = ray.get_runtime_context().get_node_id()
        cases = {"1x1gpu": (1, 1), "1x2gpu": (1, 2), "2x2gpu": (2, args.gpus // 2),
                 f"{args.gpus}x1gpu": (args.gpus, 1)}
        times: dict[str, list[float]] = {case: [] for case in cases}
        for _ in range(args.repeats):
            for case, (workers, gpus) in cases.items():
                times[case].append(start_s(node, workers, gpus))
                time.sleep(1.0)
    finally:
        ray.shutdown()
    result = {f"{case}_s": round(median(found), 2) for case, found in times.items()}
    print(json.dumps(result) if args.json else
          ", ".join(f"{k} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
