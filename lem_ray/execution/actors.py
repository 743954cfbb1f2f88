"""The Ray actor wrappers: the worker holds the GPUs, the sampler sits beside it."""

from __future__ import annotations

import dataclasses
from typing import Any

import ray

from lem_ray.execution.worker import ExperimentWorker
from lem_ray.telemetry.sampler import EnergySampler

WorkerActor = ray.remote(max_restarts=0, max_task_retries=0)(ExperimentWorker)


@ray.remote(num_cpus=0, max_concurrency=4)
class SamplerActor:
    """Needs no CPU of its own: its thread sleeps between 100 ms samples."""

    def __init__(
        self, gpu_uuids: list[str], sample_interval_ms: float, no_gpu_reason: str | None
    ) -> None:
        self.sampler = EnergySampler(gpu_uuids, sample_interval_ms=sample_interval_ms)
        self.no_gpu_reason = no_gpu_reason
        self.sampler.start()

    def begin(self, name: str) -> None:
        self.sampler.begin(name)

    def end(self, name: str) -> Any:
        window = self.sampler.end(name)
        if self.no_gpu_reason and window.energy_j is None:
            return dataclasses.replace(window, unavailable_reason=self.no_gpu_reason)
        return window

    def finish(self) -> dict[str, Any]:
        self.sampler.stop()
        return {
            "timeseries": self.sampler.timeseries(),
            "environment": self.sampler.environment(),
            "sampler_cpu_s": self.sampler.sampler_cpu_s(),
        }
