"""Slots: a placement group holding whole GPUs on one node, with a worker in it that keeps
its engines between runs. The driver opens, reuses, recycles and closes them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from lem_ray.execution.worker.actors import WorkerActor
from lem_ray.execution.worker.handoff import WorkerIdentity

# How long closing or recycling a slot waits for Ray to report its killed worker dead.
EXIT_WAIT_S = 10.0


@dataclass
class Slot:
    """A placement group holding GPUs on one node, with the worker actor that runs there."""

    slot_id: int
    gpus: int
    """GPUs held (0 on a cluster without GPUs: the slot then holds one CPU)."""
    node: str
    pg: PlacementGroup
    runtime_env: dict[str, Any] | None = None
    """The backend's Ray runtime_env for the worker (its sampler inherits it); None: the job's."""
    kind: str = ""
    sample_interval_ms: float | None = None
    """Given: each worker of the slot starts its sampler as it starts (the campaign's interval)."""
    worker: Any = None
    engines: list[str] = field(default_factory=list)
    """Engine keys its worker holds, least recently used first (as the worker last said)."""
    used: bool = False
    """A worker of this slot has loaded an engine: its process has touched the GPUs."""
    uuids: list[str] = field(default_factory=list)
    identity: WorkerIdentity | None = None
    run: Any = None
    """The RunTask in progress, or None when idle."""
    ref: Any = None
    started_s: float = 0.0
    ready_s: float = 0.0
    """When its worker was last seen up (its start request answered)."""
    est_s: float | None = None
    deadline_s: float | None = None
    timeout_s: float | None = None
    starting: Any = None
    """The new worker's identify() call: a run's timeout counts from the worker's start."""

    @property
    def units(self) -> int:
        """What the slot counts for: its GPUs, or 1 for a CPU slot."""
        return self.gpus or 1

    @classmethod
    def open(cls, slot_id: int, gpus: int, node: str, name: str,
             runtime_env: dict[str, Any] | None = None, kind: str = "",
             sample_interval_ms: float | None = None) -> Slot:
        """Reserve the GPUs (Ray grants them when free; node is a soft target) and start a
        worker in them, and its sampler when the interval is given; calls to the worker wait
        for both."""
        bundle = {"CPU": 1, "GPU": gpus} if gpus else {"CPU": 1}
        # _soft_target_node_id: the node the driver's own accounting chose, so runs of
        # several GPUs find their node free; Ray places the group elsewhere if it must.
        pg = placement_group([bundle], strategy="STRICT_PACK", name=name,
                             _soft_target_node_id=node if gpus else None)
        slot = cls(slot_id, gpus, node, pg, runtime_env, kind, sample_interval_ms)
        slot.start_worker()
        return slot

    def start_worker(self) -> None:
        """Start the worker actor on the slot's placement group."""
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=0)
        env = {"runtime_env": self.runtime_env} if self.runtime_env else {}
        self.worker = WorkerActor.options(
            num_cpus=1, num_gpus=self.gpus, scheduling_strategy=strategy, **env
        ).remote(self.sample_interval_ms)
        self.starting = self.worker.identify.remote()
        self.engines, self.used = [], False

    def recycle(self) -> None:
        """A fresh worker process on the same GPUs (its CUDA context and engine gone)."""
        ray.kill(self.worker, no_restart=True)
        _wait_gone(self.worker)
        self.start_worker()

    def submit(self, task: Any, request: Any, now_s: float, timeout_s: float | None) -> None:
        """Hand the worker a run; its clock starts now unless the worker is still starting."""
        self.run, self.started_s, self.timeout_s = task, now_s, timeout_s
        self.ref = self.worker.run.remote(request)
        if self.starting is None:
            self.started(now_s)

    def started(self, now_s: float) -> None:
        """The worker is up: the run in it (if any) has from now on to finish."""
        self.starting, self.ready_s = None, now_s
        if self.run is not None and self.timeout_s is not None:
            self.deadline_s = now_s + self.timeout_s

    def finish(self) -> None:
        """Forget the run: the slot is idle again."""
        self.run = self.ref = self.deadline_s = self.timeout_s = None

    def close(self) -> None:
        """Stop the worker (its sampler with it) and give the GPUs back."""
        if self.worker is not None:
            ray.kill(self.worker, no_restart=True)
            _wait_gone(self.worker)
            self.worker = None
        remove_placement_group(self.pg)


def _wait_gone(worker: Any) -> None:
    """Hold the handle of a worker just killed until Ray reports it dead (a call to it fails),
    at most EXIT_WAIT_S. Dropped before the kill lands, the handle's going out of scope ends
    the worker instead: it then exits on its own, through its Python clean-up, where the
    SIGTERM Ray sends when its placement group goes printed "ActorHandle.__del__ ...
    SystemExit" tracebacks to the driver's terminal."""
    deadline_s = time.monotonic() + EXIT_WAIT_S
    while (left_s := deadline_s - time.monotonic()) > 0:
        try:
            ray.get(worker.identify.remote(), timeout=left_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
