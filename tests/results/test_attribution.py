"""Per-request energy by engine step, on steps worked out by hand; the two-method audit."""

from __future__ import annotations

from itertools import pairwise

import pytest

from lem_ray.records import RequestRecord
from lem_ray.results.attribution import (
    Step,
    attribute_by_step,
    attribute_steps,
    step_energies_j,
    steps_from_tokens,
    token_times_s,
)
from lem_ray.results.validity import ValidityInputs, energy_methods_gap, validity_flags

# Window [0, 1] s. Request 0 (4 input tokens) has tokens at 0.2, 0.4, 0.6; request 1 (2 input
# tokens) arrives later, tokens at 0.4, 0.6, 0.8. The last step runs on to the window's end.
TOKENS = [[0.2, 0.4, 0.6], [0.4, 0.6, 0.8]]
INPUTS = [4, 2]
STEPS = [Step(0.0, 0.2, {0: 4}), Step(0.2, 0.4, {0: 1, 1: 2}), Step(0.4, 0.6, {0: 1, 1: 1}),
         Step(0.6, 1.0, {1: 1})]


def test_steps_at_distinct_token_times_prefill_weighted_by_its_tokens() -> None:
    assert steps_from_tokens(TOKENS, INPUTS, 0.0, 1.0) == STEPS


def test_constant_power_scaled_to_the_counter() -> None:
    """100 W over 1 s integrates to 100 J; the counter read 120 J, so each step is x1.2:
    24, 24, 24, 48 J. Request 0: 24 + 24/3 + 24/2 = 44; request 1: 16 + 12 + 48 = 76."""
    series = {"gpu": [(0.0, 100.0), (1.0, 100.0)]}
    energies = step_energies_j(STEPS, series, 120.0)
    assert energies == pytest.approx([24.0, 24.0, 24.0, 48.0])
    shares = attribute_steps(STEPS, energies, 2)
    assert shares == pytest.approx([44.0, 76.0])
    assert sum(shares) == pytest.approx(120.0)


def test_power_ramp_weights_the_later_steps() -> None:
    """0 -> 200 W linearly: steps of 4, 12, 20, 64 J (100 J, the counter's figure).
    Request 0: 4 + 12/3 + 10 = 18; request 1: 8 + 10 + 64 = 82 (token share would say 50/50
    of decode)."""
    series = {"gpu0": [(0.0, 0.0), (1.0, 100.0)], "gpu1": [(0.0, 0.0), (1.0, 100.0)]}
    energies = step_energies_j(STEPS, series, 100.0)
    assert energies == pytest.approx([4.0, 12.0, 20.0, 64.0])
    assert attribute_steps(STEPS, energies, 2) == pytest.approx([18.0, 82.0])


def record(index: int, start_s: float, times: list[float], inputs: int) -> RequestRecord:
    return RequestRecord(index=index, input_tokens=inputs, output_tokens=len(times),
                         e2e_ms=(times[-1] - start_s) * 1000, ttft_ms=(times[0] - start_s) * 1000,
                         itl_ms=[(b - a) * 1000 for a, b in pairwise(times)], start_s=start_s)


def test_records_on_the_perf_clock_moved_onto_the_samplers() -> None:
    records = [record(0, 0.0, TOKENS[0], 4), record(1, 0.3, TOKENS[1], 2)]
    assert token_times_s(records[1]) == pytest.approx(TOKENS[1])
    series = {"gpu": [(5000.0, 100.0), (5001.0, 100.0)]}
    shares = attribute_by_step(records, 5000.0, 5001.0, 5000.0, 120.0, series)
    assert shares == pytest.approx([44.0, 76.0])


def test_step_method_does_not_apply() -> None:
    stamped = record(0, 0.0, [0.2, 0.4], 3)
    end_only = RequestRecord(index=1, input_tokens=3, output_tokens=4, e2e_ms=900.0, ttft_ms=100.0,
                             itl_mean_ms=200.0, start_s=0.0)
    series = {"gpu": [(0.0, 100.0), (1.0, 100.0)]}
    assert token_times_s(end_only) is None
    assert attribute_by_step([stamped, end_only], 0.0, 1.0, 0.0, 100.0, series) is None
    assert attribute_by_step([stamped], 0.0, 1.0, 0.0, None, series) is None, "no energy"
    assert attribute_by_step([stamped], 0.0, 1.0, 0.0, 100.0, {"gpu": [(0.0, 100.0)]}) is None
    assert attribute_by_step([stamped], 0.0, 1.0, 0.0, 100.0, series) == pytest.approx([100.0])


def inputs(gap: float | None, window_s: float = 10.0, samples: float = 100) -> ValidityInputs:
    return ValidityInputs(
        energy_j=1000.0, window_s=window_s, min_window_s=5.0, throttle_reasons=0,
        temperature_start_c=50.0, temperature_max_c=60.0, temperature_min_c=20.0,
        temperature_limit_c=95.0, avg_power_w=100.0, power_limit_w=700.0, baseline_power_w=60.0,
        other_process_pids=[], mig_enabled=False, energy_methods_gap=gap,
        max_energy_methods_gap=0.02, samples_per_gpu=samples)


def test_gap_sign_denominator_and_flag() -> None:
    assert energy_methods_gap(1000.0, 993.3, "nvml_counter", "nvml_counter") == pytest.approx(
        0.0067
    )
    assert energy_methods_gap(1000.0, 1030.0, "nvml_counter", "nvml_counter") == pytest.approx(
        -0.03
    )
    assert energy_methods_gap(1000.0, 1000.0, "nvml_power_integrated", "nvml_counter") is None
    assert energy_methods_gap(1000.0, None, "nvml_counter", "nvml_counter") is None
    assert validity_flags(inputs(-0.0067)) == []
    assert validity_flags(inputs(-0.03)) == ["energy_methods_disagree"]
    assert validity_flags(inputs(0.021)) == ["energy_methods_disagree"]
    assert validity_flags(inputs(-0.03, samples=9)) == [], "too few samples to judge"
    assert validity_flags(inputs(-0.03, window_s=4.0)) == ["short_window"]
    assert validity_flags(inputs(None)) == []


def test_one_engine_steps_tokens_a_fraction_of_a_ms_apart_are_one_step() -> None:
    """vLLM's engine stamps moved onto the local clock per request: one step's tokens differ by
    less than the resolution, and share that step's energy instead of splitting it in slivers."""
    tokens = [[0.2, 0.6], [0.2004, 0.6003]]
    steps = steps_from_tokens(tokens, [1, 1], 0.0, 1.0)
    assert steps == [Step(0.0, 0.2004, {0: 1, 1: 1}), Step(0.2004, 1.0, {0: 1, 1: 1})]
    apart = steps_from_tokens(tokens, [1, 1], 0.0, 1.0, resolution_s=0.0001)
    assert len(apart) == 4
