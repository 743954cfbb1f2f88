"""The manifest actor: one per campaign, named and detached, the single source of truth of
what is done. Every change is saved to the results directory before it is acknowledged."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lem_ray.records import RunKey
from lem_ray.results.manifest import (
    STATES,
    load_manifest,
    new_entry,
    reconcile,
    save_manifest,
)
from lem_ray.results.store import read_table, resolve

NAMESPACE = "lem-ray"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class ManifestActor:
    """Restarted by Ray if its process dies; it then rebuilds its state from disk."""

    def __init__(self, results_dir: str, campaign_name: str) -> None:
        self.results_dir = results_dir
        self.manifest = load_manifest(results_dir)
        self.manifest["campaign_name"] = campaign_name
        if reconcile(self.manifest["runs"], read_table(results_dir, "experiments")):
            save_manifest(results_dir, self.manifest)

    def register(self, runs: list[tuple[str, int]]) -> dict[str, dict[str, Any]]:
        """Add the plan's runs not yet known (a changed grid adds, never removes)."""
        known = self.manifest["runs"]
        added = False
        for experiment_id, cycle in runs:
            key = RunKey(experiment_id, cycle).run_id
            if key not in known:
                known[key] = new_entry(experiment_id, cycle)
                added = True
        if added:
            save_manifest(self.results_dir, self.manifest)
        return known

    def update(self, key: str, **fields: Any) -> dict[str, Any]:
        if fields.get("state", STATES[0]) not in STATES:
            raise ValueError(f"unknown run state {fields['state']!r}")
        entry = self.manifest["runs"][key]
        entry.update(fields, updated_at=time.time())
        save_manifest(self.results_dir, self.manifest)
        return dict(entry)

    def snapshot(self) -> dict[str, Any]:
        return self.manifest


def manifest_name(campaign_name: str, results_dir: str) -> str:
    fs, base = resolve(results_dir)
    digest = hashlib.sha256(f"{fs.type_name}:{base}".encode()).hexdigest()[:10]
    return f"manifest:{campaign_name}:{digest}"


def open_manifest(campaign_name: str, results_dir: str) -> Any:
    """The campaign's manifest actor: the live one if a previous driver left it, else a new one
    on this (the driver's) node, where a local results directory is."""
    return ManifestActor.options(
        name=manifest_name(campaign_name, results_dir),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        ),
    ).remote(results_dir, campaign_name)


def close_manifest(campaign_name: str, results_dir: str) -> None:
    """A finished (or moved-aside) campaign needs no live manifest: its state is on disk."""
    try:
        actor = ray.get_actor(manifest_name(campaign_name, results_dir), namespace=NAMESPACE)
    except ValueError:
        return
    ray.kill(actor, no_restart=True)
