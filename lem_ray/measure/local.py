"""lem-ray's measured window on this machine's GPUs, without Ray or a campaign: for a script or a
notebook. The sampling is the campaign's own (telemetry.EnergySampler in a RunSampler, here in
process instead of in an actor), and so are the protocol and the figures."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import Self

from lem_ray.measure.protocol import (
    Clock,
    GpuConditions,
    Measurement,
    MeasurementProtocol,
    MeasureSettings,
    figures_of,
    no_gc,
)
from lem_ray.measure.sampler import RunSampler, SamplerReport
from lem_ray.telemetry.nvml import (
    TelemetryError,
    device_count,
    nvml_status,
    uuids_for_indices,
)
from lem_ray.telemetry.rapl import HostEnergy
from lem_ray.telemetry.sampler import EnergySampler

if TYPE_CHECKING:
    from lem_ray.backends.base import Backend


class MeasureUnavailable(RuntimeError):
    """This machine cannot measure GPU energy; the message says why, on one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(" ".join(f"cannot measure GPU energy here: {reason}".split()))


def local_sampler(gpus: Sequence[int | str] | None = None,
                  sample_interval_ms: float = 100.0) -> RunSampler:
    """A sampler on these GPUs (NVML indices or GPU-... UUIDs; None: those CUDA_VISIBLE_DEVICES
    names, else every GPU), or MeasureUnavailable naming why it cannot be had."""
    usable, why = nvml_status()
    if not usable:
        raise MeasureUnavailable(why or "NVML sees no GPU")
    if gpus is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = ([g for g in visible.split(",") if g.strip()] if visible
                else list(range(device_count())))
    try:
        uuids = uuids_for_indices(gpus)
    except (TelemetryError, ValueError) as exc:
        raise MeasureUnavailable(str(exc)) from exc
    if not uuids:
        raise MeasureUnavailable("no GPU given (CUDA_VISIBLE_DEVICES is empty?)")
    sampler = EnergySampler(uuids, sample_interval_ms=sample_interval_ms, host=HostEnergy())
    if sampler.unavailable_reason:
        raise MeasureUnavailable(sampler.unavailable_reason)
    return RunSampler(sampler)


class Meter:
    """lem-ray's validated window on local GPUs, in the spirit of Zeus's ZeusMonitor.

    prepare() cools the GPUs down and takes their idle baseline: call it before loading the
    model. begin_window()/end_window() measure the code between them (synchronise the device
    before each, as the campaign does: torch.cuda.synchronize()); run() measures a lem-ray
    backend the way a campaign run does (warmup, measured window, prefill window). Each
    returns a Measurement, the record the campaign's rows are made from.
    """

    def __init__(
        self, gpus: Sequence[int | str] | None = None, settings: MeasureSettings | None = None,
        sample_interval_ms: float = 100.0, *, sampler: RunSampler | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.sampler = sampler or local_sampler(gpus, sample_interval_ms)
        self.settings = settings or MeasureSettings()
        self.clock = clock or Clock()
        self.conditions = GpuConditions()
        """The last prepare()'s: figures are adjusted by its baselines."""
        self._starts_s: dict[str, float] = {}

    @property
    def gpu_uuids(self) -> list[str]:
        """Which GPUs the figures cover (NVML UUIDs), for a notebook to record beside them."""
        return self.sampler.gpu_uuids

    def prepare(self) -> GpuConditions:
        """Cool down (settings.cooldown) and take the idle baseline (settings.baseline; kept
        for its ttl_s, so a second call within it does not wait again)."""
        self.conditions = MeasurementProtocol(self.sampler, self.settings, self.clock).prepare()
        return self.conditions

    def begin_window(self, name: str = "measure") -> None:
        """Open window `name` (windows may nest or overlap under different names)."""
        self.sampler.start()
        self.sampler.begin(name)
        self._starts_s[name] = self.clock.perf_s()

    def end_window(self, name: str = "measure", output_tokens: int = 0,
                   requests: int = 0) -> Measurement:
        """Close window `name`; output_tokens and requests are what the ratios divide by."""
        start_s = self._starts_s.pop(name)
        duration_s = self.clock.perf_s() - start_s
        epoch_minus_perf_s = self.clock.epoch_s() - self.clock.perf_s()
        window = self.sampler.end(name)
        return Measurement(
            conditions=self.conditions, records=[], measure_start_perf_s=start_s,
            duration_s=duration_s, epoch_minus_perf_s=epoch_minus_perf_s, warmup=None,
            warmup_window=None, measure_window=window, prefill=None,
            energy=figures_of(window, self.conditions, self.gpu_uuids, output_tokens, requests),
        )

    def run(self, backend: Backend[Any], prompts: list[str]) -> Measurement:
        """A campaign run's protocol on a backend not loaded yet: cool down, idle baseline,
        load and prepare it, warmup, measured window, prefill window. The backend stays
        loaded (release() it when done)."""
        protocol = MeasurementProtocol(self.sampler, self.settings, self.clock)
        self.conditions = protocol.prepare()
        backend.load()
        backend.prepare(prompts)
        backend.synchronize()
        self.sampler.start()
        with no_gc(freeze=False):
            return protocol.measure(backend, prompts, self.conditions)

    def finish(self) -> SamplerReport:
        """Stop sampling; the power/thermal series and the GPUs' environment since the start."""
        return self.sampler.finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.sampler.stop()
