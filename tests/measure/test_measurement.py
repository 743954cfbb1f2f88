"""The measurement arithmetic: warmup convergence, validity, attribution, prefill/decode split."""

from __future__ import annotations

import itertools
import math

import pytest

from lem_ray.config.experiment import WarmupConfig
from lem_ray.measure.energy import (
    adjusted_energy_j,
    attribute_energy,
    energy_metrics,
    split_prefill_decode,
)
from lem_ray.measure.warmup import coefficient_of_variation, judged_latencies, run_warmup
from lem_ray.records import RequestRecord
from lem_ray.results.metrics import request_metrics, request_rows
from lem_ray.results.validity import (
    ValidityInputs,
    is_valid,
    other_processes,
    throttle_seconds,
    validity_flags,
)


class ScriptedEngine:
    """Stands in for a backend whose step time per token follows a script, by sleeping."""

    def __init__(self, ms_per_token: list[float]) -> None:
        self.script = itertools.chain(ms_per_token, itertools.repeat(ms_per_token[-1]))
        self.calls: list[int] = []

    def __call__(self, prompts: list[str]) -> list[RequestRecord]:
        import time

        delay_ms = next(self.script)
        time.sleep(delay_ms * 4 / 1000)
        self.calls.append(len(prompts))
        return [RequestRecord(i, 3, 4, delay_ms * 4) for i in range(len(prompts))]


def test_cv_warmup_stops_once_latencies_settle() -> None:
    engine = ScriptedEngine([40.0, 25.0, 10.0, 10.0, 10.0, 10.0])
    cfg = WarmupConfig(mode="cv", window=3, cv_threshold=0.2, max_steps=100)
    outcome = run_warmup(engine, ["a", "b", "c"], cfg, batch_size=2)
    assert outcome.converged is True
    assert outcome.steps == 5 and outcome.requests == 10
    assert outcome.final_cv < 0.2
    assert engine.calls == [2, 2, 2, 2, 2]


def test_cv_warmup_never_judges_the_first_step() -> None:
    """A slow first step (compilation) followed by steady ones: steps 2-4 alone make the window,
    so it settles after four steps, not three."""
    engine = ScriptedEngine([200.0, 50.0, 50.0, 50.0])
    cfg = WarmupConfig(mode="cv", window=3, cv_threshold=0.2, max_steps=100)
    outcome = run_warmup(engine, ["a"], cfg, batch_size=1)
    assert outcome.converged is True and outcome.steps == 4
    assert judged_latencies([200.0, 10.0, 11.0], window=3) == [10.0, 11.0]


def test_cv_warmup_sends_only_full_steps_and_gives_up_at_max_steps() -> None:
    engine = ScriptedEngine([10.0, 40.0, 10.0, 40.0])
    cfg = WarmupConfig(mode="cv", window=3, cv_threshold=0.01, max_steps=3)
    outcome = run_warmup(engine, ["a"], cfg, batch_size=3)
    assert outcome.converged is False
    assert engine.calls == [3, 3, 3] and outcome.requests == 9
    assert outcome.final_cv is not None and outcome.final_cv > 0.01


def test_cv_warmup_gives_up_at_max_s() -> None:
    engine = ScriptedEngine([10.0, 40.0])
    cfg = WarmupConfig(mode="cv", window=2, cv_threshold=0.01, max_steps=1000, max_s=0.2)
    outcome = run_warmup(engine, ["a"], cfg, batch_size=1)
    assert outcome.converged is False
    assert 2 <= outcome.steps < 1000 and outcome.duration_s >= 0.2


def test_fixed_warmup_rounds_up_to_full_steps() -> None:
    engine = ScriptedEngine([5.0])
    outcome = run_warmup(engine, ["a", "b"], WarmupConfig(mode="fixed", requests=5), batch_size=2)
    assert engine.calls == [2, 2, 2] and outcome.requests == 6 and outcome.converged is None
    none = run_warmup(engine, ["a"], WarmupConfig(mode="fixed", requests=0), batch_size=2)
    assert none.requests == 0 and none.final_cv is None


def test_coefficient_of_variation() -> None:
    assert coefficient_of_variation([2.0, 4.0]) == pytest.approx(1.4142135 / 3)
    assert coefficient_of_variation([1.0]) is None
    assert coefficient_of_variation([0.0, 0.0]) is None, "no mean to divide by"
    assert coefficient_of_variation([0.25, 0.75]) == pytest.approx(0.3535534 / 0.5)


class ClockedEngine:
    """A backend on a manual clock: each step advances it by its scripted ms per output token
    times the step's tokens (`tokens` a request, in turn; a step of none takes one token's
    time), and records its prompts."""

    def __init__(self, ms_per_token: list[float], tokens: tuple[int, ...] = (4,)) -> None:
        self.script = itertools.chain(ms_per_token, itertools.repeat(ms_per_token[-1]))
        self.tokens = itertools.cycle(tokens)
        self.now_s = 1024.0
        self.steps: list[list[str]] = []

    def perf_counter(self) -> float:
        return self.now_s

    def __call__(self, prompts: list[str]) -> list[RequestRecord]:
        tokens = next(self.tokens)
        self.now_s += next(self.script) * max(1, tokens * len(prompts)) / 1000
        self.steps.append(list(prompts))
        return [RequestRecord(i, 3, tokens, 1.0) for i in range(len(prompts))]


def clocked(monkeypatch: pytest.MonkeyPatch, ms_per_token: list[float],
            tokens: tuple[int, ...] = (4,)) -> ClockedEngine:
    from types import SimpleNamespace

    import lem_ray.measure.warmup as warmup

    engine = ClockedEngine(ms_per_token, tokens)
    monkeypatch.setattr(warmup, "time", SimpleNamespace(perf_counter=engine.perf_counter))
    return engine


def test_warmup_on_a_manual_clock_settles_at_the_first_steady_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps 2-4 are 250, 125, 125 ms/token: unsettled; steps 3-5 are 125 each: settled. The
    prompts go round in full steps of the measured shape; the duration is the clock's."""
    engine = clocked(monkeypatch, [1000.0, 250.0, 125.0, 125.0, 125.0, 1000.0])
    cfg = WarmupConfig(mode="cv", window=3, cv_threshold=0.01, max_steps=30, max_s=60)
    outcome = run_warmup(engine, ["a", "b", "c"], cfg, batch_size=2)
    assert outcome.converged is True and outcome.final_cv == 0.0
    assert outcome.steps == 5 and outcome.requests == 10
    assert engine.steps == [["a", "b"], ["c", "a"], ["b", "c"], ["a", "b"], ["c", "a"]]
    assert outcome.duration_s == 13.0


def test_warmup_settles_only_below_its_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window whose CV equals cv_threshold has not settled: the comparison is strict."""
    latencies = [500.0, 125.0, 187.5]
    cv = coefficient_of_variation(latencies[1:])
    at = run_warmup(clocked(monkeypatch, latencies), ["a"],
                    WarmupConfig(window=2, cv_threshold=cv, max_steps=3), batch_size=1)
    assert at.converged is False and at.steps == 3 and at.final_cv == cv
    above = run_warmup(clocked(monkeypatch, latencies), ["a"],
                       WarmupConfig(window=2, cv_threshold=math.nextafter(cv, 1.0), max_steps=3),
                       batch_size=1)
    assert above.converged is True and above.steps == 3


def test_warmup_gives_up_at_max_steps_and_at_max_s_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    unsteady = [125.0, 500.0, 125.0, 500.0, 125.0]
    capped = run_warmup(clocked(monkeypatch, unsteady), ["a"],
                        WarmupConfig(window=2, cv_threshold=0.01, max_steps=4), batch_size=1)
    assert capped.converged is False and capped.steps == 4 and capped.final_cv > 0.01
    # steps of 1, 0.5 and 1.5 s (4 tokens each): max_s 3 is reached by the third step exactly
    timed = run_warmup(clocked(monkeypatch, [250.0, 125.0, 375.0, 250.0]), ["a"],
                       WarmupConfig(window=2, cv_threshold=0.01, max_steps=100, max_s=3),
                       batch_size=1)
    assert timed.converged is False and timed.steps == 3 and timed.duration_s == 3.0


def test_fixed_warmup_judges_nothing_and_reports_the_last_windows_cv(
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine = clocked(monkeypatch, [1000.0, 125.0, 125.0, 125.0, 250.0])
    outcome = run_warmup(engine, ["a", "b"], WarmupConfig(mode="fixed", requests=9, window=2),
                         batch_size=2)
    assert outcome.steps == 5 and outcome.requests == 10 and outcome.converged is None
    assert outcome.final_cv == coefficient_of_variation([125.0, 250.0])


def test_a_steps_latency_is_per_output_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps whose answers ended early (fewer tokens) are as steady as full ones at the same
    time per token; a step without any output token counts its time as one token's, not a
    division by zero."""
    engine = clocked(monkeypatch, [62.5, 125.0], tokens=(4, 2, 4, 1))
    outcome = run_warmup(engine, ["a"], WarmupConfig(window=3, cv_threshold=0.01), batch_size=2)
    assert outcome.converged is True and outcome.steps == 4 and outcome.final_cv == 0.0
    none = clocked(monkeypatch, [62.5, 125.0], tokens=(4, 0, 4, 0))
    outcome = run_warmup(none, ["a"], WarmupConfig(window=3, cv_threshold=0.01), batch_size=1)
    assert outcome.converged is True and outcome.steps == 4 and outcome.final_cv == 0.0


def test_a_warmup_window_below_two_steps_is_refused_naming_the_key() -> None:
    """The CV of one step does not exist: a window of 1 would never settle."""
    from pydantic import ValidationError

    from lem_ray.config.experiment import ExperimentConfig
    from lem_ray.config.loading import error_from_validation

    assert WarmupConfig(window=2).window == 2
    for window in (1, 0, -3):
        with pytest.raises(ValidationError) as info:
            ExperimentConfig.model_validate({"model_name": "m", "backend": "pytorch",
                                             "warmup": {"window": window}})
        message = str(error_from_validation(info.value, ExperimentConfig, "base"))
        assert message.startswith("base.warmup.window:") and "2" in message
        assert "\n" not in message


def _inputs(**overrides) -> ValidityInputs:
    base = dict(
        energy_j=1000.0, window_s=10.0, min_window_s=5.0, throttle_reasons=0x1,
        temperature_start_c=40.0, temperature_max_c=60.0, temperature_min_c=20.0,
        temperature_limit_c=95.0, avg_power_w=300.0, power_limit_w=700.0,
        baseline_power_w=80.0, other_process_pids=[], mig_enabled=False,
    )
    return ValidityInputs(**{**base, **overrides})


@pytest.mark.parametrize(
    ("overrides", "flags"),
    [
        ({}, []),
        ({"window_s": 2.0}, ["short_window"]),
        ({"throttle_reasons": 0x4}, []),
        ({"throttle_reasons": 0x4, "power_cap_invalidates": True}, ["throttled"]),
        ({"throttle_reasons": 0x1 | 0x2 | 0x10 | 0x100, "power_cap_invalidates": True}, []),
        ({"throttle_reasons": 0x40 | 0x1}, ["throttled"]),
        ({"temperature_max_c": 96.0}, ["temperature_out_of_range"]),
        ({"temperature_start_c": 15.0}, ["temperature_out_of_range"]),
        ({"avg_power_w": 720.0}, ["power_above_limit"]),
        ({"avg_power_w": 70.0}, ["power_below_idle"]),
        ({"other_process_pids": [4242]}, ["other_process"]),
        ({"other_process_pids": None}, []),
        ({"mig_enabled": True}, ["mig"]),
        ({"window_s": 1.0, "mig_enabled": True}, ["short_window", "mig"]),
        ({"warmup_converged": False}, ["warmup_unsettled"]),
        ({"warmup_converged": None}, []),
        ({"warmup_converged": True}, []),
        ({"energy_j": None, "window_s": 1.0}, ["no_energy"]),
        # on the limits is inside them (NVML reports whole degrees, so equality happens)
        ({"window_s": 5.0}, []),
        ({"temperature_start_c": 20.0, "temperature_max_c": 95.0}, []),
        ({"temperature_start_c": 19.0, "temperature_max_c": 30.0}, ["temperature_out_of_range"]),
        ({"temperature_start_c": None, "temperature_max_c": 97.0}, ["temperature_out_of_range"]),
        ({"avg_power_w": 700.0}, []),
        ({"avg_power_w": 80.0}, []),
        ({"avg_power_w": 70.0, "baseline_power_w": None}, []),
        ({"avg_power_w": 720.0, "power_limit_w": None}, []),
        ({"avg_power_w": None}, []),
    ],
)
def test_validity_flags(overrides: dict, flags: list[str]) -> None:
    got = validity_flags(_inputs(**overrides))
    assert got == flags
    assert is_valid(got) is (None if flags == ["no_energy"] else not flags)


def test_throttle_seconds_counts_samples_inside_window() -> None:
    samples = [
        {"t_s": 0.5, "throttle_reasons": 0x4},      # before the window
        {"t_s": 1.0, "throttle_reasons": 0x4},
        {"t_s": 1.1, "throttle_reasons": 0x4 | 0x20},
        {"t_s": 1.2, "throttle_reasons": 0},
        {"t_s": 1.3, "throttle_reasons": None},
        {"t_s": 2.5, "throttle_reasons": 0x20},     # after
    ]
    got = throttle_seconds(samples, 1.0, 2.0, 0.1)
    assert got == {"sw_power_cap": pytest.approx(0.2), "sw_thermal_slowdown": pytest.approx(0.1)}


# nvml.h, nvmlClocksEventReason*: bit -> (name, a thermal or hardware slowdown)
NVML_CLOCKS_EVENT_REASONS = {
    0x1: ("gpu_idle", False), 0x2: ("applications_clocks_setting", False),
    0x4: ("sw_power_cap", False), 0x8: ("hw_slowdown", True), 0x10: ("sync_boost", False),
    0x20: ("sw_thermal_slowdown", True), 0x40: ("hw_thermal_slowdown", True),
    0x80: ("hw_power_brake_slowdown", True), 0x100: ("display_clock_setting", False),
}


@pytest.mark.parametrize("bit", sorted(NVML_CLOCKS_EVENT_REASONS))
def test_each_clocks_event_bit_has_its_name_and_weight(bit: int) -> None:
    name, throttling = NVML_CLOCKS_EVENT_REASONS[bit]
    assert throttle_seconds([{"t_s": 1.0, "throttle_reasons": bit}], 0.0, 2.0, 0.5) == {name: 0.5}
    flags = validity_flags(_inputs(throttle_reasons=bit))
    assert flags == (["throttled"] if throttling else [])
    opted_in = validity_flags(_inputs(throttle_reasons=bit, power_cap_invalidates=True))
    assert opted_in == (["throttled"] if throttling or bit == 0x4 else [])


def test_other_processes() -> None:
    assert other_processes([10, 11, 99], {10, 11}) == [99]
    assert other_processes([10], {10, 12}) == []
    assert other_processes([500, 501], {10}) is None, "another PID namespace: cannot tell"
    assert other_processes([], {10}) == []


def test_baseline_adjustment_uses_the_measured_window_only() -> None:
    # 1000 J over a 10 s window at 80 W idle: 200 J of work above idle.
    assert adjusted_energy_j(1000.0, 80.0, 10.0) == pytest.approx(200.0)
    assert adjusted_energy_j(None, 80.0, 10.0) is None


def test_prefill_decode_split_and_attribution() -> None:
    prefill_j, decode_j = split_prefill_decode(1000.0, 300.0, passes=3)
    assert (prefill_j, decode_j) == (pytest.approx(100.0), pytest.approx(900.0))
    assert split_prefill_decode(1000.0, None, 0) == (None, None)
    records = [RequestRecord(0, 30, 10, 1.0), RequestRecord(1, 10, 30, 1.0)]
    shares = attribute_energy(records, 1000.0, prefill_j, decode_j)
    assert shares == [pytest.approx(75 + 225), pytest.approx(25 + 675)]
    assert sum(shares) == pytest.approx(1000.0)
    by_output = attribute_energy(records, 1000.0, None, None)
    assert by_output == [pytest.approx(250.0), pytest.approx(750.0)]
    assert attribute_energy(records, None, None, None) == [None, None]


def test_ratios_divide_by_what_they_say() -> None:
    records = [RequestRecord(0, 100, 40, 500.0, 50.0, [10.0] * 39),
               RequestRecord(1, 200, 60, 700.0, 70.0, [20.0] * 59)]
    req = request_metrics(records, duration_s=2.0)
    assert req["output_tokens"] == 100 and req["input_tokens"] == 300
    assert req["throughput_tok_s"] == 50.0, "output tokens per second only"
    assert req["ttft_ms_p50"] == pytest.approx(60.0)
    assert req["itl_ms_p50"] == 20.0 and req["itl_ms_mean"] == pytest.approx((390 + 1180) / 98)
    ratios = energy_metrics(500.0, 2.0, req["output_tokens"], req["num_requests"])
    assert ratios == {"energy_j_per_output_token": 5.0, "energy_j_per_request": 250.0,
                      "output_tokens_per_j": 0.2, "avg_power_w": 250.0}


def test_mean_gaps_only_give_the_pooled_mean_and_no_percentiles() -> None:
    """Requests known by their mean gap (vLLM per_request timing) weigh in by their gap
    count, so the mean equals the pooled one of the same gaps; percentiles stay null."""
    per_token = [RequestRecord(0, 1, 40, 0.0, 1.0, [10.0] * 39),
                 RequestRecord(1, 1, 60, 0.0, 1.0, [20.0] * 59)]
    per_request = [RequestRecord(0, 1, 40, 0.0, 1.0, itl_mean_ms=10.0),
                   RequestRecord(1, 1, 60, 0.0, 1.0, itl_mean_ms=20.0)]
    pooled = request_metrics(per_token, 1.0)
    means = request_metrics(per_request, 1.0)
    assert means["itl_ms_mean"] == pytest.approx(pooled["itl_ms_mean"])
    assert [means[f"itl_ms_p{p}"] for p in (50, 90, 99)] == [None, None, None]
    rows = request_rows(per_request, 0.0, [None, None])
    assert [(r["itl_ms_mean"], r["itl_ms_p50"], r["itl_ms_max"]) for r in rows] == [
        (10.0, None, None), (20.0, None, None)]


def test_latency_percentiles_are_the_named_ones() -> None:
    """p50/p90/p99 of 11 known values (numpy's linear interpolation): each column is the
    percentile its name says."""
    records = [
        RequestRecord(i, 1, 2, e2e_ms=10.0 * (i + 1), ttft_ms=float(i + 1), itl_ms=[float(i + 1)])
        for i in range(11)
    ]
    req = request_metrics(records, duration_s=1.0)
    for prefix, scale in (("ttft_ms", 1.0), ("itl_ms", 1.0), ("e2e_ms", 10.0)):
        assert [req[f"{prefix}_{stat}"] for stat in ("mean", "p50", "p90", "p99")] == pytest.approx(
            [6.0 * scale, 6.0 * scale, 10.0 * scale, 10.9 * scale]), prefix
    assert req["requests_per_s"] == 11.0 and req["num_requests"] == 11


def test_no_output_tokens_no_energy_shares() -> None:
    records = [RequestRecord(0, 30, 0, 1.0), RequestRecord(1, 10, 0, 1.0)]
    assert attribute_energy(records, 1000.0, None, None) == [None, None]
    assert attribute_energy(records, 1000.0, 400.0, 600.0) == [None, None]


def test_nothing_to_divide_by_gives_null_not_an_error() -> None:
    """A zero-length window or zero energy makes the ratio null; a crash would fail the run."""
    records = [RequestRecord(0, 10, 4, 100.0, 10.0, [30.0] * 3)]
    req = request_metrics(records, duration_s=0.0)
    assert req["throughput_tok_s"] is None and req["requests_per_s"] is None
    assert request_metrics(records, duration_s=2.0)["requests_per_s"] == 0.5
    assert energy_metrics(0.0, 0.0, 4, 1) == {
        "energy_j_per_output_token": 0.0,
        "energy_j_per_request": 0.0,
        "output_tokens_per_j": None,
        "avg_power_w": None,
    }
    assert energy_metrics(None, 2.0, 4, 1) == {
        "energy_j_per_output_token": None,
        "energy_j_per_request": None,
        "output_tokens_per_j": None,
        "avg_power_w": None,
    }
    assert energy_metrics(8.0, 2.0, 0, 0)["energy_j_per_output_token"] is None
    assert energy_metrics(0.5, 2.0, 4, 1)["output_tokens_per_j"] == 8.0, "under a joule is a figure"


def test_one_prefill_pass_is_enough() -> None:
    assert split_prefill_decode(1000.0, 300.0, 1) == (300.0, 700.0)
    assert split_prefill_decode(1000.0, 300.0, 0) == (None, None)


def test_request_rows() -> None:
    records = [RequestRecord(3, 12, 5, 90.0, 20.0, [1.0, 2.0, 3.0, 10.0], start_s=105.5),
               RequestRecord(4, 7, 1, 15.0, 15.0, [], start_s=100.25)]
    rows = request_rows(records, window_start_s=100.0, energies_j=[6.0, None])
    assert rows == [
        {
            "request_index": 3,
            "input_tokens": 12,
            "output_tokens": 5,
            "ttft_ms": 20.0,
            "itl_ms_mean": 4.0,
            "itl_ms_p50": 2.5,
            "itl_ms_max": 10.0,
            "e2e_ms": 90.0,
            "start_s": 5.5,
            "energy_j": 6.0,
        },
        {
            "request_index": 4,
            "input_tokens": 7,
            "output_tokens": 1,
            "ttft_ms": 15.0,
            "itl_ms_mean": None,
            "itl_ms_p50": None,
            "itl_ms_max": None,
            "e2e_ms": 15.0,
            "start_s": 0.25,
            "energy_j": None,
        },
    ]
