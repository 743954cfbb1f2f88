"""The manifest actor: one per campaign, named and detached, the single source of truth of
what is done. Every change is durable in the results directory before it is acknowledged."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import ray

from lem_ray.execution.driver.cluster import on_driver_node
from lem_ray.records import RunKey
from lem_ray.results.journal import ManifestStore
from lem_ray.results.manifest import RECONCILE_COLUMNS, STATES, new_entry, reconcile
from lem_ray.results.store import read_table, resolve

NAMESPACE = "lem-ray"
# Run threads of the driver call update() at once; concurrent calls share one journal write.
CONCURRENT_CALLS = 64


# Ray's type hints omit max_concurrency from ray.remote's overloads, and type a decorated class as
# the class itself (no .remote/.options): the ignores here and at its uses are for that.
@ray.remote(  # type: ignore[call-overload]
    num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=CONCURRENT_CALLS
)
class ManifestActor:
    """Restarted by Ray if its process dies; it then rebuilds its state from disk."""

    def __init__(self, results_dir: str, campaign_name: str) -> None:
        self.results_dir = results_dir
        self.store = ManifestStore(results_dir)
        self.store.set_campaign(campaign_name)
        self._reconcile()
        self.fresh = True
        """Reconciled just now: the first register need not read the rows again."""

    def _reconcile(self) -> None:
        """Bring the manifest in line with the readable rows (manifest.reconcile)."""
        added, changes = reconcile(
            self.store.state.runs,
            read_table(self.results_dir, "experiments", columns=RECONCILE_COLUMNS),
        )
        self.store.add_runs(added)
        for key, fields in changes.items():
            self.store.set(key, fields)

    def register(self, runs: list[RunKey]) -> dict[str, dict[str, Any]]:
        """Add the plan's runs not yet known (a changed grid adds, never removes). An actor a
        previous driver left alive reconciles again: rows may have gone since it started."""
        if not self.fresh:
            self._reconcile()
        self.fresh = False
        self.store.add_runs({r.run_id: new_entry(r.experiment_id, r.cycle) for r in runs})
        return self.store.view()["runs"]

    def update(self, key: str, **fields: Any) -> dict[str, Any]:
        """Set fields of one run (its state checked) and return the run's entry."""
        if fields.get("state", STATES[0]) not in STATES:
            raise ValueError(f"unknown run state {fields['state']!r}")
        return self.store.set(key, {**fields, "updated_at": time.time()})

    def snapshot(self) -> dict[str, Any]:
        """The whole manifest, as status shows it."""
        return self.store.view()

    def close(self) -> None:
        """Fold the journal into one snapshot file before the actor goes away."""
        self.store.close()


def manifest_name(campaign_name: str, results_dir: str) -> str:
    """The actor's name: one per campaign and results directory."""
    fs, base = resolve(results_dir)
    digest = hashlib.sha256(f"{fs.type_name}:{base}".encode()).hexdigest()[:10]
    return f"manifest:{campaign_name}:{digest}"


def open_manifest(campaign_name: str, results_dir: str) -> Any:
    """The campaign's manifest actor: the live one if a previous driver left it, else a new one
    on this (the driver's) node, where a local results directory is."""
    return ManifestActor.options(  # type: ignore[attr-defined]  # Ray's type hints, see above
        name=manifest_name(campaign_name, results_dir),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=on_driver_node(),
    ).remote(absolute(results_dir), campaign_name)


def absolute(results_dir: str) -> str:
    """The actor's working directory is not the driver's: a relative path would put the
    manifest somewhere else than the results."""
    return results_dir if "://" in results_dir else str(Path(results_dir).expanduser().absolute())


def close_manifest(campaign_name: str, results_dir: str, fold: bool = True) -> None:
    """A finished (or moved-aside) campaign needs no live manifest: its state is on disk.
    fold: write the final snapshot first (not for results being moved aside)."""
    try:
        actor = ray.get_actor(manifest_name(campaign_name, results_dir), namespace=NAMESPACE)
    except ValueError:
        return
    if fold:
        ray.get(actor.close.remote())
    ray.kill(actor, no_restart=True)
