"""Every figure derived from a run's energy windows, in one place: baseline adjustment, the
prefill/decode split, the ratios, each request's share. Pure; docs/metrics.md says in words
what each divides by (keep the two in step).

The readings themselves (counter deltas, instant-power integration) are telemetry's
(`telemetry/energy.py`); what is made of them is here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lem_ray.records import RequestRecord


def adjusted_energy_j(
    energy_j: float | None, baseline_power_w: float | None, duration_s: float
) -> float | None:
    """Energy above idle over the measured window only: raw - P_idle x duration.

    Pass the baseline summed over the same GPUs as energy_j. The result is not clipped: a
    negative value says the baseline was measured warmer than the run and should be looked at.
    """
    if energy_j is None or baseline_power_w is None:
        return None
    return energy_j - baseline_power_w * duration_s


def idle_power_w(baselines: dict[str, dict[str, Any]], keys: Sequence[str]) -> float | None:
    """Idle power summed over `keys` (GPU UUIDs); None unless every one has a baseline: half a
    baseline would make the adjusted energy wrong."""
    if not keys or any(k not in baselines for k in keys):
        return None
    return float(sum(baselines[k]["power_w"] for k in keys))


def split_prefill_decode(
    energy_j: float | None, prefill_window_j: float | None, passes: int
) -> tuple[float | None, float | None]:
    """(prefill J, decode J) of the measured prompts: one prefill pass of the same prompts,
    measured over `passes` repeats and divided back; decode is what the full run used beyond it."""
    if energy_j is None or prefill_window_j is None or passes < 1:
        return None, None
    prefill_j = prefill_window_j / passes
    return prefill_j, energy_j - prefill_j


def energy_metrics(
    energy_j: float | None, duration_s: float, output_tokens: int, num_requests: int
) -> dict[str, float | None]:
    """Ratios over the measured window's energy; null when there is no energy to divide."""
    if energy_j is None:
        return {
            "energy_j_per_output_token": None,
            "energy_j_per_request": None,
            "output_tokens_per_j": None,
            "avg_power_w": None,
        }
    return {
        "energy_j_per_output_token": energy_j / output_tokens if output_tokens else None,
        "energy_j_per_request": energy_j / num_requests if num_requests else None,
        "output_tokens_per_j": output_tokens / energy_j if energy_j > 0 else None,
        "avg_power_w": energy_j / duration_s if duration_s > 0 else None,
    }


def attribute_energy(
    records: list[RequestRecord],
    energy_j: float | None,
    prefill_j: float | None,
    decode_j: float | None,
) -> list[float | None]:
    """Each request's share of the window's energy (the shares add up to energy_j).

    With a prefill/decode split: prefill energy by input-token share plus decode energy by
    output-token share. Without it: the window's energy by output-token share.
    """
    if energy_j is None:
        return [None] * len(records)
    total_in = sum(r.input_tokens for r in records)
    total_out = sum(r.output_tokens for r in records)
    if prefill_j is not None and decode_j is not None and total_in and total_out:
        return [prefill_j * r.input_tokens / total_in + decode_j * r.output_tokens / total_out
                for r in records]
    if total_out:
        return [energy_j * r.output_tokens / total_out for r in records]
    return [None] * len(records)


@dataclass(frozen=True)
class EnergyFigures:
    """The measured window's energy, split, adjusted and divided: what the experiments row
    and a notebook user read. None where the machine could not measure (never a made-up
    number); window_s is the energy window's own length (the sampler's clock)."""

    energy_j: float | None
    window_s: float
    output_tokens: int
    num_requests: int
    baseline_power_w: float | None
    adjusted_j: float | None
    prefill_j: float | None
    decode_j: float | None
    j_per_output_token: float | None
    j_per_request: float | None
    output_tokens_per_j: float | None
    avg_power_w: float | None

    @property
    def adjusted_j_per_output_token(self) -> float | None:
        """Energy above the idle baseline per output token; None without a baseline or
        tokens."""
        if self.adjusted_j is None or not self.output_tokens:
            return None
        return self.adjusted_j / self.output_tokens

    def ratios(self) -> dict[str, float | None]:
        """The ratio columns of the experiments table, by name."""
        return {
            "energy_j_per_output_token": self.j_per_output_token,
            "energy_j_per_request": self.j_per_request,
            "output_tokens_per_j": self.output_tokens_per_j,
            "avg_power_w": self.avg_power_w,
        }


def energy_figures(
    energy_j: float | None, window_s: float, output_tokens: int, num_requests: int,
    baseline_power_w: float | None = None, prefill_window_j: float | None = None,
    prefill_passes: int = 0,
) -> EnergyFigures:
    """All of a window's figures from its energy, length, tokens, idle power and prefill window."""
    prefill_j, decode_j = split_prefill_decode(energy_j, prefill_window_j, prefill_passes)
    ratios = energy_metrics(energy_j, window_s, output_tokens, num_requests)
    return EnergyFigures(
        energy_j=energy_j,
        window_s=window_s,
        output_tokens=output_tokens,
        num_requests=num_requests,
        baseline_power_w=baseline_power_w,
        adjusted_j=adjusted_energy_j(energy_j, baseline_power_w, window_s),
        prefill_j=prefill_j,
        decode_j=decode_j,
        j_per_output_token=ratios["energy_j_per_output_token"],
        j_per_request=ratios["energy_j_per_request"],
        output_tokens_per_j=ratios["output_tokens_per_j"],
        avg_power_w=ratios["avg_power_w"],
    )
