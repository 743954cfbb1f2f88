"""The sampler actor: beside the worker, on the worker's GPUs, kept for as long as the worker."""

from __future__ import annotations

import dataclasses
from typing import Any

import ray

from lem_ray.execution.handoff import SamplerReport
from lem_ray.execution.metrics import GpuPublisher
from lem_ray.records import host_key
from lem_ray.telemetry.rapl import HostEnergy
from lem_ray.telemetry.sampler import EnergySampler


@ray.remote(num_cpus=0, max_concurrency=4)
class SamplerActor:
    """Needs no CPU of its own: its thread sleeps between samples. One run at a time:
    start() begins a run's series, finish() hands it over and clears it for the next run."""

    def __init__(
        self, gpu_uuids: list[str], sample_interval_ms: float, no_gpu_reason: str | None,
        node_id: str | None = None,
    ) -> None:
        self.sampler = EnergySampler(gpu_uuids, sample_interval_ms=sample_interval_ms,
                                     host=HostEnergy(), host_key=host_key(node_id))
        self.no_gpu_reason = no_gpu_reason
        self.compute_pids: dict[str, list[int]] = {}
        self.cpu_s_before = 0.0
        self.publisher: GpuPublisher | None = None

    def baseline(
        self, known: dict[str, dict[str, Any]], duration_s: float, ttl_s: float,
        host_idle: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Idle power per GPU and of the host: the cached values still fresh, the rest measured now.

        Called before the worker loads anything, so the GPUs are idle (the driver gives a
        worker that has held an engine a fresh process before a baseline falls due); the host
        is measured only when host_idle (no other run active on the node).
        """
        self.sampler.baseline_ttl_s = ttl_s
        self.sampler.load_baselines(known)
        return self.sampler.measure_idle_baseline(
            duration_s=duration_s, interval_ms=self.sampler.sample_interval_s * 1000,
            host=host_idle,
        )

    def cool_down(self, target_temp_c: float, max_wait_s: float) -> tuple[float, float | None]:
        """(seconds waited, hottest GPU's temperature at the end)."""
        return self.sampler.wait_until_cool(target_temp_c, max_wait_s)

    def start(self, metric_tags: dict[str, str] | None = None) -> None:
        """Begin a run's series; with metric_tags, its power and temperature go to Ray's
        metrics under those tags too."""
        if metric_tags:
            if self.publisher is None:
                self.publisher = GpuPublisher(ray.util.get_node_ip_address())
                self.sampler.on_sample = self.publisher
            self.publisher.begin(metric_tags)
        self.sampler.start()

    def begin(self, name: str) -> None:
        self.sampler.begin(name)

    def end(self, name: str) -> Any:
        window = self.sampler.end(name)
        self.compute_pids[name] = sorted(
            {pid for env in self.sampler.environment().values()
             for pid in env.get("compute_process_pids") or []}
        )
        if self.no_gpu_reason and window.energy_j is None:
            return dataclasses.replace(window, unavailable_reason=self.no_gpu_reason)
        return window

    def finish(self) -> SamplerReport:
        """The run's series and conditions; the sampler is then ready for the next run."""
        self.sampler.stop()
        if self.publisher is not None:
            self.publisher.end()
        cpu_s = self.sampler.sampler_cpu_s()
        found = SamplerReport(
            timeseries=self.sampler.timeseries(),
            environment=self.sampler.environment(),
            sampler_cpu_s=cpu_s - self.cpu_s_before,
            compute_pids=self.compute_pids,
            sample_interval_s=self.sampler.sample_interval_s,
        )
        self.sampler.clear_timeseries()
        self.compute_pids = {}
        self.cpu_s_before = cpu_s
        return found
