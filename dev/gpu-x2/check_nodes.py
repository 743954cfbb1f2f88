"""Checks a campaign run on a local multi-node cluster against the nodes' own GPUs.

    python3 dev/gpu-x2/check_nodes.py RESULTS_DIR LEMRAY_LOCAL_DIR [--out check.json]

Independent of lem-ray's own GPU resolution: each raylet of the cluster in LEMRAY_LOCAL_DIR
(found by its command line) names its node id and carries the CUDA_VISIBLE_DEVICES that
cluster/local.sh gave it; nvidia-smi maps those indices to UUIDs. For every ok row: the node it
ran on, the GPU UUIDs it recorded, those the node was given, and the energy the sampler
measured per GPU. Also whether runs on different nodes measured at the same time. Exit 1 when
a row's GPUs are not its node's, or when no two nodes ran.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import psutil


def raylets(local_dir: str) -> dict[str, str | None]:
    """node id -> CUDA_VISIBLE_DEVICES of that node's raylet (None: not set, logical GPUs)."""
    found: dict[str, str | None] = {}
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if not args or not args[0].endswith("raylet") or not any(local_dir in a for a in args):
            continue
        node = next((a.split("=", 1)[1] for a in args if a.startswith("--node_id=")), None)
        if node:
            found[node] = proc.environ().get("CUDA_VISIBLE_DEVICES")
    return found


def smi_uuids() -> dict[str, str]:
    """Physical GPU index -> UUID, from nvidia-smi; empty where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return dict(line.split(", ", 1) for line in out.strip().splitlines())


def overlaps(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of runs on different nodes whose measured windows overlapped in time."""
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if (
                a["node_id"] != b["node_id"]
                and a["measure_start_epoch_s"] < b["measure_end_epoch_s"]
                and b["measure_start_epoch_s"] < a["measure_end_epoch_s"]
            ):
                pairs.append((a["run_id"], b["run_id"]))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("results_dir")
    parser.add_argument("local_dir")
    parser.add_argument("--out", default="check.json")
    args = parser.parse_args()
    from lem_ray.results.store import read_table

    nodes = raylets(args.local_dir)
    smi = smi_uuids()
    rows = [
        r for r in read_table(args.results_dir, "experiments").to_pylist() if r["status"] == "ok"
    ]
    problems, table = [], []
    for r in rows:
        visible = nodes.get(r["node_id"], "?")
        given = (
            [smi.get(i.strip()) for i in visible.split(",")]
            if smi and visible not in (None, "?")
            else None
        )
        energy = json.loads(r["energy_by_gpu_json"] or "{}")
        entry = {"run_id": r["run_id"], "node_id": r["node_id"][:12], "node_cuda_visible": visible,
                 "row_gpu_uuids": r["gpu_uuids"], "node_gpu_uuids": given,
                 "energy_by_gpu_j": energy, "energy_j": r["energy_j"],
                 "window": [r["measure_start_epoch_s"], r["measure_end_epoch_s"]]}
        table.append(entry)
        if visible == "?":
            problems.append(
                f"{r['run_id']}: node {r['node_id'][:12]} is not a raylet of {args.local_dir}"
            )
        elif given is not None and sorted(r["gpu_uuids"] or []) != sorted(given):
            problems.append(f"{r['run_id']}: recorded {r['gpu_uuids']}, its node was given {given}")
        elif given is not None and sorted(energy) != sorted(given):
            problems.append(
                f"{r['run_id']}: energy measured on {sorted(energy)}, its node has {given}"
            )
    ran_on = {r["node_id"] for r in rows}
    if len(ran_on) < 2:
        problems.append(f"the ok runs used {len(ran_on)} node(s), not 2 or more")
    together = overlaps(rows)
    report = {"nodes": nodes, "nvidia_smi": smi, "runs": table, "overlapping_pairs": together,
              "gpu_check": "nvidia-smi" if smi else "skipped: no nvidia-smi (logical GPUs)",
              "problems": problems}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    for e in table:
        print(
            f"{e['run_id']}  node {e['node_id']}  CUDA_VISIBLE_DEVICES={e['node_cuda_visible']}  "
            f"row {e['row_gpu_uuids']}  node's {e['node_gpu_uuids']}  "
            f"energy_j {e['energy_by_gpu_j']}"
        )
    print(f"{len(rows)} ok runs on {len(ran_on)} nodes; {len(together)} pairs measured at the same "
          f"time on different nodes; GPU check: {report['gpu_check']}")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
