"""How lem-ray's own parts cost as a campaign grows: N synthetic runs through the manifest,
the results writer, `compact`, `status` and `report`, and real runs through the dispatcher on a
`ray.cluster_utils.Cluster` of logical GPUs.

    python bench/scale.py --json                       # N = 1000, 10000, 50000
    python bench/scale.py --sizes 1000,5000 --dispatch-runs 40
    python bench/scale.py --smoke --json               # N = 12, 6 runs on 1 node x 2 GPUs

Per N (the dataset grows from one size to the next, so the largest is written once):
- manifest: N runs registered, then 2 state changes a run (running, then ok; every tenth run
  also dies once: pending, running again), each timed until durable; bytes written (journal
  and snapshots) per change; seconds to read it back as `status` does.
- results: one experiments row, REQUESTS_PER_RUN request rows and SAMPLES_PER_RUN samples a
  run, written by the real writer, one file per table per attempt.
- `lem-ray status` and `lem-ray report` as a user runs them (a new process, output to a
  pipe), report before and after `compact`; compaction on a hard-linked copy, so the next
  size still starts from small files.
Dispatch: a campaign of --dispatch-runs real runs (tiny random-weight model, one prompt, one
output token, no baseline, no prefill pass; the experiments differ in batch size, a runtime
option, so each worker loads the engine once) through run_campaign on --dispatch-nodes x
--dispatch-gpus-per-node logical GPUs: runs/s from the first finished run to the last (Ray's
start and the first worker's start-up left out, the other workers' start-ups in), and the
driver's CPU time per run over the same span. --smoke runs every part at a size that takes
seconds, for CI; its figures say nothing about scale.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lem_ray.records import RunKey
from lem_ray.results.compact import compact
from lem_ray.results.journal import ManifestStore
from lem_ray.results.manifest import load_manifest, new_entry
from lem_ray.results.schema import TABLES
from lem_ray.results.store import write_rows

REQUESTS_PER_RUN = 8
SAMPLES_PER_RUN = 20
CYCLES = 3
WRITER_PROCESSES = 2


def key_of(i: int) -> RunKey:
    """Run i: experiment (12 hex digits, as lem-ray's ids) and cycle; CYCLES runs each."""
    return RunKey(f"{i // CYCLES:012x}", i % CYCLES + 1)


def full_row(table: str, values: dict[str, Any]) -> dict[str, Any]:
    """Every column of the table, null where the bench sets nothing: the writer refuses rows
    with missing columns, and a column added to the schema must not break the bench."""
    return {**dict.fromkeys(TABLES[table].names), **values}


def attempts_of(i: int) -> int:
    """Every tenth run took a second attempt (its worker died), in the manifest as in the rows."""
    return 2 if i % 10 == 0 else 1


def synthetic_run(i: int) -> tuple[str, dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    key = key_of(i)
    batch_size = 1 + (i // CYCLES) % 8
    ids = {"campaign_name": "scale", "experiment_id": key.experiment_id, "run_id": key.run_id,
           "cycle": key.cycle, "attempt": attempts_of(i)}
    config = {"model_name": "builtin:tiny-llama", "backend": "pytorch",
              "pytorch": {"batch_size": batch_size}, "seed": i // CYCLES}
    jitter = 1 + 0.01 * ((i * 7919) % 11 - 5)
    throughput = 1000.0 * batch_size ** 0.5 * jitter
    experiment = full_row("experiments", {
        **ids, "status": "ok", "backend": "pytorch", "model_name": "builtin:tiny-llama",
        "fp_precision": "bfloat16", "batch_size": batch_size, "gpus_per_experiment": 1,
        "device": "cuda", "gpu_uuids": ["GPU-synthetic"], "num_requests": REQUESTS_PER_RUN,
        "output_tokens": 1024, "duration_s": 1024 / throughput, "throughput_tok_s": throughput,
        "ttft_ms_p50": 20.0 * jitter, "ttft_ms_p99": 40.0 * jitter, "e2e_ms_p50": 900.0 * jitter,
        "itl_ms_p50": 7.0 * jitter, "itl_ms_p99": 12.0 * jitter, "avg_power_w": 400.0 * jitter,
        "energy_j": 400.0 * 1024 / throughput, "energy_source": "counter", "valid": True,
        "energy_j_per_output_token": 0.4 / throughput * 1000,
        "energy_adjusted_j_per_output_token": 0.3 / throughput * 1000,
        "config_json": json.dumps(config, sort_keys=True),
    })
    requests = [full_row("requests", {**ids, "request_index": r, "output_tokens": 128,
                                      "ttft_ms": 20.0, "e2e_ms": 900.0})
                for r in range(REQUESTS_PER_RUN)]
    samples = [full_row("timeseries", {**ids, "gpu_uuid": "GPU-synthetic", "power_w": 400.0})
               for _ in range(SAMPLES_PER_RUN)]
    return key.stem(attempts_of(i)), experiment, requests, samples


def write_runs(args: tuple[str, int, int]) -> list[float]:
    """Runs [start, stop) through the results writer, requests and samples first, the
    experiments row last (as the dispatcher does); ms per run."""
    out, start, stop = args
    times = []
    for i in range(start, stop):
        stem, experiment, requests, samples = synthetic_run(i)
        began = time.perf_counter()
        write_rows(out, "requests", stem, requests)
        write_rows(out, "timeseries", stem, samples)
        write_rows(out, "experiments", stem, [experiment])
        times.append((time.perf_counter() - began) * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_manifest(out: Path, n: int) -> dict[str, float]:
    store = ManifestStore(out)
    store.set_campaign("scale")
    keys = [key_of(i) for i in range(n)]
    store.add_runs({k.run_id: new_entry(k.experiment_id, k.cycle) for k in keys})
    before = store.bytes_written
    times = []
    for i, key in enumerate(k.run_id for k in keys):
        changes = [{"state": "running", "attempt": 1}]
        if attempts_of(i) == 2:
            changes += [{"state": "pending", "error": "worker died"},
                        {"state": "running", "attempt": 2}]
        changes.append({"state": "ok", "node_id": "node", "gpu_ids": ["0"]})
        for fields in changes:
            began = time.perf_counter()
            store.set(key, {**fields, "updated_at": time.time()})
            times.append((time.perf_counter() - began) * 1000)
    written = store.bytes_written - before
    began = time.perf_counter()
    assert len(load_manifest(out)["runs"]) == n
    replay_s = time.perf_counter() - began
    store.close()
    return {"p50": percentile(times, 0.5), "p99": percentile(times, 0.99),
            "bytes_per_update": written / len(times), "updates": len(times), "replay_s": replay_s}


def cli_seconds(*args: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lem_ray.cli", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - began


def link_copy(source: Path, target: Path) -> None:
    shutil.copytree(source, target, copy_function=os.link)


def dispatch_rate(finished: list[tuple[float, float]]) -> tuple[float, float]:
    """Runs a second and the driver's CPU ms a run, from the first finished run to the last
    (Ray's start and the first worker's start-up are left out; the later workers' start-ups,
    which overlap the first runs, are in). finished: (time, driver CPU time) per run, in order."""
    if len(finished) < 2:
        return 0.0, 0.0
    finished = sorted(finished)
    (first_s, first_cpu_s), (last_s, last_cpu_s) = finished[0], finished[-1]
    runs = len(finished) - 1
    return runs / (last_s - first_s), (last_cpu_s - first_cpu_s) * 1000 / runs


def bench_dispatch(runs: int, nodes: int, gpus_per_node: int, work: Path) -> dict[str, float]:
    import ray
    from ray.cluster_utils import Cluster

    from lem_ray.execution.driver.campaign import run_campaign
    from lem_ray.execution.driver.cluster import WORKER_ENV

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": gpus_per_node, "num_gpus": gpus_per_node})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=gpus_per_node, num_gpus=gpus_per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="lem-ray-bench",
             runtime_env={"env_vars": WORKER_ENV}, log_to_driver=False)
    experiments = max(1, runs // CYCLES)
    # The experiments differ in a runtime option only, so they share one engine: each worker
    # loads it once and every later run reuses it. Loading is the worker's cost, paid on its
    # own node; what is timed is what every run costs the dispatcher, Ray and the worker.
    campaign = {
        "campaign_name": "dispatch",
        "base": {"model_name": "builtin:tiny-llama", "load_format": "dummy",
                 "fp_precision": "float32", "max_input_tokens": 8, "max_output_tokens": 1,
                 "min_output_tokens": 1, "warmup": {"mode": "fixed", "requests": 0},
                 "prompts": {"source": "synthetic", "count": 1,
                             "input_len": {"mean": 4, "std": 0}}},
        "grid": {"backends": ["pytorch"],
                 "shared": {"pytorch.batch_size": list(range(1, experiments + 1))}},
        "execution": {"cycles": CYCLES, "baseline": {"enabled": False},
                      "prefill": {"enabled": False}},
    }
    finished: list[tuple[float, float]] = []

    def reporter(progress: Any, rows: Any) -> None:
        if rows is not None:
            finished.append((time.perf_counter(), time.process_time()))

    began = time.perf_counter()
    try:
        result = run_campaign(campaign, results_dir=work / "dispatch", reporter=reporter)
    finally:
        ray.shutdown()
        cluster.shutdown()
    wall = time.perf_counter() - began
    done = result.counts["ran"]
    per_s, cpu_ms = dispatch_rate(finished)
    return {"runs": done, "ok": result.counts["ok"], "wall_s": wall, "per_s": per_s,
            "gpus": nodes * gpus_per_node, "driver_cpu_ms_per_run": cpu_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000",
                        help="comma-separated N; empty: the dispatcher only")
    parser.add_argument("--dispatch-runs", type=int, default=1500, help="0: skip the dispatcher")
    parser.add_argument("--dispatch-nodes", type=int, default=2)
    parser.add_argument("--dispatch-gpus-per-node", type=int, default=8)
    parser.add_argument("--workdir", type=Path, help="default: a temp dir, removed at the end")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--smoke", action="store_true",
                        help="--sizes 12 and 6 dispatched runs on 1 node x 2 GPUs: a CI check")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.dispatch_runs = "12", 6
        args.dispatch_nodes, args.dispatch_gpus_per_node = 1, 2
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lem-ray-scale-"))
    data = work / "data"
    figures: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, "
                   f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}",
        "command": " ".join(["python", "bench/scale.py", *sys.argv[1:]]),
        "runs_per_size": {"requests_per_run": REQUESTS_PER_RUN, "samples_per_run": SAMPLES_PER_RUN},
    }

    def put(key: str, n: int, value: float) -> None:
        figures.setdefault(key, {})[str(n)] = round(value, 4)

    written = 0
    for n in sizes:
        stats = bench_manifest(work / f"manifest-{n}", n)
        put("manifest_update_ms_p50", n, stats["p50"])
        put("manifest_update_ms_p99", n, stats["p99"])
        put("manifest_bytes_per_update", n, stats["bytes_per_update"])
        put("manifest_read_s", n, stats["replay_s"])
        chunks = [(str(data), s, min(s + 1000, n)) for s in range(written, n, 1000)]
        with ProcessPoolExecutor(WRITER_PROCESSES) as pool:
            times = [t for part in pool.map(write_runs, chunks) for t in part]
        written = n
        put("results_write_ms_per_run_p50", n, percentile(times, 0.5))
        copy = work / f"copy-{n}"
        link_copy(data, copy)
        shutil.copytree(work / f"manifest-{n}" / "manifest", copy / "manifest")
        put("status_s", n, cli_seconds("status", str(copy)))
        put("report_uncompacted_s", n, cli_seconds("report", str(copy)))
        began = time.perf_counter()
        compact(copy)
        put("compact_s", n, time.perf_counter() - began)
        put("report_s", n, cli_seconds("report", str(copy)))
        shutil.rmtree(copy)
        if not args.json:
            print(json.dumps({k: v for k, v in figures.items() if isinstance(v, dict)}), flush=True)
    if args.dispatch_runs:
        with contextlib.redirect_stdout(sys.stderr):  # Ray's warnings: not into the JSON
            stats = bench_dispatch(args.dispatch_runs, args.dispatch_nodes,
                                   args.dispatch_gpus_per_node, work)
        put("dispatch_per_s", stats["runs"], stats["per_s"])
        put("dispatch_wall_s", stats["runs"], stats["wall_s"])
        put("dispatch_driver_cpu_ms_per_run", stats["runs"], stats["driver_cpu_ms_per_run"])
        figures["dispatch_cluster"] = (f"{args.dispatch_nodes} nodes x "
                                       f"{args.dispatch_gpus_per_node} logical GPUs, "
                                       f"{stats['ok']} of {stats['runs']} runs ok")
    if not args.workdir:
        shutil.rmtree(work)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
