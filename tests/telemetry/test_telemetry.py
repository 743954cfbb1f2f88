"""The measuring logic of the telemetry layer, on CPU, against a scripted GPU.

ScriptedGpu is a test double for the hardware: its power is a known linear function of a
manually advanced clock and its energy counter is the exact integral of that power, so every
expected figure below can be computed by hand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from lem_ray.measure.energy import adjusted_energy_j
from lem_ray.telemetry.energy import counter_delta_j, trapezoid_energy_j
from lem_ray.telemetry.nvml import (
    DeviceReader,
    EnergyCounterUnsupportedError,
    GpuNotFoundError,
    GpuSample,
    TelemetryError,
    nvml_status,
)
from lem_ray.telemetry.sampler import SOURCE_COUNTER, SOURCE_INTEGRATED, EnergySampler
from tests.fakes.clock import ManualClock


class ScriptedGpu(DeviceReader):
    """Power p(t) = base_w + slope_w_per_s * (t - t0); counter = integral of p since t0, in mJ."""

    def __init__(
        self,
        uuid: str,
        clock: Callable[[], float],
        base_w: float,
        slope_w_per_s: float = 0.0,
        counter: bool = True,
        throttle_at: dict[float, int] | None = None,
    ) -> None:
        self.uuid = uuid
        self.name = "Scripted GPU"
        self.supports_energy_counter = counter
        self.power_method = "power_instant"
        self._clock = clock
        self._t0 = clock()
        self._base_w = base_w
        self._slope = slope_w_per_s
        self._throttle_at = throttle_at or {}
        self.power_reads = 0

    def _power(self, t_s: float) -> float:
        return self._base_w + self._slope * (t_s - self._t0)

    def energy_mj(self) -> int:
        if not self.supports_energy_counter:
            raise EnergyCounterUnsupportedError(self.uuid)
        dt = self._clock() - self._t0
        return round((self._base_w * dt + self._slope * dt * dt / 2) * 1000)

    def power_instant_w(self) -> float:
        self.power_reads += 1
        return self._power(self._clock())

    def sample(self) -> GpuSample:
        t_s = self._clock()
        throttled = self._throttle_at.get(round(t_s - self._t0, 6), 0)
        return GpuSample(
            t_s=t_s,
            power_w=self._power(t_s),
            temperature_c=40.0 + (t_s - self._t0),
            sm_clock_mhz=1410 if throttled else 1980,
            mem_clock_mhz=3201,
            memory_used_mib=1024.0,
            utilization_pct=100.0,
            throttle_reasons=throttled,
        )

    def environment(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "name": self.name, "power_limit_w": 700.0}

    def compute_process_pids(self) -> list[int]:
        return []


def make_sampler(
    clock: ManualClock, gpus: dict[str, dict[str, Any]], **kwargs: Any
) -> EnergySampler:
    devices = {uuid: ScriptedGpu(uuid, clock, **spec) for uuid, spec in gpus.items()}
    return EnergySampler(list(gpus), device_factory=devices.__getitem__, clock=clock, **kwargs)


def exact_energy_j(base_w: float, slope: float, t_from: float, t_to: float) -> float:
    return base_w * (t_to - t_from) + slope * (t_to**2 - t_from**2) / 2


TWO_GPUS = {"GPU-a": {"base_w": 100.0, "slope_w_per_s": 10.0}, "GPU-b": {"base_w": 300.0}}


def test_window_energy_is_counter_delta_summed_over_gpus() -> None:
    clock = ManualClock()
    sampler = make_sampler(clock, TWO_GPUS)
    assert sampler.energy_source == SOURCE_COUNTER
    clock.advance(1.0)
    sampler.begin("measure")
    clock.advance(2.0)
    result = sampler.end("measure")

    assert result.duration_s == pytest.approx(2.0)
    assert result.energy_by_gpu_j["GPU-a"] == pytest.approx(exact_energy_j(100, 10, 1, 3), abs=1e-3)
    assert result.energy_by_gpu_j["GPU-b"] == pytest.approx(600.0, abs=1e-3)
    assert result.energy_j == pytest.approx(240.0 + 600.0, abs=1e-3)
    assert result.source == SOURCE_COUNTER
    assert result.unavailable_reason is None
    assert result.temperature_start_c == pytest.approx(41.0)


def test_nested_windows_measure_their_own_span() -> None:
    clock = ManualClock()
    sampler = make_sampler(clock, {"GPU-b": {"base_w": 300.0}})
    sampler.begin("warmup")
    clock.advance(1.0)
    sampler.begin("measure")
    clock.advance(2.0)
    measure = sampler.end("measure")
    clock.advance(0.5)
    warmup = sampler.end("warmup")

    assert measure.energy_j == pytest.approx(600.0)
    assert warmup.energy_j == pytest.approx(300.0 * 3.5)
    assert warmup.start_s < measure.start_s < measure.end_s < warmup.end_s


def test_end_without_begin_and_double_begin_raise() -> None:
    sampler = make_sampler(ManualClock(), TWO_GPUS)
    with pytest.raises(ValueError, match="not begun"):
        sampler.end("measure")
    sampler.begin("measure")
    with pytest.raises(ValueError, match="already open"):
        sampler.begin("measure")
    sampler.end("measure")
    with pytest.raises(ValueError, match="not begun"):
        sampler.end("measure")


def test_integrated_fallback_when_a_gpu_has_no_counter() -> None:
    clock = ManualClock()
    gpus = {
        "GPU-a": {"base_w": 100.0, "slope_w_per_s": 10.0},
        "GPU-old": {"base_w": 50.0, "counter": False},
    }
    sampler = make_sampler(clock, gpus)
    assert sampler.energy_source == SOURCE_INTEGRATED
    sampler.begin("measure")
    for _ in range(20):
        clock.advance(0.1)
        sampler.sample_once()
    clock.advance(0.05)
    result = sampler.end("measure")

    expected_a = exact_energy_j(100, 10, 0, 2.05)
    assert result.source == SOURCE_INTEGRATED
    assert result.energy_by_gpu_j["GPU-a"] == pytest.approx(expected_a)
    assert result.energy_by_gpu_j["GPU-old"] == pytest.approx(50.0 * 2.05)
    assert result.energy_j == pytest.approx(expected_a + 102.5)
    assert result.integrated_energy_j == pytest.approx(result.energy_j)
    assert result.samples == 2 * 22


def test_integrated_fallback_refuses_sparse_samples() -> None:
    clock = ManualClock()
    sampler = make_sampler(clock, {"GPU-old": {"base_w": 50.0, "counter": False}})
    sampler.begin("measure")
    clock.advance(30.0)
    result = sampler.end("measure")
    assert result.energy_j is None
    assert result.source is None
    assert "too few" in (result.unavailable_reason or "")


def test_counter_window_carries_integrated_cross_check() -> None:
    clock = ManualClock()
    sampler = make_sampler(clock, TWO_GPUS)
    sampler.begin("measure")
    for _ in range(10):
        clock.advance(0.1)
        sampler.sample_once()
    result = sampler.end("measure")
    assert result.integrated_energy_j == pytest.approx(result.energy_j, rel=1e-6)


def test_window_reports_thermal_and_throttle_conditions() -> None:
    clock = ManualClock()
    sampler = make_sampler(
        clock, {"GPU-a": {"base_w": 100.0, "throttle_at": {0.0: 0x20, 0.5: 0x4}}}
    )
    sampler.sample_once()
    clock.advance(0.2)
    sampler.begin("measure")
    for _ in range(3):
        clock.advance(0.3)
        sampler.sample_once()
    result = sampler.end("measure")
    assert result.temperature_start_c == pytest.approx(40.2)
    assert result.temperature_max_c == pytest.approx(41.1)
    assert result.throttle_reasons_seen == 0x4
    assert result.samples == 5
    # the throttled sample at 0.5 s ran at 1410 MHz, the other four at 1980
    assert result.sm_clock_mhz_min == 1410
    assert result.sm_clock_mhz_mean == pytest.approx((1410 + 4 * 1980) / 5)


def test_trapezoid_clips_and_interpolates_at_edges() -> None:
    times = [0.0, 1.0, 2.0, 3.0]
    powers = [100.0, 200.0, 100.0, 300.0]
    # p(0.5) = 150, p(2.5) = 200: 0.5*(150+200)/2 + (200+100)/2 + 0.5*(100+200)/2
    assert trapezoid_energy_j(times, powers, 0.5, 2.5) == pytest.approx(87.5 + 150.0 + 75.0)
    # between two samples only: p(1.25) = 175, p(1.75) = 125
    assert trapezoid_energy_j(times, powers, 1.25, 1.75) == pytest.approx(0.5 * 150.0)
    # before the first sample the power is held: 1 s at 100 W, then 0.5 s from 100 to 150 W
    assert trapezoid_energy_j(times, powers, -1.0, 0.5) == pytest.approx(100.0 + 62.5)
    assert trapezoid_energy_j(times, powers, 1.0, 1.0) == 0.0
    # uneven spacing (the sampler's thread runs late under load): p(0.25) = 150, p(1.5) = 150
    uneven = [0.0, 0.5, 2.5]
    assert trapezoid_energy_j(uneven, [100.0, 200.0, 100.0], 0.25, 1.5) == pytest.approx(
        0.25 * (150.0 + 200.0) / 2 + 1.0 * (200.0 + 150.0) / 2)
    with pytest.raises(ValueError):
        trapezoid_energy_j([0.0], [100.0], 0.0, 1.0)
    with pytest.raises(ValueError):
        trapezoid_energy_j(times, powers, 2.0, 1.0)


def test_counter_delta_and_baseline_adjustment() -> None:
    assert counter_delta_j(1_500, 4_000) == pytest.approx(2.5)
    assert counter_delta_j(2**63, 2**63 + 1_000) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="backwards"):
        counter_delta_j(4_000, 1_500)
    assert adjusted_energy_j(1_000.0, 80.0, 10.0) == pytest.approx(200.0)
    assert adjusted_energy_j(None, 80.0, 10.0) is None
    assert adjusted_energy_j(1_000.0, None, 10.0) is None


def test_idle_baseline_is_cached_until_ttl() -> None:
    clock = ManualClock()
    devices = {
        uuid: ScriptedGpu(uuid, clock, base_w=w) for uuid, w in (("GPU-a", 80.0), ("GPU-b", 60.0))
    }
    sampler = EnergySampler(
        list(devices), device_factory=devices.__getitem__, clock=clock, baseline_ttl_s=3600
    )
    assert sampler.baseline("GPU-a") is None

    first = sampler.measure_idle_baseline(duration_s=0.05, interval_ms=10)
    assert first["GPU-a"]["power_w"] == pytest.approx(80.0)
    assert first["GPU-b"]["power_w"] == pytest.approx(60.0)
    assert first["GPU-a"]["samples"] == 5
    assert first["GPU-a"]["method"] == "idle_mean_power_instant"
    assert first["GPU-a"]["compute_processes"] == 0
    reads = devices["GPU-a"].power_reads

    clock.advance(100.0)
    again = sampler.measure_idle_baseline(duration_s=0.05, interval_ms=10)
    assert devices["GPU-a"].power_reads == reads
    assert again["GPU-a"]["age_s"] == pytest.approx(100.0)
    assert sampler.baseline("GPU-b")["measured_at_s"] == first["GPU-b"]["measured_at_s"]

    clock.advance(3600.0)
    assert sampler.baseline("GPU-a") is None
    fresh = sampler.measure_idle_baseline(duration_s=0.05, interval_ms=10)
    assert devices["GPU-a"].power_reads == reads + 5
    assert fresh["GPU-a"]["age_s"] == pytest.approx(0.0)


def test_timeseries_rows_with_cumulative_integrated_energy() -> None:
    clock = ManualClock()
    sampler = make_sampler(clock, TWO_GPUS)
    for _ in range(3):
        sampler.sample_once()
        clock.advance(1.0)
    rows = sampler.timeseries()
    assert len(rows) == 6
    assert set(rows[0]) == {
        "gpu_uuid", "t_s", "power_w", "temperature_c", "sm_clock_mhz", "mem_clock_mhz",
        "memory_used_mib", "utilization_pct", "throttle_reasons", "energy_j",
    }
    a_rows = [r for r in rows if r["gpu_uuid"] == "GPU-a"]
    assert [r["power_w"] for r in a_rows] == [100.0, 110.0, 120.0]
    assert [r["energy_j"] for r in a_rows] == pytest.approx([0.0, 105.0, 220.0])

    later = sampler.timeseries(since_s=1001.0)
    assert len(later) == 4
    assert [r["energy_j"] for r in later if r["gpu_uuid"] == "GPU-b"] == pytest.approx(
        [300.0, 600.0]
    )


def test_background_thread_samples_and_reports_cpu_time() -> None:
    devices = {"GPU-a": ScriptedGpu("GPU-a", time.time, base_w=100.0)}
    sampler = EnergySampler(
        list(devices), sample_interval_ms=10, device_factory=devices.__getitem__
    )
    assert sampler.sampler_cpu_s() == 0.0, "no thread yet"
    started_s = time.monotonic()
    with sampler:
        sampler.begin("measure")
        time.sleep(0.3)
        result = sampler.end("measure")
    wall_s = time.monotonic() - started_s
    count = len(sampler.timeseries())
    time.sleep(0.05)
    assert len(sampler.timeseries()) == count
    assert result.samples >= 10
    assert result.integrated_energy_j == pytest.approx(100.0 * result.duration_s, rel=1e-6)
    # the thread's own CPU time: some, and never more than the wall time it ran
    assert 0.0 < sampler.sampler_cpu_s() <= wall_s


def test_failing_device_sample_is_skipped() -> None:
    class FlakyGpu(ScriptedGpu):
        def sample(self) -> GpuSample:
            raise TelemetryError("GPU is lost")

    clock = ManualClock()
    devices = {
        "GPU-a": ScriptedGpu("GPU-a", clock, base_w=100.0),
        "GPU-x": FlakyGpu("GPU-x", clock, 1.0),
    }
    sampler = EnergySampler(list(devices), device_factory=devices.__getitem__, clock=clock)
    assert len(sampler.sample_once()) == 1
    assert {r["gpu_uuid"] for r in sampler.timeseries()} == {"GPU-a"}


def test_unopenable_gpu_makes_sampler_unavailable() -> None:
    def factory(uuid: str) -> DeviceReader:
        raise GpuNotFoundError(f"no GPU {uuid!r} on this node")

    sampler = EnergySampler(["GPU-missing"], device_factory=factory)
    assert sampler.energy_source is None
    assert "GPU-missing" in (sampler.unavailable_reason or "")


@pytest.mark.skipif(nvml_status()[0], reason="the no-NVML path needs a node without NVML")
def test_no_nvml_reports_unavailable_without_raising() -> None:
    available, reason = nvml_status()
    assert not available and reason
    sampler = EnergySampler(["GPU-00000000-0000-0000-0000-000000000000"])
    assert sampler.energy_source is None
    assert sampler.unavailable_reason == reason
    with sampler:
        sampler.begin("measure")
        result = sampler.end("measure")
    assert result.energy_j is None
    assert result.source is None
    assert result.unavailable_reason == reason
    assert result.energy_by_gpu_j == {}
    assert sampler.timeseries() == []
    assert sampler.measure_idle_baseline(duration_s=0.01) == {}
    assert sampler.environment() == {}

    empty = EnergySampler([])
    assert empty.energy_source is None
    assert "no GPU UUIDs" in (empty.unavailable_reason or "")


class CoolingGpu(ScriptedGpu):
    """A GPU cooling down by 2 C per second from 70 C."""

    def sample(self) -> GpuSample:
        hot = super().sample()
        return GpuSample(**{**hot.__dict__, "temperature_c": 70.0 - 2.0 * (hot.t_s - self._t0)})


def test_wait_until_cool_stops_at_target_or_max_wait() -> None:
    clock = ManualClock()
    gpu = CoolingGpu("GPU-c", clock, base_w=80.0)
    sampler = EnergySampler(["GPU-c"], device_factory=lambda _: gpu, clock=clock)
    waited_s, hottest_c = sampler.wait_until_cool(60.0, max_wait_s=100.0, sleep=clock.advance)
    assert waited_s == pytest.approx(5.0) and hottest_c == pytest.approx(60.0)
    waited_s, hottest_c = sampler.wait_until_cool(30.0, max_wait_s=3.0, sleep=clock.advance)
    assert waited_s == pytest.approx(3.0) and hottest_c == pytest.approx(54.0), (
        "gave up, still warm"
    )


def test_loaded_baselines_are_reused_until_ttl() -> None:
    clock = ManualClock()
    sampler = make_sampler(clock, {"GPU-a": {"base_w": 90.0}}, baseline_ttl_s=60.0)
    earlier = {"GPU-a": {"power_w": 75.0, "measured_at_s": clock() - 30.0, "method": "m",
                         "age_s": 30.0}}
    sampler.load_baselines(earlier)
    reused = sampler.measure_idle_baseline(duration_s=0.2, interval_ms=100)
    assert reused["GPU-a"]["power_w"] == 75.0 and reused["GPU-a"]["age_s"] == pytest.approx(30.0)
    clock.advance(31.0)
    fresh = sampler.measure_idle_baseline(duration_s=0.2, interval_ms=100)
    assert fresh["GPU-a"]["power_w"] == pytest.approx(90.0), "older than the TTL: measured again"



class ProfiledGpu(ScriptedGpu):
    """A scripted GPU whose temperature is a given function of the clock."""

    def __init__(self, uuid: str, clock: Callable[[], float],
                 temperature_c: Callable[[float], float], **kwargs: Any) -> None:
        super().__init__(uuid, clock, **kwargs)
        self._temperature_c = temperature_c

    def sample(self) -> GpuSample:
        import dataclasses

        sample = super().sample()
        return dataclasses.replace(sample, temperature_c=self._temperature_c(sample.t_s))


def profiled_sampler(clock: ManualClock,
                     profiles: dict[str, Callable[[float], float]]) -> EnergySampler:
    devices = {uuid: ProfiledGpu(uuid, clock, profile, base_w=100.0)
               for uuid, profile in profiles.items()}
    return EnergySampler(list(profiles), device_factory=devices.__getitem__, clock=clock)


def held(t0_s: float, table: dict[float, float]) -> Callable[[float], float]:
    """Temperature by a table of (seconds since t0_s, C), each held until the next."""
    return lambda t_s: [c for since_s, c in sorted(table.items()) if t0_s + since_s <= t_s][-1]


def sample_at(sampler: EnergySampler, clock: ManualClock, t_s: float) -> None:
    """One sample stamped t_s, the clock put back: a sampling thread's late sample."""
    now_s = clock.t_s
    clock.t_s = t_s
    sampler.sample_once()
    clock.t_s = now_s


def test_peak_temperature_is_the_hottest_sample_though_the_gpu_cooled_before_the_end() -> None:
    """GPU-a: 60 C at the start, 85 C mid-window, 50 C by its end; GPU-b peaks lower, later.
    Samples just outside the window (hotter still) are not its conditions."""
    clock = ManualClock(t_s=1024.0)
    sampler = profiled_sampler(clock, {
        "GPU-a": held(1024.0, {0.0: 95.0, 1.0: 60.0, 1.5: 85.0, 2.0: 50.0, 3.5: 99.0}),
        "GPU-b": held(1024.0, {0.0: 40.0, 1.75: 70.0, 2.25: 45.0}),
    })
    clock.advance(0.5)
    sampler.sample_once()  # 95 C, before the window
    clock.advance(0.5)
    sampler.begin("measure")  # t0 + 1: 60 and 40 C
    for _ in range(6):
        clock.advance(0.25)
        sampler.sample_once()
    sample_at(sampler, clock, clock.t_s + 1.0)  # 99 C, after the window's end
    result = sampler.end("measure")  # t0 + 2.5: 50 and 45 C
    assert result.temperature_start_c == 60.0
    assert result.temperature_max_c == 85.0
    assert result.samples == 2 * (1 + 6 + 1)


def test_samples_on_a_windows_edges_are_inside_it() -> None:
    """A sample stamped exactly at the start or the end edge belongs to the window (its
    temperature and its count); a float's width outside either edge, it does not."""
    start_s, end_s = 1024.0, 1026.5

    def temperature_c(t_s: float) -> float:
        if t_s < start_s or t_s > end_s:
            return 99.0
        return 70.0 if t_s in (start_s, end_s) else 50.0

    clock = ManualClock(t_s=start_s)
    sampler = profiled_sampler(clock, {"GPU-a": temperature_c})
    sampler.begin("measure")
    clock.advance(1.0)
    sampler.sample_once()
    for t_s in (math.nextafter(start_s, 0.0), start_s, end_s, math.nextafter(end_s, 2 * end_s)):
        sample_at(sampler, clock, t_s)
    clock.t_s = end_s
    result = sampler.end("measure")
    assert (result.start_s, result.end_s) == (start_s, end_s)
    assert result.temperature_start_c == 70.0 and result.temperature_max_c == 70.0
    assert result.samples == 5, "begin's and end's own, the one inside, the two on the edges"


def integrated_energy_j(offsets_s: list[float], end_s: float,
                        sample_interval_ms: float = 100) -> float | None:
    """Energy of a window on a 50 W GPU without a counter: begin's and end's own samples, and
    one at each offset from the start."""
    clock = ManualClock(t_s=1024.0)
    sampler = make_sampler(clock, {"GPU-old": {"base_w": 50.0, "counter": False}},
                           sample_interval_ms=sample_interval_ms)
    sampler.begin("measure")
    for offset_s in offsets_s:
        clock.t_s = 1024.0 + offset_s
        sampler.sample_once()
    clock.t_s = 1024.0 + end_s
    return sampler.end("measure").energy_j


def test_integration_trusts_gaps_up_to_five_intervals_and_at_least_a_second() -> None:
    """The edge samples alone are enough; a gap of exactly the limit is trusted, a wider one
    is not; the limit is a second, or five sampling intervals when that is longer."""
    assert integrated_energy_j([], 0.5) == 25.0, "begin's and end's samples, on the edges"
    assert integrated_energy_j([0.75], 1.5) == 75.0
    assert integrated_energy_j([1.0], 2.0) == 100.0
    assert integrated_energy_j([1.25], 2.5) is None
    assert integrated_energy_j([1.25], 2.5, sample_interval_ms=250) == 125.0
    assert integrated_energy_j([1.375], 2.75, sample_interval_ms=250) is None
