"""The Ray actor wrappers: the worker holds the GPUs; baselines outlive workers."""

from __future__ import annotations

from typing import Any

import ray

from lem_ray.execution.worker import ExperimentWorker

WorkerActor = ray.remote(max_restarts=0, max_task_retries=0)(ExperimentWorker)


@ray.remote(num_cpus=0)
class BaselineCache:
    """Idle baselines by GPU UUID, kept for the whole campaign while workers come and go."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def get(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        return {u: self.entries[u] for u in uuids if u in self.entries}

    def put(self, entries: dict[str, dict[str, Any]]) -> None:
        self.entries.update(entries)
