"""Run entries of the manifest and how they are read back; the files are in journal.py.

`load_manifest` is what a reader (`lem-ray status`, a test) uses: no Ray, just the files. It
reads both the journaled format and the single `state.json` of results written before it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from lem_ray.errors import ConfigError
from lem_ray.records import RunKey
from lem_ray.results.journal import ManifestCorrupt, read_state

STATES = ("pending", "running", "ok", "failed", "interrupted", "lost")
# A run in one of these is owed another attempt by the next driver. `lost`: it ended ok, but
# its ok experiments row is no longer readable (a file deleted, truncated, damaged).
UNFINISHED = ("pending", "running", "interrupted", "lost")
ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "experiment_id": (str,), "cycle": (int,), "state": (str,), "attempt": (int,),
    "updated_at": (int, float),
}


class ManifestDamaged(ConfigError):
    """The manifest's files are not what lem-ray wrote: `lem-ray campaign` rebuilds them from
    the dataset (results/repair.py)."""


def load_manifest(results_dir: str | Path) -> dict[str, Any]:
    """{'campaign_name': ..., 'runs': {run_id: entry}}, empty when nothing was saved yet.

    A manifest that is not what lem-ray writes is ManifestDamaged, one that cannot be read
    (no permission, storage down) a ConfigError, both naming it: status and the campaign's
    checks before Ray say so in one line."""
    try:
        manifest = read_state(results_dir).as_dict()
    except ManifestCorrupt as exc:
        raise ManifestDamaged(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the manifest ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:120]})", file=str(results_dir)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestDamaged(f"cannot read the manifest ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:120]})",
                              file=str(results_dir)) from None
    problem = _shape_problem(manifest)
    if problem:
        raise ManifestDamaged(f"not a lem-ray manifest: {problem}", file=str(results_dir))
    return manifest


def _shape_problem(manifest: dict[str, Any]) -> str | None:
    if manifest["campaign_name"] is not None and not isinstance(manifest["campaign_name"], str):
        return f"campaign_name is {manifest['campaign_name']!r}"
    if not isinstance(manifest["runs"], dict):
        return "runs is not an object"
    for key, entry in manifest["runs"].items():
        if not isinstance(entry, dict):
            return f"run {key!r} is not an object"
        for name, kinds in ENTRY_TYPES.items():
            if not isinstance(entry.get(name), kinds) or isinstance(entry.get(name), bool):
                return f"run {key!r}: {name} is {entry.get(name)!r}"
        if entry["state"] not in STATES:
            return f"run {key!r}: unknown state {entry['state']!r}"
    return None


def new_entry(experiment_id: str, cycle: int) -> dict[str, Any]:
    """A pending run's manifest entry."""
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


RECONCILE_COLUMNS = ["experiment_id", "cycle", "attempt", "status"]
"""The experiments columns reconcile reads: a reader may read only these."""


def reconcile(
    runs: dict[str, dict[str, Any]], experiments: pa.Table
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """What the manifest missed, from the readable rows: (runs to add, {run: fields to set}).

    The dataset is the truth, both ways. A run whose latest attempt's ok row is on disk but
    whose ok never reached the manifest (the driver died between the two) becomes ok; an
    attempt the manifest missed is recorded; a run the manifest says ok whose latest attempt
    has no readable ok row is `lost`, and the next campaign runs it again.
    """
    added: dict[str, dict[str, Any]] = {}
    changes: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}
    for row in experiments.select(RECONCILE_COLUMNS).to_pylist():
        key = RunKey.of_row(row).run_id
        if key not in latest or row["attempt"] > latest[key]["attempt"]:
            latest[key] = row
    for key, row in latest.items():
        if key not in runs:
            added[key] = new_entry(row["experiment_id"], row["cycle"])
        entry = runs.get(key) or added[key]
        change: dict[str, Any] = {}
        if row["attempt"] > entry["attempt"]:
            change["attempt"] = row["attempt"]
        if row["status"] == "ok" and row["attempt"] >= entry["attempt"] and entry["state"] != "ok":
            change.update(state="ok", error=None, updated_at=time.time())
        if change:
            changes[key] = change
    for key, entry in {**runs, **added}.items():
        entry = {**entry, **changes.get(key, {})}
        row = latest.get(key)
        if entry["state"] == "ok" and (row is None or row["status"] != "ok"
                                       or row["attempt"] != entry["attempt"]):
            changes.setdefault(key, {}).update(
                state="lost", updated_at=time.time(),
                error=f"lost: the ok row of attempt {entry['attempt']} is missing or unreadable "
                      "in the experiments table")
    return added, changes


def reconciled(manifest: dict[str, Any], experiments: pa.Table) -> dict[str, dict[str, Any]]:
    """The manifest's runs as the dataset shows them (reconcile applied), changing nothing:
    what `status` and `report` show without Ray, while the next driver records it."""
    added, changes = reconcile(manifest["runs"], experiments)
    runs = {**manifest["runs"], **added}
    return {key: {**entry, **changes.get(key, {})} for key, entry in runs.items()}
