"""lem-ray's measurement protocol, without Ray: cool down, idle baseline (both before anything
is loaded), then on a loaded backend the warmup, measured and prefill windows, every edge after
a device sync. The campaign's worker runs it on its GPUs through the sampler actor; a script
runs it in process (`lem_ray.measure.Meter`)."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from lem_ray.config.campaign import (
    BaselineConfig,
    CooldownConfig,
    PrefillConfig,
    ValidityConfig,
)
from lem_ray.config.experiment import WarmupConfig
from lem_ray.measure.energy import EnergyFigures, energy_figures, idle_power_w
from lem_ray.measure.warmup import WarmupOutcome, run_warmup
from lem_ray.records import RequestRecord
from lem_ray.telemetry.sampler import WindowResult

if TYPE_CHECKING:
    from lem_ray.backends.base import Backend

T = TypeVar("T")


class GpuSampler(Protocol):
    """What the protocol needs of a sampler on the run's GPUs (RunSampler in process; the
    worker's ActorSampler over Ray)."""

    @property
    def gpu_uuids(self) -> list[str]:
        """The run's GPUs: the keys their idle baselines are cached under."""
        ...

    @property
    def host_key(self) -> str:
        """The key the host's idle baseline is cached under, beside the GPUs'."""
        ...

    def cool_down(self, target_temp_c: float, max_wait_s: float) -> tuple[float, float | None]:
        """Wait for the GPUs to cool so runs start alike: (seconds waited, hottest GPU's
        temperature at the end)."""
        ...

    def baseline(
        self, known: dict[str, dict[str, Any]], duration_s: float, ttl_s: float,
        host_idle: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Idle power per GPU and of the host, to subtract from the windows: the known values
        still fresh, the rest measured now."""
        ...

    def begin(self, name: str) -> None:
        """Open window `name`: its energy counts from here."""
        ...

    def end(self, name: str) -> WindowResult:
        """Close window `name`: its energy and the GPUs' conditions over it."""
        ...


class BaselineCache(Protocol):
    """Idle baselines kept between runs (the campaign's actor; a dict in a notebook), so each
    GPU pays the idle measurement once per TTL, not once per run."""

    def get(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The kept baselines of these keys; a key never put is left out."""
        ...

    def put(self, entries: dict[str, dict[str, Any]]) -> None:
        """Keep newly measured baselines for the runs after this one."""
        ...


@dataclass(frozen=True)
class Clock:
    """perf_s times the windows' work; epoch_s is the clock the sampler stamps its samples with."""

    perf_s: Callable[[], float] = time.perf_counter
    epoch_s: Callable[[], float] = time.time


@dataclass(frozen=True)
class MeasureSettings:
    """The campaign file's sections the protocol follows; their defaults are the campaign's."""

    cooldown: CooldownConfig = field(default_factory=CooldownConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    prefill: PrefillConfig = field(default_factory=PrefillConfig)
    validity: ValidityConfig = field(default_factory=ValidityConfig)
    """min_window_s: how long the prefill window repeats its passes for."""


@dataclass(frozen=True)
class GpuConditions:
    """The GPUs before the run: how long cooling took, and their idle baselines by UUID (and
    the host's under the sampler's host_key)."""

    cooldown_wait_s: float | None = None
    cooldown_temp_c: float | None = None
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class PrefillResult:
    """The prefill-only window: the prompts' passes, repeated until the energy counter can
    measure it, so prefill energy per pass is its energy over `passes`."""

    window: WindowResult
    passes: int
    duration_s: float


@dataclass(frozen=True)
class Measurement:
    """One run's windows, the conditions they were taken in, and every energy figure derived
    from them (lem_ray/measure/energy.py). The campaign's rows are made from it; warmup and
    warmup_window are None where the caller warmed up on its own (Meter.begin_window).
    measure_start_perf_s is on the caller's perf clock; epoch_minus_perf_s maps that clock
    onto the sampler's epoch stamps."""

    conditions: GpuConditions
    records: list[RequestRecord]
    measure_start_perf_s: float
    duration_s: float
    epoch_minus_perf_s: float
    warmup: WarmupOutcome | None
    warmup_window: WindowResult | None
    measure_window: WindowResult
    prefill: PrefillResult | None
    energy: EnergyFigures


def figures_of(
    window: WindowResult, conditions: GpuConditions, gpu_uuids: list[str], output_tokens: int,
    num_requests: int, prefill: PrefillResult | None = None,
) -> EnergyFigures:
    """The window's figures, adjusted by the idle power of the same GPUs."""
    return energy_figures(
        window.energy_j, window.duration_s, output_tokens, num_requests,
        baseline_power_w=idle_power_w(conditions.baselines, gpu_uuids),
        prefill_window_j=prefill.window.energy_j if prefill else None,
        prefill_passes=prefill.passes if prefill else 0,
    )


@dataclass(frozen=True)
class MeasuredWork:
    """The measured window's requests and its timing on the perf clock; epoch_minus_perf_s maps
    that clock onto the sampler's epoch stamps (for the steady-state window)."""

    records: list[RequestRecord]
    start_s: float
    duration_s: float
    epoch_minus_perf_s: float


def timed_measure(
    backend: Backend[Any], prompts: list[str], clock: Clock | None = None
) -> MeasuredWork:
    """The measured window's work, timed as a campaign times it: backend.measure(), then a
    device sync before the clock stops."""
    clock = clock or Clock()
    perf_s = clock.perf_s
    start_s = perf_s()
    records = backend.measure(prompts)
    backend.synchronize()
    duration_s = perf_s() - start_s
    return MeasuredWork(records, start_s, duration_s, clock.epoch_s() - perf_s())


class MeasurementProtocol:
    """One run's protocol on one sampler. `phases_s` collects the seconds of each phase
    (cooldown, baseline, warmup, measuring) for the GPU-time ledger."""

    def __init__(self, sampler: GpuSampler, settings: MeasureSettings,
                 clock: Clock | None = None) -> None:
        self.sampler = sampler
        self.settings = settings
        self.clock = clock or Clock()
        self.phases_s: dict[str, float] = {}

    def prepare(self, cache: BaselineCache | None = None, host_idle: bool = True) -> GpuConditions:
        """Cool down, then take (or reuse from the cache) the idle baselines of the GPUs and of
        the host (measured only when host_idle: nothing else runs on it). Call it before
        anything is loaded: the baseline is of idle GPUs."""
        self.phases_s["cooldown"] = self.phases_s["baseline"] = 0.0
        uuids = self.sampler.gpu_uuids
        if not uuids:
            return GpuConditions()
        settings, perf_s = self.settings, self.clock.perf_s
        waited_s = hottest_c = None
        if settings.cooldown.target_temp_c is not None:
            t0 = perf_s()
            waited_s, hottest_c = self.sampler.cool_down(settings.cooldown.target_temp_c,
                                                         settings.cooldown.max_wait_s)
            self.phases_s["cooldown"] = perf_s() - t0
        measured: dict[str, dict[str, Any]] = {}
        if settings.baseline.enabled:
            t0 = perf_s()
            known = cache.get([*uuids, self.sampler.host_key]) if cache is not None else {}
            measured = self.sampler.baseline(known, settings.baseline.duration_s,
                                             settings.baseline.ttl_s, host_idle)
            if cache is not None:
                cache.put(measured)
            self.phases_s["baseline"] = perf_s() - t0
        return GpuConditions(waited_s, hottest_c, measured)

    def measure(self, backend: Backend[Any], prompts: list[str],
                conditions: GpuConditions) -> Measurement:
        """Warmup, measured and prefill windows on a loaded, prepared backend. The prefill
        window runs only where the measured one has energy (it only serves to split it)."""
        perf_s = self.clock.perf_s

        def warm() -> WarmupOutcome:
            outcome = run_warmup(backend.generate, prompts, self.settings.warmup,
                                 backend.warmup_batch_size, perf_s)
            backend.synchronize()
            return outcome

        warmup, warmup_window = self._window("warmup", warm)
        self.phases_s["warmup"] = warmup_window.duration_s

        work, window = self._window("measure", lambda: timed_measure(backend, prompts, self.clock))
        prefill = (self._prefill(backend, prompts)
                   if self.settings.prefill.enabled and window.energy_j is not None else None)
        self.phases_s["measuring"] = window.duration_s + (
            prefill.window.duration_s if prefill else 0.0)
        records = work.records
        return Measurement(
            conditions=conditions, records=records, measure_start_perf_s=work.start_s,
            duration_s=work.duration_s, epoch_minus_perf_s=work.epoch_minus_perf_s,
            warmup=warmup, warmup_window=warmup_window, measure_window=window, prefill=prefill,
            energy=figures_of(window, conditions, self.sampler.gpu_uuids,
                              sum(r.output_tokens for r in records), len(records), prefill),
        )

    def _window(self, name: str, work: Callable[[], T]) -> tuple[T, WindowResult]:
        """Work (which syncs the device last) inside window `name`. A failure closes the
        window (its figures are dropped), so the sampler can measure the next run."""
        self.sampler.begin(name)
        try:
            done = work()
        except BaseException:
            self.discard(name)
            raise
        return done, self.sampler.end(name)

    def discard(self, name: str) -> None:
        """Close window `name` without keeping it; the error that stopped it is the one to
        report, so the sampler's own complaint (a window never begun) is not raised."""
        with contextlib.suppress(Exception):
            self.sampler.end(name)

    def _prefill(self, backend: Backend[Any], prompts: list[str]) -> PrefillResult:
        """The measured prompts again, one output token each, repeated until the window is long
        enough for the energy counter (or max_repeats); energy is then divided by the passes."""
        perf_s, settings = self.clock.perf_s, self.settings
        backend.synchronize()
        started = 0.0
        passes = 0

        def passes_until_long_enough() -> None:
            nonlocal started, passes
            started = perf_s()
            while True:
                backend.generate(prompts, max_output_tokens=1)
                passes += 1
                backend.synchronize()
                if (perf_s() - started >= settings.validity.min_window_s
                        or passes >= settings.prefill.max_repeats):
                    return

        _, window = self._window("prefill", passes_until_long_enough)
        return PrefillResult(window, passes, perf_s() - started)


@contextlib.contextmanager
def no_gc(freeze: bool) -> Iterator[None]:
    """No garbage collection inside the windows. A collection of a Ray worker's heap stalls
    the host for milliseconds, and a decode loop bound by kernel launches turns host stalls
    into time and energy; generate() makes few reference cycles, so memory stays flat without
    collecting for a run. freeze (a run that loaded an engine, or nothing frozen yet): the
    objects alive after the collection (libraries, engines) leave every later collection, so
    the one before each run walks only what came since: a full collection of a warm worker's
    heap takes ~150 ms of CPU, the bulk of a short run. Releasing an engine thaws them
    (EnginePool.release)."""
    gc.collect()
    if freeze:
        gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
