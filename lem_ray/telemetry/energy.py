"""Energy readings: counter deltas and trapezoid integration of instant power. Pure.

What is derived from them (baseline adjustment, splits, ratios) is lem_ray/measure/energy.py."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from itertools import pairwise


def counter_delta_j(start_mj: int, end_mj: int) -> float:
    """Joules between two counter readings; the counter is 64-bit mJ since driver load, so a
    decrease means the driver was reloaded or the GPU reset, and the window cannot be trusted."""
    if end_mj < start_mj:
        raise ValueError(
            f"energy counter went backwards ({start_mj} -> {end_mj} mJ): driver reload or GPU reset"
        )
    return (end_mj - start_mj) / 1000.0


def trapezoid_energy_j(
    times_s: Sequence[float], powers_w: Sequence[float], start_s: float, end_s: float
) -> float:
    """Integral of power over [start_s, end_s], J, with power linear between samples.

    Samples outside the window only serve to interpolate the power at its edges; before the first
    and after the last sample the power is held at that sample's value.
    """
    if len(times_s) != len(powers_w):
        raise ValueError("times_s and powers_w differ in length")
    if len(times_s) < 2:
        raise ValueError("need at least two power samples to integrate")
    if end_s < start_s:
        raise ValueError(f"window ends ({end_s}) before it starts ({start_s})")

    def power_at(t: float) -> float:
        i = bisect.bisect_right(times_s, t)
        if i == 0:
            return powers_w[0]
        if i == len(times_s):
            return powers_w[-1]
        t0, t1 = times_s[i - 1], times_s[i]
        p0, p1 = powers_w[i - 1], powers_w[i]
        return p1 if t1 == t0 else p0 + (p1 - p0) * (t - t0) / (t1 - t0)

    points = [(start_s, power_at(start_s))]
    points += [(t, p) for t, p in zip(times_s, powers_w) if start_s < t < end_s]
    points.append((end_s, power_at(end_s)))
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in pairwise(points))
