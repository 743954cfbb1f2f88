"""A run's sampler on a fixed set of GPUs, in this process: what the campaign's sampler actor
runs on its node, and what `lem_ray.measure.Meter` runs beside a notebook's model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lem_ray.telemetry.sampler import EnergySampler, WindowResult


@dataclass(frozen=True)
class SamplerReport:
    """The sampler's account of one run, taken when it stops."""

    timeseries: list[dict[str, Any]]
    environment: dict[str, dict[str, Any]]
    sampler_cpu_s: float
    compute_pids: dict[str, list[int]]
    sample_interval_s: float


class RunSampler:
    """One run at a time: start() begins a run's series, finish() hands it over and clears it
    for the next run. Satisfies lem_ray.measure.protocol.GpuSampler."""

    def __init__(self, sampler: EnergySampler, no_gpu_reason: str | None = None) -> None:
        self.sampler = sampler
        self.no_gpu_reason = no_gpu_reason
        """Said on every window without energy, in place of the sampler's own reason."""
        self.compute_pids: dict[str, list[int]] = {}
        self.cpu_s_before = 0.0

    @property
    def gpu_uuids(self) -> list[str]:
        """The sampled GPUs: the keys their idle baselines are cached under."""
        return self.sampler.gpu_uuids

    @property
    def host_key(self) -> str:
        """The key the host's idle baseline is cached under, beside the GPUs'."""
        return self.sampler.host_key

    def baseline(
        self, known: dict[str, dict[str, Any]], duration_s: float, ttl_s: float,
        host_idle: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Idle power per GPU and of the host: the known values still fresh, the rest measured now.

        Called before anything is loaded, so the GPUs are idle (the driver gives a worker
        that has held an engine a fresh process before a baseline falls due); the host is
        measured only when host_idle (no other run active on the node).
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

    def start(self) -> None:
        """Begin a run's series (the sampling thread; a no-op while it runs)."""
        self.sampler.start()

    def begin(self, name: str) -> None:
        """Open window `name`: its energy counts from here."""
        self.sampler.begin(name)

    def end(self, name: str) -> WindowResult:
        """The window's energy and conditions; the processes on the GPUs at its end are kept
        for the run's report."""
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
