"""How much time lem-ray spends around a run: placement, actors, loading, versus measuring.

    python bench/overhead.py [RUNS]

Runs RUNS tiny runs (the shipped tiny model, 4 prompts, 8 tokens, no warmup) on a local Ray
and prints, per run and in total, where the wall time went.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from lem_ray.execution.driver import run_campaign
from lem_ray.results.store import read_table


def main(runs: int) -> None:
    campaign = {
        "campaign_name": "overhead",
        "base": {
            "model_name": "builtin:tiny-llama", "load_format": "dummy", "backend": "pytorch",
            "fp_precision": "float32", "max_output_tokens": 8, "min_output_tokens": 8,
            "prompts": {"source": "synthetic", "count": 4, "input_len": {"mean": 16, "std": 0}},
            "warmup": {"mode": "fixed", "requests": 0},
        },
        "execution": {"cycles": runs},
    }
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run_campaign(campaign, results_dir=out)
        total_s = time.perf_counter() - started
        rows = [r for r in read_table(out, "experiments").to_pylist() if r["status"] == "ok"]
    wall = [(r["finished_at"] - r["started_at"]).total_seconds() for r in rows]
    load = [r["load_s"] for r in rows]
    measure = [r["duration_s"] for r in rows]
    print(f"{len(rows)} runs in {total_s:.1f} s ({total_s / len(rows):.2f} s per run, "
          "Ray start and shutdown included)")
    for name, values in (("run wall (GPUs held)", wall), ("model load", load), ("measured", measure)):
        print(f"  {name:22s} median {statistics.median(values):.2f} s, "
              f"min {min(values):.2f}, max {max(values):.2f}")
    other = [w - l - m for w, l, m in zip(wall, load, measure)]
    print(f"  {'other (actors, I/O)':22s} median {statistics.median(other):.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
