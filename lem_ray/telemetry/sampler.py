"""Energy of measurement windows on a set of GPUs, plus a power/thermal time series.

Energy comes from the NVML energy counter read at each window edge (the caller synchronises the
device first); GPUs without the counter fall back to integrating instant power sampled by a
background thread, which also serves as a cross-check. Nothing here knows backends or Ray: the
execution layer wraps `EnergySampler` in an actor on the node that holds the GPUs.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

from lem_ray.telemetry.energy import counter_delta_j, trapezoid_energy_j
from lem_ray.telemetry.nvml import DeviceFactory, DeviceReader, GpuDevice, GpuSample, TelemetryError
from lem_ray.telemetry.rapl import HostCounters, HostEnergy, HostWindow, host_rows

logger = logging.getLogger(__name__)

COUNTER_UPDATE_PERIOD_S = 0.1
"""The energy counter advances about every 100 ms (measured on H200): shorter windows read ~0."""

SOURCE_COUNTER = "nvml_counter"
SOURCE_INTEGRATED = "nvml_power_integrated"


@dataclass(frozen=True)
class WindowResult:
    """Energy and conditions of one named window, summed over the sampler's GPUs.

    energy_j is None when the node cannot measure (unavailable_reason says why). samples counts
    the power samples inside the window over all GPUs. integrated_energy_j is the instant-power
    trapezoid, kept as a cross-check of the counter (None when samples are too sparse).
    throttle_reasons_seen ORs NVML's clocks-event bitmasks; bit 0x1 (GPU idle) is harmless,
    0x4 (software power cap) is normal at full load, thermal and hardware slowdowns are not.
    """

    name: str
    start_s: float
    end_s: float
    duration_s: float
    energy_j: float | None
    energy_by_gpu_j: dict[str, float]
    integrated_energy_j: float | None
    source: str | None
    temperature_start_c: float | None
    temperature_max_c: float | None
    throttle_reasons_seen: int
    samples: int
    unavailable_reason: str | None = None
    sm_clock_mhz_mean: float | None = None
    """Over every sample of every GPU in the window: a row that ran at lower clocks than its
    siblings says so, whatever held the clocks back (power cap, heat, another tenant)."""
    sm_clock_mhz_min: float | None = None
    host: HostWindow | None = None
    """The node's CPU and DRAM energy over the same edges; None for a sampler without a host
    reader."""


@dataclass(frozen=True)
class _OpenWindow:
    start_s: float
    counters_mj: dict[str, int]
    temperature_start_c: float | None
    host: HostCounters | None = None


class EnergySampler:
    """Measures named windows on a fixed set of GPUs and keeps a time series while started.

    Thread-safe: begin/end/timeseries may be called from other threads than the sampling one.
    On a node without NVML every method still works and reports energy_source None.
    """

    def __init__(
        self,
        gpu_uuids: list[str],
        sample_interval_ms: float = 100,
        device_factory: DeviceFactory = GpuDevice,
        baseline_ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        host: HostEnergy | None = None,
        host_key: str = "host",
    ) -> None:
        if sample_interval_ms <= 0:
            raise ValueError(f"sample_interval_ms must be positive, got {sample_interval_ms}")
        self.gpu_uuids = list(gpu_uuids)
        self.sample_interval_s = sample_interval_ms / 1000.0
        self.baseline_ttl_s = baseline_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: list[DeviceReader] = []
        self._unavailable_reason: str | None = None
        if not self.gpu_uuids:
            self._unavailable_reason = "no GPU UUIDs given to the sampler"
        else:
            try:
                self._devices = [device_factory(uuid) for uuid in self.gpu_uuids]
            except TelemetryError as exc:
                self._unavailable_reason = str(exc)
        self._times: dict[str, list[float]] = {d.uuid: [] for d in self._devices}
        self._samples: dict[str, list[GpuSample]] = {d.uuid: [] for d in self._devices}
        self._open: dict[str, _OpenWindow] = {}
        self._baselines: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_cpu_s = 0.0
        self._failed_devices: set[str] = set()
        self.on_sample: Callable[[str, GpuSample], None] | None = None
        """Called with (GPU UUID, sample) for each sample taken, in the thread that took it (the
        sampling thread, or a window edge's caller): keep it cheap."""
        self.host = host
        """The node's RAPL counters, read at the same edges and ticks as the GPUs'."""
        self.host_key = host_key
        """The host's key among the baselines (they are kept per GPU UUID and per node)."""
        self._host_samples: list[HostCounters] = []
        self._host_times: list[float] = []

    @property
    def energy_source(self) -> str | None:
        """How window energy is obtained; None when this node cannot measure."""
        if not self._devices:
            return None
        if all(d.supports_energy_counter for d in self._devices):
            return SOURCE_COUNTER
        return SOURCE_INTEGRATED

    @property
    def unavailable_reason(self) -> str | None:
        """Why energy_source is None, for the result row."""
        return self._unavailable_reason

    @property
    def _host_readable(self) -> bool:
        return self.host is not None and bool(self.host.zones)

    def start(self) -> None:
        """Start the background sampling thread (no-op when already running or nothing to read)."""
        if not (self._devices or self._host_readable) or (
                self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="lem-ray-energy-sampler", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the sampling thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 10 * self.sample_interval_s))
            self._thread = None

    def __enter__(self) -> EnergySampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        cpu_before_s = self._thread_cpu_s
        cpu_start_s = time.thread_time()
        next_s = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            self._sample_host()
            with self._lock:
                self._thread_cpu_s = cpu_before_s + time.thread_time() - cpu_start_s
            next_s += self.sample_interval_s
            delay_s = next_s - time.monotonic()
            if delay_s < 0:
                next_s = time.monotonic()
            self._stop.wait(max(0.0, delay_s))

    def sample_once(self) -> list[GpuSample]:
        """Read one sample per GPU into the time series; a failing GPU is logged and skipped."""
        taken = []
        for device in self._devices:
            try:
                sample = device.sample()
            except TelemetryError as exc:
                if device.uuid not in self._failed_devices:
                    self._failed_devices.add(device.uuid)
                    logger.warning(
                        "sampling %s failed (further failures not logged): %s", device.uuid, exc
                    )
                continue
            self._record(device.uuid, sample)
            if self.on_sample is not None:
                self.on_sample(device.uuid, sample)
            taken.append(sample)
        return taken

    def _sample_host(self) -> HostCounters | None:
        """One read of the host counters into the series (None without a readable host)."""
        host = self.host
        if host is None or not host.zones:
            return None
        counters = host.read(self._clock())
        with self._lock:
            i = bisect.bisect_right(self._host_times, counters.t_s)
            self._host_times.insert(i, counters.t_s)
            self._host_samples.insert(i, counters)
        return counters

    def _record(self, uuid: str, sample: GpuSample) -> None:
        with self._lock:
            times = self._times[uuid]
            i = bisect.bisect_right(times, sample.t_s)
            times.insert(i, sample.t_s)
            self._samples[uuid].insert(i, sample)

    def sampler_cpu_s(self) -> float:
        """CPU time the sampling thread has used, so its overhead can be reported."""
        with self._lock:
            return self._thread_cpu_s

    def _read_counters(self) -> tuple[float, dict[str, int]]:
        """Counter of every GPU, timed at the middle of the reads (~4 ms per GPU)."""
        if self.energy_source != SOURCE_COUNTER:
            return self._clock(), {}
        before_s = self._clock()
        counters = {d.uuid: d.energy_mj() for d in self._devices}
        return (before_s + self._clock()) / 2, counters

    def begin(self, name: str) -> None:
        """Open window `name`: counters first (the edge), then a sample for the start
        temperature."""
        with self._lock:
            if name in self._open:
                raise ValueError(f"window {name!r} is already open")
        start_s, counters = self._read_counters()
        host = self._sample_host()
        temperatures = [s.temperature_c for s in self.sample_once() if s.temperature_c is not None]
        with self._lock:
            if name in self._open:
                raise ValueError(f"window {name!r} is already open")
            self._open[name] = _OpenWindow(start_s, counters, max(temperatures, default=None), host)

    def end(self, name: str) -> WindowResult:
        """Close window `name` and return its energy and conditions."""
        with self._lock:
            window = self._open.pop(name, None)
        if window is None:
            raise ValueError(f"window {name!r} was not begun")
        self.sample_once()
        end_s, counters = self._read_counters()
        host_end = self._sample_host()
        per_gpu, samples_in_window = self._window_series(window.start_s, end_s)
        integrated = self._integrate(per_gpu, window.start_s, end_s)
        source = self.energy_source
        reason = self._unavailable_reason
        by_gpu: dict[str, float] = {}
        if source == SOURCE_COUNTER:
            by_gpu = {
                uuid: counter_delta_j(window.counters_mj[uuid], counters[uuid]) for uuid in counters
            }
            if end_s - window.start_s < COUNTER_UPDATE_PERIOD_S:
                logger.warning(
                    "window %r lasted %.3f s, shorter than the counter's ~%.1f s update period",
                    name,
                    end_s - window.start_s,
                    COUNTER_UPDATE_PERIOD_S,
                )
        elif source == SOURCE_INTEGRATED:
            if integrated is None:
                reason = ("too few instant-power samples in the window to integrate "
                          "(is the sampler started?)")
            else:
                by_gpu = integrated
        temperatures = [s.temperature_c for s in samples_in_window if s.temperature_c is not None]
        clocks = [s.sm_clock_mhz for s in samples_in_window if s.sm_clock_mhz is not None]
        reasons = 0
        for s in samples_in_window:
            reasons |= s.throttle_reasons or 0
        return WindowResult(
            name=name,
            start_s=window.start_s,
            end_s=end_s,
            duration_s=end_s - window.start_s,
            energy_j=sum(by_gpu.values()) if by_gpu else None,
            energy_by_gpu_j=by_gpu,
            integrated_energy_j=None if integrated is None else sum(integrated.values()),
            source=source if by_gpu else None,
            temperature_start_c=window.temperature_start_c,
            temperature_max_c=max(temperatures, default=None),
            throttle_reasons_seen=reasons,
            samples=len(samples_in_window),
            unavailable_reason=None if by_gpu else reason,
            sm_clock_mhz_mean=sum(clocks) / len(clocks) if clocks else None,
            sm_clock_mhz_min=min(clocks, default=None),
            host=None if self.host is None else self.host.window(window.host, host_end),
        )

    def _window_series(
        self, start_s: float, end_s: float
    ) -> tuple[dict[str, list[GpuSample]], list[GpuSample]]:
        """Per GPU: the samples in the window plus one neighbour each side (for edge
        interpolation)."""
        per_gpu: dict[str, list[GpuSample]] = {}
        inside: list[GpuSample] = []
        with self._lock:
            for uuid, times in self._times.items():
                lo = bisect.bisect_left(times, start_s)
                hi = bisect.bisect_right(times, end_s)
                inside.extend(self._samples[uuid][lo:hi])
                per_gpu[uuid] = self._samples[uuid][max(lo - 1, 0):hi + 1]
        return per_gpu, inside

    def _integrate(
        self, per_gpu: dict[str, list[GpuSample]], start_s: float, end_s: float
    ) -> dict[str, float] | None:
        """Trapezoid energy per GPU, or None when a GPU's samples leave a gap too wide to trust."""
        max_gap_s = max(1.0, 5 * self.sample_interval_s)
        energy: dict[str, float] = {}
        for uuid, samples in per_gpu.items():
            points = [(s.t_s, s.power_w) for s in samples if s.power_w is not None]
            inside = [t for t, _ in points if start_s <= t <= end_s]
            if len(inside) < 2:
                return None
            edges = [start_s, *inside, end_s]
            if max(b - a for a, b in pairwise(edges)) > max_gap_s:
                return None
            energy[uuid] = trapezoid_energy_j(
                [t for t, _ in points], [p for _, p in points], start_s, end_s
            )
        return energy or None

    def timeseries(self, since_s: float | None = None) -> list[dict[str, Any]]:
        """Samples as rows (ordered by GPU, then time), from since_s on.

        energy_j is cumulative per GPU, integrated from instant power since this sampler's first
        sample of that GPU: a trace for plots, not the counter figure reported for windows.
        """
        with self._lock:
            series = {uuid: list(samples) for uuid, samples in self._samples.items()}
        rows = []
        for uuid, samples in series.items():
            energy_j = 0.0
            last: tuple[float, float] | None = None
            for s in samples:
                if s.power_w is not None:
                    if last is not None:
                        last_t_s, last_power_w = last
                        energy_j += (s.t_s - last_t_s) * (s.power_w + last_power_w) / 2
                    last = (s.t_s, s.power_w)
                if since_s is None or s.t_s >= since_s:
                    rows.append({"gpu_uuid": uuid, **asdict(s), "energy_j": energy_j})
        return rows + self._host_rows(since_s)

    def _host_rows(self, since_s: float | None) -> list[dict[str, Any]]:
        with self._lock:
            samples = list(self._host_samples)
        return [] if self.host is None else host_rows(self.host.zones, samples, since_s)

    def clear_timeseries(self) -> None:
        """Forget the samples so far: a sampler kept for the next run starts its series anew."""
        with self._lock:
            for uuid in self._times:
                self._times[uuid] = []
                self._samples[uuid] = []
            self._host_samples, self._host_times = [], []

    def measure_idle_baseline(
        self, duration_s: float = 20.0, interval_ms: float = 100.0, force: bool = False,
        host: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Mean instant power per GPU while nothing runs, cached for baseline_ttl_s; and the
        host's (CPU + DRAM counters over the same seconds) under host_key.

        Blocks for duration_s unless every GPU and the host have a fresh cached value (and
        force is False). compute_processes records how many processes held the GPU, so a busy
        baseline shows. The host is idle only while nothing else runs on the node: host False
        (other runs active there) measures none, and a fresh cached value is still returned.
        """
        stale = [d for d in self._devices if force or self.baseline(d.uuid) is None]
        host_stale = (
            host and self._host_readable and (force or self.baseline(self.host_key) is None)
        )
        if stale or host_stale:
            count = max(2, round(duration_s * 1000.0 / interval_ms))
            processes = {d.uuid: _process_count(d) for d in stale}
            sums_w = {d.uuid: 0.0 for d in stale}
            host_before = self.host.read(self._clock()) if host_stale and self.host else None
            started_s = time.monotonic()
            for i in range(count):
                if i:
                    time.sleep(interval_ms / 1000.0)
                for d in stale:
                    sums_w[d.uuid] += d.power_instant_w()
            measured_duration_s = time.monotonic() - started_s
            host_after = self.host.read(self._clock()) if host_stale and self.host else None
            measured_at_s = self._clock()
            with self._lock:
                for d in stale:
                    self._baselines[d.uuid] = {
                        "power_w": sums_w[d.uuid] / count,
                        "measured_at_s": measured_at_s,
                        "method": f"idle_mean_{d.power_method}",
                        "samples": count,
                        "duration_s": measured_duration_s,
                        "compute_processes": processes[d.uuid],
                    }
            if self.host is not None and host_before is not None:
                idle = self.host.window(host_before, host_after)
                if idle.energy_j is not None and measured_duration_s > 0:
                    with self._lock:
                        self._baselines[self.host_key] = {
                            "power_w": idle.energy_j / measured_duration_s,
                            "measured_at_s": measured_at_s,
                            "method": f"idle_mean_{idle.source}",
                            "duration_s": measured_duration_s,
                        }
        keys = [d.uuid for d in self._devices] + ([self.host_key] if self._host_readable else [])
        result = {key: self.baseline(key) for key in keys}
        return {key: value for key, value in result.items() if value is not None}

    def wait_until_cool(
        self, target_temp_c: float, max_wait_s: float, poll_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[float, float | None]:
        """Block until every GPU is at or below target_temp_c, or max_wait_s has passed.

        Returns (seconds waited, hottest temperature last seen), for the result row: a run
        that started warm because the wait ran out is visible as such.
        """
        started_s = self._clock()
        while True:
            temps = [s.temperature_c for s in self.sample_once() if s.temperature_c is not None]
            hottest = max(temps, default=None)
            waited_s = self._clock() - started_s
            if hottest is None or hottest <= target_temp_c or waited_s >= max_wait_s:
                return waited_s, hottest
            sleep(poll_s)

    def load_baselines(self, known: dict[str, dict[str, Any]]) -> None:
        """Adopt baselines measured earlier (by another sampler on this node), as if cached here.

        Samplers live as long as one run; the campaign keeps baselines between runs and hands
        them back, so each GPU pays the idle measurement once per TTL, not once per run.
        """
        with self._lock:
            for uuid, entry in known.items():
                fields = {k: v for k, v in entry.items() if k != "age_s"}
                self._baselines[uuid] = fields

    def baseline(self, uuid: str) -> dict[str, Any] | None:
        """Cached idle baseline of one GPU with its age_s, or None if missing or older than the
        TTL."""
        with self._lock:
            cached = self._baselines.get(uuid)
        if cached is None:
            return None
        age_s = self._clock() - cached["measured_at_s"]
        if age_s > self.baseline_ttl_s:
            return None
        return {**cached, "age_s": age_s}

    def environment(self) -> dict[str, dict[str, Any]]:
        """Per-GPU environment facts keyed by UUID (empty when NVML is unavailable)."""
        return {d.uuid: d.environment() for d in self._devices}


def _process_count(device: DeviceReader) -> int | None:
    """Compute processes on the GPU, None where the driver will not say."""
    try:
        return len(device.compute_process_pids())
    except TelemetryError:
        return None
