"""The measurement protocol without Ray: the campaign's sampler class on the two-GPU node of
tests/fakes/gpu_node.py (manual clock), its fake engine, and the figures written out by hand.

The fake engine runs one prompt per 0.25 s for 8 output tokens (0.0625 s for one) with the node
drawing 300 + 500 W busy and 60 + 90 W idle."""

from __future__ import annotations

from typing import Any

import pytest

from lem_ray.backends.base import DeviceInfo, RequestRecord
from lem_ray.config.campaign import (
    BaselineConfig,
    CooldownConfig,
    PrefillConfig,
    ValidityConfig,
)
from lem_ray.config.experiment import ExperimentConfig, WarmupConfig
from lem_ray.execution.worker.node_runs import CampaignRecord
from lem_ray.measure import (
    Clock,
    MeasurementProtocol,
    MeasureSettings,
    MeasureUnavailable,
    Meter,
    RunSampler,
)
from lem_ray.telemetry.nvml import nvml_status
from lem_ray.telemetry.sampler import EnergySampler, WindowResult
from tests.conftest import TINY_BASE
from tests.fakes.gpu_node import (
    LOAD_S,
    PROMPTS,
    UUIDS,
    FakeEngine,
    Node,
    node_sampler,
    two_gpus,
)


class LoggedSampler(RunSampler):
    """Writes each window edge into the node's log, beside the engine's generate calls."""

    def __init__(self, node: Node) -> None:
        super().__init__(node_sampler(node))
        self.node = node

    def cool_down(self, target_temp_c: float, max_wait_s: float) -> tuple[float, float | None]:
        self.node.log.append(("cool_down", target_temp_c))
        return super().cool_down(target_temp_c, max_wait_s)

    def baseline(self, known: dict[str, dict[str, Any]], duration_s: float, ttl_s: float,
                 host_idle: bool = True) -> dict[str, dict[str, Any]]:
        self.node.log.append(("baseline", sorted(known)))
        return super().baseline(known, duration_s, ttl_s, host_idle)

    def begin(self, name: str) -> None:
        self.node.log.append(("begin", name))
        super().begin(name)

    def end(self, name: str) -> WindowResult:
        self.node.log.append(("end", name))
        return super().end(name)


def settings(warmup_requests: int = 2, prefill: bool = True, max_repeats: int = 10,
             cooldown_c: float | None = None, baseline: bool = True) -> MeasureSettings:
    return MeasureSettings(
        cooldown=CooldownConfig(target_temp_c=cooldown_c, max_wait_s=0),
        baseline=BaselineConfig(enabled=baseline, duration_s=0.02),
        warmup=WarmupConfig(mode="fixed", requests=warmup_requests),
        prefill=PrefillConfig(enabled=prefill, max_repeats=max_repeats),
        validity=ValidityConfig(min_window_s=0.75),
    )


def engine_on(node: Node, engine: type[FakeEngine] = FakeEngine) -> FakeEngine:
    engine.node = node
    config = ExperimentConfig.model_validate({**TINY_BASE, "backend": "pytorch",
                                              "gpus_per_experiment": 2})
    return engine(config, DeviceInfo("cuda", 2))


def protocol_on(node: Node, sampler: RunSampler, **kw: Any) -> MeasurementProtocol:
    return MeasurementProtocol(sampler, settings(**kw), Clock(node.clock, node.clock))


def test_windows_run_in_order_after_cooldown_and_baseline_before_the_load() -> None:
    node = two_gpus()
    protocol = protocol_on(node, LoggedSampler(node), cooldown_c=80.0)
    conditions = protocol.prepare()
    engine = engine_on(node)
    engine.load()
    measured = protocol.measure(engine, PROMPTS, conditions)
    assert node.log == [
        ("cool_down", 80.0), ("baseline", []),
        ("begin", "warmup"), ("generate", 1), ("generate", 1), ("end", "warmup"),
        ("begin", "measure"), ("generate", 4), ("end", "measure"),
        ("begin", "prefill"), *[("generate", 4)] * 3, ("end", "prefill"),
    ]
    assert conditions.cooldown_wait_s == 0.0 and conditions.cooldown_temp_c == 60.0
    # the baseline saw the idle node, before the engine loaded
    assert conditions.baselines[UUIDS[0]]["power_w"] == 60.0
    assert conditions.baselines[UUIDS[1]]["power_w"] == 90.0
    assert measured.measure_window.start_s == 1000.0 + LOAD_S + 0.5
    assert measured.duration_s == 1.0 and measured.measure_start_perf_s == 1000.0 + LOAD_S + 0.5
    assert [r.output_tokens for r in measured.records] == [8] * 4
    assert protocol.phases_s == {"cooldown": 0.0, "baseline": 0.0,
                                 "warmup": 0.5, "measuring": 1.0 + 0.75}


def test_baseline_is_subtracted_over_the_measured_window_only() -> None:
    node = two_gpus()
    protocol = protocol_on(node, RunSampler(node_sampler(node)), warmup_requests=4)
    conditions = protocol.prepare()
    engine = engine_on(node)
    engine.load()
    energy = protocol.measure(engine, PROMPTS, conditions).energy
    assert energy.energy_j == pytest.approx(800.0) and energy.window_s == 1.0
    assert energy.baseline_power_w == pytest.approx(150.0)
    assert energy.adjusted_j == pytest.approx(800.0 - 150.0 * 1.0), "not over the warmup's second"
    assert energy.adjusted_j_per_output_token == pytest.approx(650.0 / 32)
    assert energy.ratios() == pytest.approx({
        "energy_j_per_output_token": 25.0, "energy_j_per_request": 200.0,
        "output_tokens_per_j": 32 / 800.0, "avg_power_w": 800.0})


def test_baselines_come_from_the_cache_while_fresh_and_go_back_to_it() -> None:
    """GPU 1's cached value is used; GPU 2's is measured and stored for the next run."""
    node = two_gpus()
    cache = CampaignRecord()
    cache.put({UUIDS[0]: {"power_w": 55.0, "measured_at_s": 970.0,
                          "method": "idle_mean_power_instant"}})
    sampler = LoggedSampler(node)
    conditions = protocol_on(node, sampler).prepare(cache)
    assert node.log == [("baseline", [UUIDS[0]])]
    assert conditions.baselines[UUIDS[0]]["power_w"] == 55.0
    assert conditions.baselines[UUIDS[0]]["age_s"] == pytest.approx(30.0)
    assert cache.get([UUIDS[1]])[UUIDS[1]]["power_w"] == 90.0
    off = protocol_on(node, sampler, baseline=False).prepare(cache)
    assert off.baselines == {} and node.log == [("baseline", [UUIDS[0]])], "off: not asked"


def test_warmup_is_its_own_window_never_in_the_figures() -> None:
    node = two_gpus()
    protocol = protocol_on(node, RunSampler(node_sampler(node)), warmup_requests=3)
    engine = engine_on(node)
    engine.load()
    measured = protocol.measure(engine, PROMPTS, protocol.prepare())
    assert measured.warmup is not None and measured.warmup_window is not None
    assert (measured.warmup.steps, measured.warmup.requests) == (3, 3)
    assert measured.warmup.duration_s == 0.75, "on the protocol's clock"
    assert measured.warmup_window.energy_j == pytest.approx(0.75 * 800.0)
    assert measured.energy.energy_j == pytest.approx(800.0)


def test_prefill_window_splits_the_measured_energy() -> None:
    """Passes of 4 x 0.0625 s until the window reaches min_window_s 0.75 s: exactly 3."""
    node = two_gpus()
    protocol = protocol_on(node, RunSampler(node_sampler(node)))
    engine = engine_on(node)
    engine.load()
    measured = protocol.measure(engine, PROMPTS, protocol.prepare())
    assert measured.prefill is not None
    assert (measured.prefill.passes, measured.prefill.duration_s) == (3, 0.75)
    assert measured.prefill.window.energy_j == pytest.approx(0.75 * 800.0)
    assert measured.energy.prefill_j == pytest.approx(200.0)
    assert measured.energy.decode_j == pytest.approx(600.0)
    capped = protocol_on(node, RunSampler(node_sampler(node)), max_repeats=2)
    assert capped.measure(engine, PROMPTS, capped.prepare()).prefill.passes == 2  # type: ignore[union-attr]
    off = protocol_on(node, RunSampler(node_sampler(node)), prefill=False)
    unsplit = off.measure(engine, PROMPTS, off.prepare())
    assert unsplit.prefill is None and unsplit.energy.prefill_j is None
    assert unsplit.energy.decode_j is None and off.phases_s["measuring"] == 1.0


def test_without_gpus_nothing_is_made_up_and_no_prefill_runs() -> None:
    node = two_gpus()
    sampler = RunSampler(EnergySampler([], clock=node.clock), "ran on CPU")
    protocol = protocol_on(node, sampler)
    engine = engine_on(node)
    engine.load()
    conditions = protocol.prepare()
    measured = protocol.measure(engine, PROMPTS, conditions)
    assert conditions.baselines == {} and conditions.cooldown_wait_s is None
    assert (protocol.phases_s["cooldown"], protocol.phases_s["baseline"]) == (0.0, 0.0)
    assert measured.measure_window.unavailable_reason == "ran on CPU"
    assert measured.prefill is None and ("generate", 4) in node.log
    energy = measured.energy
    assert (energy.energy_j, energy.adjusted_j, energy.j_per_output_token) == (None, None, None)


class FailingEngine(FakeEngine):
    """Half the measured prompts run, then the engine fails (a CUDA error, say)."""

    fail = True

    def measure(self, prompts: list[str]) -> list[RequestRecord]:
        if self.fail:
            self.generate(prompts[:2])
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.generate(prompts)


def test_a_failure_mid_window_closes_it_so_the_next_run_measures() -> None:
    node = two_gpus()
    sampler = LoggedSampler(node)
    engine = engine_on(node, FailingEngine)
    engine.load()
    protocol = protocol_on(node, sampler)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        protocol.measure(engine, PROMPTS, protocol.prepare())
    assert node.log[-2:] == [("generate", 2), ("end", "measure")]
    FailingEngine.fail = False
    try:
        again = protocol_on(node, sampler)
        measured = again.measure(engine, PROMPTS, again.prepare())
    finally:
        FailingEngine.fail = True
    assert measured.energy.energy_j == pytest.approx(800.0)


def test_meter_measures_a_scripts_own_work_between_begin_and_end() -> None:
    node = two_gpus()
    meter = Meter(sampler=RunSampler(node_sampler(node)), settings=settings(),
                  clock=Clock(node.clock, node.clock))
    assert meter.prepare().baselines[UUIDS[1]]["power_w"] == 90.0
    node.busy = True
    meter.begin_window("step")
    node.work(2.0)
    step = meter.end_window("step", output_tokens=400, requests=4)
    assert step.warmup is None and step.prefill is None and step.duration_s == 2.0
    assert step.energy.energy_j == pytest.approx(1600.0)
    assert step.energy.adjusted_j == pytest.approx(1600.0 - 150.0 * 2.0)
    assert step.energy.j_per_output_token == pytest.approx(4.0)
    assert step.measure_window.energy_by_gpu_j == pytest.approx({UUIDS[0]: 600.0, UUIDS[1]: 1000.0})


def test_meter_runs_a_backend_as_a_campaign_run_does() -> None:
    node = two_gpus()
    meter = Meter(sampler=RunSampler(node_sampler(node)), settings=settings(),
                  clock=Clock(node.clock, node.clock))
    engine = engine_on(node)
    measured = meter.run(engine, PROMPTS)
    assert measured.conditions.baselines[UUIDS[0]]["power_w"] == 60.0, "taken before the load"
    assert measured.energy.adjusted_j == pytest.approx(650.0)
    assert measured.energy.prefill_j == pytest.approx(200.0)
    assert meter.finish().environment[UUIDS[0]]["power_limit_w"] == 700.0


@pytest.mark.skipif(nvml_status()[0], reason="NVML sees a GPU here")
def test_meter_without_nvml_says_why_on_one_line() -> None:
    with pytest.raises(MeasureUnavailable) as raised:
        Meter(gpus=[0])
    message = str(raised.value)
    assert message.startswith("cannot measure GPU energy here: NVML") and "\n" not in message
