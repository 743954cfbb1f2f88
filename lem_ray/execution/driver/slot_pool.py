"""The slots a campaign holds, one per set of GPUs in use (never one per pending run), and
what the driver knows of its cluster: the nodes' GPUs and when each GPU's idle baseline was
last measured."""

from __future__ import annotations

import time
from typing import Any

import ray

from lem_ray.config.campaign import BaselineConfig
from lem_ray.execution.driver.cluster import node_gpus
from lem_ray.execution.driver.policy import SlotView
from lem_ray.execution.driver.run_queue import RunTask
from lem_ray.execution.driver.slots import Slot
from lem_ray.execution.worker.handoff import RunOutcome

CPU_NODE = "cpu"
"""On a cluster without GPUs, runs go one at a time, so none disturbs another: one slot."""


class SlotPool:
    """Opens, recycles and closes slots; knows which are running what."""

    def __init__(self, campaign: str, has_gpus: bool, sample_interval_ms: float | None) -> None:
        self.campaign = campaign
        self.has_gpus = has_gpus
        self.sample_interval_ms = sample_interval_ms
        self.slots: dict[int, Slot] = {}
        self.slot_ids = 0
        self.baseline_at: dict[str, float] = {}
        self.nodes = self.look()

    def look(self) -> dict[str, int]:
        """The cluster's nodes and their GPUs, as Ray sees them now."""
        self.nodes = node_gpus() if self.has_gpus else {CPU_NODE: 1}
        return self.nodes

    def open(self, task: RunTask, units: int, node: str) -> Slot:
        """A new slot for this run's kind of worker, on (preferably) this node."""
        self.slot_ids += 1
        slot = Slot.open(self.slot_ids, units if self.has_gpus else 0, node,
                         f"lem-ray:{self.campaign}:{self.slot_ids}", task.env.ray_runtime_env(),
                         task.kind, self.sample_interval_ms)
        self.slots[slot.slot_id] = slot
        return slot

    def close(self, slot_id: int) -> None:
        """Give an idle slot's GPUs back."""
        self.slots.pop(slot_id).close()

    def drop(self, slot: Slot) -> None:
        """A dead worker's slot goes; its node may have gone too, so look at the cluster again."""
        self.slots.pop(slot.slot_id, None)
        slot.close()
        self.look()

    def close_all(self) -> None:
        """The campaign is over: every worker stops and every GPU goes back."""
        for slot in list(self.slots.values()):
            slot.close()
        self.slots.clear()

    def running(self) -> list[Slot]:
        """The slots with a run in progress."""
        return [s for s in self.slots.values() if s.run is not None]

    def running_cycles(self) -> set[int]:
        """The cycles of the runs in progress."""
        return {s.run.ids.key.cycle for s in self.running()}

    def held_engines(self) -> set[str]:
        """Engine keys some worker holds: a run of one of them starts warm."""
        return {engine for s in self.slots.values() for engine in s.engines}

    def views(self) -> list[SlotView]:
        """The slots as the policy sees them."""
        return [SlotView(s.slot_id, s.node, s.units, tuple(s.engines), s.run is not None,
                         s.started_s, s.est_s, s.kind) for s in self.slots.values()]

    def busy(self) -> dict[Any, Slot]:
        """The slots running a run, by the reference its result comes back on."""
        return {s.ref: s for s in self.slots.values() if s.ref is not None}

    def starting(self) -> dict[Any, Slot]:
        """The slots whose worker is starting, by the reference of its first answer."""
        return {s.starting: s for s in self.slots.values() if s.starting is not None}

    def overdue(self, now_s: float) -> list[Slot]:
        """The slots whose run is past its deadline."""
        return [s for s in self.slots.values() if s.deadline_s and s.deadline_s < now_s]

    def baseline_due(self, slot: Slot, baseline: BaselineConfig) -> bool:
        """Some GPU of the slot has no idle baseline younger than baseline.ttl_s."""
        if not baseline.enabled or not slot.uuids:
            return False
        now = time.time()
        return any(now - self.baseline_at.get(u, -float("inf")) > baseline.ttl_s
                   for u in slot.uuids)

    def learn(self, slot: Slot, out: RunOutcome) -> None:
        """What a finished run told of its worker: where it is, what it holds, which GPUs'
        baselines it measured."""
        identity = out.identity
        slot.identity, slot.uuids, slot.used = identity, identity.gpu_uuids, True
        if self.has_gpus and identity.node_id:
            slot.node = identity.node_id
        slot.engines = list(out.engines)
        for gpu, entry in out.conditions.baselines.items():
            self.baseline_at[gpu] = entry["measured_at_s"]

    def stop_running(self) -> list[RunTask]:
        """Stop every worker with a run at once (Ctrl-C); the runs they were running."""
        running = self.running()
        for slot in running:
            ray.kill(slot.worker, no_restart=True)
        tasks = [slot.run for slot in running]
        for slot in running:
            slot.finish()
        return tasks
