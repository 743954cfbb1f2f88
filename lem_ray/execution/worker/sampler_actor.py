"""The sampler actor: beside the worker, on the worker's GPUs, kept for as long as the worker;
and the worker's view of it as the measurement protocol's GpuSampler."""

from __future__ import annotations

from typing import Any

import ray

from lem_ray.execution.metrics import GpuPublisher
from lem_ray.measure.sampler import RunSampler, SamplerReport
from lem_ray.records import host_key
from lem_ray.telemetry.rapl import HostEnergy
from lem_ray.telemetry.sampler import EnergySampler, WindowResult

SAMPLER_CONCURRENCY = 4
"""Calls the sampler actor serves at once (set where the worker starts it)."""


class GpuSamplerActor(RunSampler):
    """A RunSampler whose run's power and temperature may also go to Ray's metrics."""

    def __init__(
        self, gpu_uuids: list[str], sample_interval_ms: float, no_gpu_reason: str | None,
        node_id: str | None = None,
    ) -> None:
        super().__init__(EnergySampler(gpu_uuids, sample_interval_ms=sample_interval_ms,
                                       host=HostEnergy(), host_key=host_key(node_id)),
                         no_gpu_reason)
        self.publisher: GpuPublisher | None = None

    def start(self, metric_tags: dict[str, str] | None = None) -> None:
        """Begin a run's series; with metric_tags, its power and temperature go to Ray's
        metrics under those tags too."""
        if metric_tags:
            if self.publisher is None:
                self.publisher = GpuPublisher(ray.util.get_node_ip_address())
                self.sampler.on_sample = self.publisher
            self.publisher.begin(metric_tags)
        super().start()

    def finish(self) -> SamplerReport:
        """The run's series, and its metrics publishing ended."""
        found = super().finish()
        if self.publisher is not None:
            self.publisher.end()
        return found


SamplerActor = ray.remote(num_cpus=0)(GpuSamplerActor)
"""Needs no CPU of its own: its thread sleeps between samples."""


class ActorSampler:
    """The sampler actor seen through ray.get: the measurement protocol's GpuSampler."""

    def __init__(self, actor: Any, gpu_uuids: list[str], node_id: str | None) -> None:
        self.actor = actor
        self.gpu_uuids = list(gpu_uuids)
        self.host_key = host_key(node_id)

    def cool_down(self, target_temp_c: float, max_wait_s: float) -> tuple[float, float | None]:
        """Wait, in the actor, for the GPUs to cool to target_temp_c, at most max_wait_s."""
        found: tuple[float, float | None] = ray.get(
            self.actor.cool_down.remote(target_temp_c, max_wait_s))
        return found

    def baseline(
        self, known: dict[str, dict[str, Any]], duration_s: float, ttl_s: float,
        host_idle: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Idle baselines of the GPUs whose known one is older than ttl_s."""
        found: dict[str, dict[str, Any]] = ray.get(
            self.actor.baseline.remote(known, duration_s, ttl_s, host_idle))
        return found

    def begin(self, name: str) -> None:
        """Open the named window at the counters' readings."""
        ray.get(self.actor.begin.remote(name))

    def end(self, name: str) -> WindowResult:
        """Close the named window: its energy and samples."""
        window: WindowResult = ray.get(self.actor.end.remote(name))
        return window

    def start(self, metric_tags: dict[str, str] | None = None) -> None:
        """Begin the run's series (and its metrics, with metric_tags)."""
        ray.get(self.actor.start.remote(metric_tags))

    def finish(self) -> SamplerReport:
        """The run's series, handed over as it ends."""
        report: SamplerReport = ray.get(self.actor.finish.remote())
        return report
