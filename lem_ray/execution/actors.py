"""The Ray actor wrappers: the worker holds the GPUs; baselines outlive workers."""

from __future__ import annotations

from typing import Any

import ray

from lem_ray.execution.node_runs import NodeRuns
from lem_ray.execution.worker import ExperimentWorker

WorkerActor = ray.remote(max_restarts=0, max_task_retries=0)(ExperimentWorker)


@ray.remote(num_cpus=0)
class BaselineCache:
    """Idle baselines by GPU UUID (and of each node's host), kept for the whole campaign while
    workers come and go; with the runs active on each node, whose host energy they share."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.node_runs = NodeRuns()

    def run_started(self, node_id: str, token: str, t_s: float) -> None:
        """Note a run starting on a node; `token` names it until run_ended()."""
        self.node_runs.started(node_id, token, t_s)

    def run_ended(self, token: str, t_s: float) -> None:
        """Note a run ending."""
        self.node_runs.ended(token, t_s)

    def sharing(self, node_id: str, token: str, start_s: float, end_s: float) -> int:
        """How many other runs overlapped the window on this node."""
        return self.node_runs.sharing(node_id, token, start_s, end_s)

    def active(self, node_id: str, token: str, t_s: float) -> int:
        """How many other runs are active on this node at `t_s`."""
        return self.node_runs.active(node_id, token, t_s)

    def get(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        """The cached baselines of these GPUs (those that have one)."""
        return {u: self.entries[u] for u in uuids if u in self.entries}

    def put(self, entries: dict[str, dict[str, Any]]) -> None:
        """Cache baselines by GPU UUID, replacing older ones."""
        self.entries.update(entries)
