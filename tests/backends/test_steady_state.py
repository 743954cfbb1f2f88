"""Steady state checked, not assumed: the engine's own per-step scheduler stats (vLLM 0.26.0's
names, strict fakes), the load over the window, and the flags each fires on its condition."""

from __future__ import annotations

import types
from typing import Any

import pytest

from lem_ray.backends.base import DeviceInfo
from lem_ray.backends.traffic import EngineLoad, SteadyWindow, StepLoad, engine_load
from lem_ray.backends.vllm.backend import VLLMBackend
from lem_ray.backends.vllm.stats import SchedulerTap
from lem_ray.results.validity import ValidityInputs, validity_flags
from tests.fakes.clock import ManualClock
from tests.fakes.llm_apis import (
    VLLMIterationStats,
    VLLMSchedulerStats,
    VLLMStatLoggerManager,
    vllm_config,
)
from tests.fakes.vllm_engine import SimulatedEngine


def record_step(manager: Any, running: int, waiting: int, preempted: int = 0) -> None:
    """What LLMEngine.step() does once per step with stats on (keywords only)."""
    manager.record(
        scheduler_stats=VLLMSchedulerStats(num_running_reqs=running, num_waiting_reqs=waiting,
                                           kv_cache_usage=0.5),
        iteration_stats=VLLMIterationStats(num_preempted_reqs=preempted),
        mm_cache_stats=None,
    )


def test_tap_reads_each_step_while_started_and_passes_every_call_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr("lem_ray.backends.vllm.stats.time",
                        types.SimpleNamespace(perf_counter=lambda: next(clock)))
    manager = VLLMStatLoggerManager()
    tap = SchedulerTap.install(types.SimpleNamespace(logger_manager=manager))
    record_step(manager, 3, 0)                       # before start: not kept
    tap.start()
    record_step(manager, 4, 2, preempted=1)
    record_step(manager, 4, 1)
    manager.record(scheduler_stats=None, iteration_stats=None)
    assert tap.stop() == [StepLoad(1.0, 4, 2, 1), StepLoad(2.0, 4, 1, 0)]
    record_step(manager, 1, 0)                       # after stop: not kept
    assert tap.stop() == []
    assert len(manager.recorded) == 5, "vLLM's own loggers still see every step"


class SlottedManager:
    """A manager whose methods cannot be replaced on the instance."""

    __slots__ = ()

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        """Takes the stats and keeps nothing."""


def test_no_tap_without_stats_or_where_record_cannot_be_wrapped() -> None:
    assert SchedulerTap.install(types.SimpleNamespace(logger_manager=None)) is None
    assert SchedulerTap.install(types.SimpleNamespace()) is None
    assert SchedulerTap.install(types.SimpleNamespace(logger_manager=SlottedManager())) is None


def test_engine_load_by_hand() -> None:
    steps = [StepLoad(float(t), running, waiting, pre) for t, running, waiting, pre in [
        (0, 2, 5, 0), (1, 8, 4, 1), (2, 8, 0, 0), (3, 6, 0, 2), (4, 4, 3, 0), (5, 1, 0, 0)]]
    whole = engine_load(steps, offline=True)
    assert whole == EngineLoad(running_mean=29 / 6, running_p10=1.5, waiting_step_share=0.5,
                               preemptions=3, steps=6, saturating=True)
    window = SteadyWindow(1.0, 4.0, "2 responses", 0)
    inside = engine_load(steps, offline=False, window=window)
    # steps 1..4: running 8, 8, 6, 4 (sorted 4, 6, 8, 8: p10 = 4 + 0.3 x 2); waiting in 2 of 4
    assert inside == EngineLoad(running_mean=6.5, running_p10=pytest.approx(4.6),
                                waiting_step_share=0.5, preemptions=3, steps=4, saturating=True)
    calm = engine_load(steps[2:4], offline=False)
    assert calm.waiting_step_share == 0.0 and calm.saturating is False
    assert engine_load(steps, offline=True, window=SteadyWindow(10.0, 11.0, "", 0)) is None


class StatsEngine(SimulatedEngine):
    """The simulated engine, reporting each step to a logger manager as vLLM's step() does."""

    def __init__(self, clock: ManualClock, max_num_seqs: int, preempt_at_step: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(clock, **kwargs)
        self.max_num_seqs, self.preempt_at_step, self.steps = max_num_seqs, preempt_at_step, 0
        self.logger_manager = VLLMStatLoggerManager()

    def step(self) -> list[Any]:
        outputs = super().step()
        self.steps += 1
        running = min(len(self.running), self.max_num_seqs)
        record_step(self.logger_manager, running, len(self.running) - running,
                    preempted=int(self.steps == self.preempt_at_step))
        return outputs


@pytest.fixture
def stats_vllm(simulated_vllm: ManualClock, monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    import sys

    monkeypatch.setattr("lem_ray.backends.vllm.stats.time",
                        types.SimpleNamespace(perf_counter=simulated_vllm))

    def llm(**kwargs: Any) -> Any:
        return types.SimpleNamespace(
            llm_engine=StatsEngine(simulated_vllm, kwargs["max_num_seqs"], length=2, step_s=0.125),
            get_tokenizer=lambda: types.SimpleNamespace(
                encode=lambda text: [1] * len(text.split())
            ),
        )

    monkeypatch.setattr(sys.modules["vllm"], "LLM", llm)
    return simulated_vllm


def test_offline_load_covers_the_whole_window(stats_vllm: ManualClock) -> None:
    backend = VLLMBackend(vllm_config(max_num_seqs=2), DeviceInfo("cuda", 1))
    backend.load()
    backend._llm.llm_engine.preempt_at_step = 2
    backend.measure(["a", "b", "c"])
    # two steps: after the first 2 running and 1 waiting (a preemption), after the second none
    assert backend.engine_load() == EngineLoad(1.0, pytest.approx(0.2), 0.5, 1, 2, True)
    assert backend.steady_window() is None
    backend.measure(["a"])
    assert backend.engine_load().steps == 2, "each window reads only its own steps"


def test_traffic_load_covers_the_steady_window_only(stats_vllm: ManualClock) -> None:
    cfg = vllm_config(max_num_seqs=8, traffic={"mode": "constant", "rate_rps": 8.0,
                                               "steady_after_responses": 2})
    backend = VLLMBackend(cfg, DeviceInfo("cuda", 1))
    backend.load()
    backend.measure(["a b", "c", "d e f", "g", "h"])
    window = backend.steady_window()
    assert (window.start_s, window.end_s) == (100.375, 100.5)
    load = backend.engine_load()
    # a request sent at x finishes at x + 0.25: after the steps stamped 100.375 and 100.5 one
    # request runs (the one sent a step before), none waits
    assert load == EngineLoad(1.0, 1.0, 0.0, 0, 2, False)


def _inputs(**overrides: Any) -> ValidityInputs:
    base = dict(
        energy_j=1000.0, window_s=60.0, min_window_s=5.0, throttle_reasons=0,
        temperature_start_c=40.0, temperature_max_c=60.0, temperature_min_c=20.0,
        temperature_limit_c=95.0, avg_power_w=300.0, power_limit_w=700.0,
        baseline_power_w=80.0, other_process_pids=[], mig_enabled=False,
        running_batch_mean=240.0, batch_limit=256, saturating=True, min_batch_fraction=0.8,
        traffic_run=False, steady_window_s=None, min_steady_s=30.0, kv_preemptions=0,
    )
    return ValidityInputs(**{**base, **overrides})


@pytest.mark.parametrize(
    ("overrides", "flags"),
    [
        ({}, []),
        # unsaturated: below 0.8 x 256 = 204.8 in a saturating run, and only there
        ({"running_batch_mean": 204.7}, ["unsaturated"]),
        ({"running_batch_mean": 204.8}, []),
        ({"running_batch_mean": 10.0, "saturating": False}, []),
        ({"running_batch_mean": None}, []),
        ({"running_batch_mean": 10.0, "batch_limit": None}, []),
        ({"running_batch_mean": 150.0, "min_batch_fraction": 0.5}, []),
        # short_steady: a traffic run's window under min_steady_s, or none at all
        ({"traffic_run": True, "steady_window_s": 29.9}, ["short_steady"]),
        ({"traffic_run": True, "steady_window_s": 30.0}, []),
        ({"traffic_run": True, "steady_window_s": None}, ["short_steady"]),
        ({"traffic_run": False, "steady_window_s": 1.0}, []),
        ({"traffic_run": True, "steady_window_s": 10.0, "min_steady_s": 5.0}, []),
        # preempted: any KV-cache preemption in the window, unless the campaign allows some
        ({"kv_preemptions": 1}, ["preempted"]),
        ({"kv_preemptions": None}, []),
        ({"kv_preemptions": 3, "max_kv_preemptions": 3}, []),
        ({"kv_preemptions": 4, "max_kv_preemptions": 3}, ["preempted"]),
        ({"running_batch_mean": 1.0, "traffic_run": True, "kv_preemptions": 2},
         ["unsaturated", "short_steady", "preempted"]),
    ],
)
def test_steady_state_flags(overrides: dict, flags: list[str]) -> None:
    assert validity_flags(_inputs(**overrides)) == flags


def test_inputs_judge_like_a_default_campaign_when_left_out() -> None:
    """ValidityInputs' defaults are validity's: a caller that leaves them out judges as a
    campaign that did not set them, and judges nothing it was not given."""
    from lem_ray.config.campaign import ValidityConfig

    defaults = ValidityConfig()
    bare = ValidityInputs(**{k: v for k, v in _inputs().__dict__.items() if k in (
        "energy_j", "window_s", "min_window_s", "throttle_reasons", "temperature_start_c",
        "temperature_max_c", "temperature_min_c", "temperature_limit_c", "avg_power_w",
        "power_limit_w", "baseline_power_w", "other_process_pids", "mig_enabled")})
    assert (bare.min_batch_fraction, bare.min_steady_s, bare.max_kv_preemptions,
            bare.power_cap_invalidates) == (defaults.min_batch_fraction, defaults.min_steady_s,
                                            defaults.max_kv_preemptions,
                                            defaults.power_cap_invalidates)
    assert (bare.saturating, bare.traffic_run, bare.running_batch_mean, bare.kv_preemptions) == (
        False, False, None, None)
    assert validity_flags(bare) == []
