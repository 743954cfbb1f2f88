"""Each request's share of a measured window's GPU energy, resolved in time (docs/metrics.md).

Where every request's tokens are stamped, the window is cut into engine steps at the distinct
token times; each step's energy comes from the instant-power series, scaled so the steps add
up to the window's counter energy, and is split among the requests that produced a token in
that step: a request's first token weighs its input tokens (the prefill it paid for), every
later token weighs 1. Pure: plain numbers in, numbers out.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from lem_ray.records import RequestRecord
from lem_ray.telemetry.energy import trapezoid_energy_j

STEP = "step"
TOKEN_SHARE = "token_share"


@dataclass(frozen=True)
class Step:
    """(start_s, end_s] of one engine step, and the weight of each request (by position) in it."""

    start_s: float
    end_s: float
    weights: dict[int, float] = field(default_factory=dict)


def token_times_s(record: RequestRecord) -> list[float] | None:
    """Every output token's time (the record's clock), or None unless each token is stamped."""
    if record.ttft_ms is None or record.output_tokens < 1 \
            or len(record.itl_ms) != record.output_tokens - 1:
        return None
    times = [record.start_s + record.ttft_ms / 1000]
    for gap_ms in record.itl_ms:
        times.append(times[-1] + gap_ms / 1000)
    return times


STEP_RESOLUTION_S = 0.001
"""Token times this close to a step's first are that step's: one engine step's tokens, each
request's moved onto the local clock by its own TTFT, land a fraction of a millisecond apart."""


def steps_from_tokens(
    token_times: Sequence[Sequence[float]], input_tokens: Sequence[int],
    window_start_s: float, window_end_s: float, resolution_s: float = STEP_RESOLUTION_S,
) -> list[Step]:
    """Steps ending at the token times (clamped into the window; times within resolution_s of
    a step's first are one step, ending at the last of them); the first step begins at the
    window's start, the last runs on to its end (the final synchronisation is its work)."""
    def clamp(t: float) -> float:
        return min(max(t, window_start_s), window_end_s)

    firsts: list[float] = []
    ends: list[float] = []
    for t in sorted({clamp(t) for times in token_times for t in times}):
        if firsts and t - firsts[-1] <= resolution_s:
            ends[-1] = t
        else:
            firsts.append(t)
            ends.append(t)
    if not ends:
        return []
    starts = [window_start_s, *ends[:-1]]
    weights: list[dict[int, float]] = [{} for _ in ends]
    for i, times in enumerate(token_times):
        for j, t in enumerate(times):
            k = bisect.bisect_right(firsts, clamp(t)) - 1
            weight = max(input_tokens[i], 1) if j == 0 else 1
            weights[k][i] = weights[k].get(i, 0.0) + weight
    bounds = [*ends[:-1], window_end_s]
    return [Step(a, b, w) for a, b, w in zip(starts, bounds, weights)]


def attribute_steps(
    steps: Sequence[Step], step_energies_j: Sequence[float], requests: int
) -> list[float]:
    """Each request's energy: every step's energy split by the weights of the requests it served."""
    shares = [0.0] * requests
    for step, energy_j in zip(steps, step_energies_j):
        total = sum(step.weights.values())
        for i, weight in step.weights.items():
            shares[i] += energy_j * weight / total
    return shares


def step_energies_j(
    steps: Sequence[Step], series: dict[str, list[tuple[float, float]]], window_energy_j: float,
) -> list[float] | None:
    """Each step's energy from the power series (summed over GPUs), scaled so that the steps
    add up to window_energy_j; None when the series cannot say (too few samples, no power)."""
    if not series or any(len(points) < 2 for points in series.values()):
        return None
    raw = [
        sum(
            trapezoid_energy_j([t for t, _ in points], [p for _, p in points], s.start_s, s.end_s)
            for points in series.values()
        )
        for s in steps
    ]
    total = sum(raw)
    if total <= 0:
        return None
    return [e * window_energy_j / total for e in raw]


def attribute_by_step(
    records: Sequence[RequestRecord], window_start_s: float, window_end_s: float,
    epoch_minus_perf_s: float, energy_j: float | None,
    series: dict[str, list[tuple[float, float]]],
) -> list[float] | None:
    """Per-request energy by step, or None where the step method cannot apply (a request
    without every token stamped, no energy, or a power series that cannot resolve the steps).

    Window edges and the series are epoch seconds of the node; the records' perf_counter
    times are moved onto them by epoch_minus_perf_s."""
    if energy_j is None or not records:
        return None
    stamped = [token_times_s(r) for r in records]
    if any(times is None for times in stamped):
        return None
    token_times = [[t + epoch_minus_perf_s for t in times or []] for times in stamped]
    steps = steps_from_tokens(token_times, [r.input_tokens for r in records],
                              window_start_s, window_end_s)
    energies = step_energies_j(steps, series, energy_j)
    if energies is None:
        return None
    return attribute_steps(steps, energies, len(records))
