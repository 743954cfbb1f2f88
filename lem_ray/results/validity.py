"""Whether a run's energy figure can be trusted, and the conditions it was taken under."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# NVML clocks-event (throttle) reason bits, nvml.h nvmlClocksEventReason*.
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# The reasons that mean the GPU ran slower than configured: heat or a hardware slowdown.
THROTTLING = 0x8 | 0x20 | 0x40 | 0x80
# The software power cap: the GPU held at its configured power limit, normal at full load (an
# 8 B model at high batch runs there), so it invalidates only when a campaign opts in.
POWER_CAP = 0x4
# Fewer instant-power samples per GPU than this make the integral too coarse to audit the
# counter with (10 Hz sampling: one second of series).
MIN_GAP_SAMPLES_PER_GPU = 10


@dataclass(frozen=True)
class ValidityInputs:
    """The figures of a run its validity flags are decided from."""

    energy_j: float | None
    window_s: float
    min_window_s: float
    throttle_reasons: int
    temperature_start_c: float | None
    temperature_max_c: float | None
    temperature_min_c: float
    temperature_limit_c: float
    avg_power_w: float | None
    power_limit_w: float | None
    baseline_power_w: float | None
    other_process_pids: list[int] | None
    mig_enabled: bool
    warmup_converged: bool | None = None
    """False when a cv warmup gave up before the step latency settled; None when not judged."""
    energy_methods_gap: float | None = None
    max_energy_methods_gap: float = float("inf")
    samples_per_gpu: float = 0.0
    """Instant-power samples per GPU in the window: the integral's resolution."""

    power_cap_invalidates: bool = False
    """validity.power_cap_invalidates: count the software power cap (0x4) as throttling."""
    running_batch_mean: float | None = None
    """The engine's mean running batch over the window, from its scheduler; None: not read."""
    batch_limit: int | None = None
    """The most requests the engine may run at once (max_num_seqs)."""
    saturating: bool = False
    """The run should have kept the engine full (offline, or requests queued in the window)."""
    min_batch_fraction: float = 0.8
    traffic_run: bool = False
    steady_window_s: float | None = None
    """The steady window under traffic; None when the run had none."""
    min_steady_s: float = 30.0
    kv_preemptions: int | None = None
    max_kv_preemptions: int = 0


def energy_methods_gap(energy_j: float | None, integrated_j: float | None,
                       source: str | None, counter_source: str) -> float | None:
    """(counter - integral) / counter: positive when the counter read more. Only where the
    counter gave the figure (on an integrated-power source both methods are one)."""
    if source != counter_source or energy_j is None or integrated_j is None or energy_j <= 0:
        return None
    return (energy_j - integrated_j) / energy_j


def gap_judged(v: ValidityInputs) -> bool:
    """The gap means something only over a window long enough for the power series."""
    return (v.energy_methods_gap is not None and v.window_s >= v.min_window_s
            and v.samples_per_gpu >= MIN_GAP_SAMPLES_PER_GPU)


def validity_flags(v: ValidityInputs) -> list[str]:
    """Every reason the figure is doubtful; an empty list means it is valid."""
    if v.energy_j is None:
        return ["no_energy"]
    flags = []
    if v.window_s < v.min_window_s:
        flags.append("short_window")
    if v.throttle_reasons & (THROTTLING | (POWER_CAP if v.power_cap_invalidates else 0)):
        flags.append("throttled")
    temps = [t for t in (v.temperature_start_c, v.temperature_max_c) if t is not None]
    if any(t < v.temperature_min_c or t > v.temperature_limit_c for t in temps):
        flags.append("temperature_out_of_range")
    if v.avg_power_w is not None and v.power_limit_w and v.avg_power_w > v.power_limit_w:
        flags.append("power_above_limit")
    if v.avg_power_w is not None and v.baseline_power_w and v.avg_power_w < v.baseline_power_w:
        flags.append("power_below_idle")
    if v.other_process_pids:
        flags.append("other_process")
    if v.mig_enabled:
        flags.append("mig")
    if v.warmup_converged is False:
        flags.append("warmup_unsettled")
    if gap_judged(v) and abs(v.energy_methods_gap or 0.0) > v.max_energy_methods_gap:
        flags.append("energy_methods_disagree")
    flags += steady_state_flags(v)
    return flags


def steady_state_flags(v: ValidityInputs) -> list[str]:
    """Whether the window measured the engine in the state it claims: full where the run
    should fill it, long enough under traffic, and without KV-cache preemptions."""
    flags = []
    if (v.saturating and v.running_batch_mean is not None and v.batch_limit
            and v.running_batch_mean < v.min_batch_fraction * v.batch_limit):
        flags.append("unsaturated")
    if v.traffic_run and (v.steady_window_s is None or v.steady_window_s < v.min_steady_s):
        flags.append("short_steady")
    if v.kv_preemptions is not None and v.kv_preemptions > v.max_kv_preemptions:
        flags.append("preempted")
    return flags


def is_valid(flags: list[str]) -> bool | None:
    """None when nothing was measured: there is no figure to judge."""
    return None if flags == ["no_energy"] else not flags


def throttle_seconds(
    samples: list[dict[str, Any]], start_s: float, end_s: float, interval_s: float
) -> dict[str, float]:
    """Seconds each reason was active inside the window: samples x interval, summed over GPUs."""
    seconds: dict[str, float] = {}
    for s in samples:
        if not start_s <= s["t_s"] <= end_s or not s.get("throttle_reasons"):
            continue
        for bit, name in THROTTLE_REASONS.items():
            if s["throttle_reasons"] & bit:
                seconds[name] = seconds.get(name, 0.0) + interval_s
    return seconds


def other_processes(compute_pids: list[int], own_pids: set[int]) -> list[int] | None:
    """PIDs on the run's GPUs that are not the run's own; None when that cannot be told.

    NVML reports PIDs of the host's namespace. When none of them is ours although our
    worker holds the GPU, the node runs us in another PID namespace (a container) and
    the PIDs cannot be matched: then say nothing rather than flag every run.
    """
    found = set(compute_pids)
    if found and not found & own_pids:
        return None
    return sorted(found - own_pids)
