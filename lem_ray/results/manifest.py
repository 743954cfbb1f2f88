"""The manifest on disk: the state of every planned run, rewritten whole on each change.

One small JSON file (`<results_dir>/manifest/state.json`), replaced atomically, so a restarted
manifest actor or a new driver reads exactly what was acknowledged. A campaign of thousands of
runs keeps it well under a megabyte; each write costs milliseconds against runs of minutes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from lem_ray.records import RunKey
from lem_ray.results.store import atomic_write, exists, resolve

MANIFEST_DIR = "manifest"
STATE_FILE = "state.json"
STATES = ("pending", "running", "ok", "failed", "interrupted")
# A run in one of these is owed another attempt by the next driver.
UNFINISHED = ("pending", "running", "interrupted")


def load_manifest(results_dir: str | Path) -> dict[str, Any]:
    """{'campaign_name': ..., 'runs': {run_id: entry}}, empty when nothing was saved yet."""
    if not exists(results_dir, f"{MANIFEST_DIR}/{STATE_FILE}"):
        return {"campaign_name": None, "runs": {}}
    fs, base = resolve(results_dir)
    with fs.open_input_stream(f"{base}/{MANIFEST_DIR}/{STATE_FILE}") as stream:
        return json.loads(stream.read().decode())


def save_manifest(results_dir: str | Path, manifest: dict[str, Any]) -> None:
    payload = json.dumps(manifest, indent=1, sort_keys=True).encode()

    def write(path: str, fs: Any) -> None:
        with fs.open_output_stream(path) as stream:
            stream.write(payload)

    atomic_write(results_dir, MANIFEST_DIR, STATE_FILE, write)


def new_entry(experiment_id: str, cycle: int) -> dict[str, Any]:
    return {
        "experiment_id": experiment_id,
        "cycle": cycle,
        "state": "pending",
        "attempt": 0,
        "node_id": None,
        "gpu_ids": [],
        "error": None,
        "updated_at": time.time(),
    }


def reconcile(runs: dict[str, dict[str, Any]], experiments: pa.Table) -> bool:
    """Mark ok the runs whose ok row is on disk but whose ok never reached the manifest
    (the driver died between the two), and record attempts the manifest missed.
    True when anything changed."""
    changed = False
    for row in experiments.select(["experiment_id", "cycle", "attempt", "status", "error"]).to_pylist():
        key = RunKey(row["experiment_id"], row["cycle"]).run_id
        entry = runs.setdefault(key, new_entry(row["experiment_id"], row["cycle"]))
        if row["attempt"] > entry["attempt"]:
            entry["attempt"] = row["attempt"]
            changed = True
        if row["status"] == "ok" and entry["state"] != "ok":
            entry.update(state="ok", error=None, updated_at=time.time())
            changed = True
    return changed
