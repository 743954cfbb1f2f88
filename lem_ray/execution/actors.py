"""The Ray actor wrappers: the worker holds the GPUs, the sampler sits beside it."""

from __future__ import annotations

from typing import Any

import ray

from lem_ray.execution.worker import ExperimentWorker
from lem_ray.telemetry.sampler import EnergySampler

WorkerActor = ray.remote(max_restarts=0, max_task_retries=0)(ExperimentWorker)


@ray.remote(num_cpus=0, max_concurrency=4)
class SamplerActor:
    """Needs no CPU of its own: its thread sleeps between 100 ms samples."""

    def __init__(self, gpu_uuids: list[str], sample_interval_ms: float) -> None:
        self.sampler = EnergySampler(gpu_uuids, sample_interval_ms=sample_interval_ms)
        self.sampler.start()

    def status(self) -> tuple[str | None, str | None]:
        return self.sampler.energy_source, self.sampler.unavailable_reason

    def begin(self, name: str) -> None:
        self.sampler.begin(name)

    def end(self, name: str) -> Any:
        return self.sampler.end(name)

    def finish(self) -> dict[str, Any]:
        self.sampler.stop()
        return {
            "timeseries": self.sampler.timeseries(),
            "environment": self.sampler.environment(),
            "sampler_cpu_s": self.sampler.sampler_cpu_s(),
        }
