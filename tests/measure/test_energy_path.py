"""The energy path of one run on a two-GPU node, on CPU, without Ray: the worker's runs (engine
pool, compile cache, the measurement protocol), the sampler actor's class and the experiments
row, fed with NVML-shaped readings of two GPUs (tests/fakes/gpu_node.py). The node's clock moves
by exact binary fractions of a second, so every figure the row reports can be written out by
hand, and is, in the tests.
"""

from __future__ import annotations

import gc
import hashlib
import json
import pickle
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from lem_ray.backends.traffic import EngineLoad
from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.worker.handoff import WorkerIdentity
from lem_ray.execution.worker.node_runs import CampaignRecord
from lem_ray.execution.worker.runs import RunRequest, WorkerRuns
from lem_ray.measure.protocol import Clock, GpuConditions
from lem_ray.measure.sampler import RunSampler
from lem_ray.records import GpuEnvironment, RunAttempt, RunKey, host_key
from lem_ray.results.columns import Conditions
from lem_ray.results.rows import _baseline, _conditions, ok_rows
from lem_ray.telemetry.sampler import EnergySampler
from tests.conftest import TINY_BASE
from tests.fakes.gpu_node import (
    CPU_BUSY_W,
    DRAM_W,
    LOAD_S,
    PROMPTS,
    UUIDS,
    FakeEngine,
    Node,
    node_sampler,
    two_gpus,
)
from tests.fakes.powercap import MAX_UJ, FakePowercap


class NodeSampler(RunSampler):
    """The sampler actor's class, in this process: its run's metrics stay off. edges_only:
    no background thread, only the windows' edge samples (the thread samples on the real
    clock, so how many of its samples land inside a window of the manual clock depends on
    the machine's load)."""

    def __init__(self, sampler: EnergySampler, edges_only: bool) -> None:
        super().__init__(sampler)
        self.edges_only = edges_only

    def start(self, metric_tags: dict[str, str] | None = None) -> None:
        if not self.edges_only:
            super().start()


@pytest.fixture(autouse=True)
def unfrozen_heap() -> Any:
    """The worker runs in this process and freezes its heap after a load: thawed after each
    test, so the rest of the session collects as usual."""
    yield
    gc.unfreeze()


def worker_on_node(node: Node, engine: type[FakeEngine] = FakeEngine,
                   edges_only: bool = False) -> WorkerRuns:
    """The real worker's runs, in this process, holding the node's two GPUs."""
    engine.node = node
    identity = WorkerIdentity(device="cuda", gpu_ids=["0", "1"], gpu_uuids=UUIDS,
                              gpu_names=["NVIDIA H200"] * 2, node_id="node-1",
                              node_ip="10.0.0.1", hostname="n1")
    return WorkerRuns(
        identity,
        lambda interval_ms: NodeSampler(node_sampler(node, host_key("node-1"), interval_ms),
                                        edges_only),
        backends=lambda name: engine, clock=Clock(node.clock, node.clock),
    )


def run_on_node(node: Node, execution: ExecutionConfig,
                baselines: dict[str, dict[str, Any]] | None = None,
                record: CampaignRecord | None = None,
                engine: type[FakeEngine] = FakeEngine,
                compile_cache: str | None = None, edges_only: bool = False,
                **fields: Any) -> dict[str, Any]:
    """The real worker's run and sampler on the node, then the real ok_rows."""
    worker = worker_on_node(node, engine, edges_only)
    config = ExperimentConfig.model_validate({**TINY_BASE, "backend": "pytorch",
                                              "gpus_per_experiment": 2, **fields})
    # The campaign's record: `baselines` what it already holds; the runs it knows active.
    record = record or CampaignRecord()
    record.put(baselines or {})
    execution = execution.model_copy(update={"baseline": execution.baseline.model_copy(
        update={"enabled": baselines is not None, "duration_s": 0.02})})
    outcome = worker.run(RunRequest(config.model_dump_json(), PROMPTS, execution, None,
                                    compile_cache=compile_cache), record)
    rows = ok_rows(RunAttempt("c", RunKey("e1", 1), 1), config, execution, worker.identity,
                   outcome.result, outcome.telemetry, outcome.conditions,
                   datetime.now(timezone.utc), None)
    return {"row": rows.experiment, "requests": rows.requests, "result": outcome.result,
            "timeseries": rows.timeseries}


def execution(**validity: Any) -> ExecutionConfig:
    return ExecutionConfig.model_validate({"validity": {"min_window_s": 0.75, **validity},
                                           "prefill": {"enabled": True, "max_repeats": 10}})


def test_two_gpu_run_figures_by_hand() -> None:
    node = two_gpus()
    out = run_on_node(node, execution(), baselines={})
    row = out["row"]
    # warmup: 2 requests of 1 prompt (0.5 s); measure: 4 prompts (1.0 s) on 300 + 500 W
    assert row["energy_warmup_j"] == pytest.approx(0.5 * 800.0)
    assert row["energy_window_s"] == 1.0 and row["energy_source"] == "nvml_counter"
    assert row["energy_j"] == pytest.approx(800.0)
    assert json.loads(row["energy_by_gpu_json"]) == pytest.approx(
        {UUIDS[0]: 300.0, UUIDS[1]: 500.0})
    # the idle baseline is the sum over both GPUs, and so is the power limit
    assert row["baseline_power_w"] == pytest.approx(60.0 + 90.0)
    assert row["energy_adjusted_j"] == pytest.approx(800.0 - 150.0 * 1.0)
    assert row["energy_adjusted_j_per_output_token"] == pytest.approx(650.0 / 32)
    assert row["power_limit_w"] == 1400.0 and row["avg_power_w"] == pytest.approx(800.0)
    # prefill: passes of 4 x 0.0625 s until the window reaches min_window_s 0.75 s: exactly 3
    assert row["prefill_passes"] == 3 and row["prefill_window_s"] == 0.75
    assert row["energy_prefill_j"] == pytest.approx(0.75 * 800.0 / 3)
    assert row["energy_decode_j"] == pytest.approx(800.0 - 200.0)
    assert node.log == [("generate", 1), ("generate", 1), ("generate", 4)] + [("generate", 4)] * 3
    # ratios and per-request shares
    assert row["output_tokens"] == 32 and row["energy_j_per_output_token"] == pytest.approx(25.0)
    assert row["throughput_tok_s"] == pytest.approx(32.0)
    # every token stamped: each request's energy is that of the steps it ran in, and the fake
    # engine serves one prompt at a time for 0.25 s at 800 W
    assert sum(r["energy_j"] for r in out["requests"]) == pytest.approx(800.0)
    assert [r["energy_j"] for r in out["requests"]] == pytest.approx([200.0] * 4)
    assert {r["energy_attribution"] for r in out["requests"]} == {"step"}
    # a clean run: temperatures 45 and 60 C inside [20, 95], no throttling, nothing else on the GPUs
    assert row["temperature_start_c"] == 60.0 and row["temperature_max_c"] == 60.0
    assert row["sm_clock_mhz_mean"] == 1980.0 and row["sm_clock_mhz_min"] == 1980.0
    assert row["validity_flags"] == [] and row["valid"] is True
    assert json.loads(row["throttle_s_json"]) == {}
    assert row["measure_end_epoch_s"] - row["measure_start_epoch_s"] == 1.0
    assert row["driver_version"] == "570.86" and row["engine_config_json"] is None
    assert row["engine_load_s"] == LOAD_S and row["engine_reused"] is False


def test_versions_reach_the_driver_as_plain_strings() -> None:
    """A driver without the backend's library must still unpickle the result."""
    result = run_on_node(two_gpus(), execution(), baselines={})["result"]
    assert result.versions["engine"] == "1.2.3"
    assert {type(v) for v in result.versions.values()} == {str}
    assert b"LibraryVersion" not in pickle.dumps(result.versions)


def test_hot_and_throttled_second_gpu_is_flagged() -> None:
    node = two_gpus(heats_c_per_s=8.0, throttle_reasons=0x8 | 0x1)
    row = run_on_node(node, execution(temperature_max_c=75.0, max_cycle_cv=0.125),
                      baselines={}, edges_only=True)["row"]
    assert row["max_cycle_cv"] == 0.125, "the campaign's limit, for lem-ray report"
    # GPU 2 starts the measured window at 60 + 8 x 0.5 (warmup) = 64 C and ends it at 72 C
    assert row["temperature_start_c"] == pytest.approx(64.0)
    assert row["temperature_max_c"] == pytest.approx(72.0)
    assert row["validity_flags"] == ["throttled"] and row["valid"] is False
    # GPU 2's samples on the window's edges, 0.1 s apiece: the clock stands still between
    # windows, so the warmup's end and the prefill's begin samples fall on the edges too
    assert json.loads(row["throttle_s_json"]) == pytest.approx(
        {"gpu_idle": 0.4, "hw_slowdown": 0.4})
    hot = run_on_node(two_gpus(heats_c_per_s=8.0), execution(temperature_max_c=70.0),
                      baselines={}, edges_only=True)["row"]
    assert hot["validity_flags"] == ["temperature_out_of_range"]
    mig = run_on_node(two_gpus(mig_enabled=True), execution(), baselines={}, edges_only=True)["row"]
    assert mig["validity_flags"] == ["mig"], "one GPU of the two in MIG mode is enough"
    # the row keeps the hottest GPU's temperatures, so "too cold" means the hottest one is
    cold = run_on_node(two_gpus(), execution(temperature_min_c=65.0), baselines={},
                       edges_only=True)["row"]
    assert cold["validity_flags"] == ["temperature_out_of_range"], "both GPUs below 65 C"


def test_power_capped_gpu_is_valid_unless_the_campaign_opts_in() -> None:
    """A GPU held at its power limit is measured as configured; the seconds and limit stay in the
    row."""
    capped = run_on_node(two_gpus(throttle_reasons=0x4), execution(), baselines={},
                         edges_only=True)["row"]
    assert capped["validity_flags"] == [] and capped["valid"] is True
    assert capped["throttle_reasons"] & 0x4 and capped["power_limit_w"] == 1400.0
    assert json.loads(capped["throttle_s_json"]) == pytest.approx({"sw_power_cap": 0.4})
    strict = run_on_node(two_gpus(throttle_reasons=0x4), execution(power_cap_invalidates=True),
                         baselines={}, edges_only=True)["row"]
    assert strict["validity_flags"] == ["throttled"] and strict["valid"] is False


def test_engine_load_reaches_the_row_and_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend's scheduler load becomes columns; a half-full saturating engine with a KV
    preemption is `unsaturated` and `preempted` (batch_size 1 here: mean 0.5 < 0.8)."""
    load = EngineLoad(running_mean=0.5, running_p10=0.0, waiting_step_share=0.75,
                      preemptions=2, steps=12, saturating=True)
    monkeypatch.setattr(FakeEngine, "engine_load", lambda self: load)
    row = run_on_node(two_gpus(), execution(), baselines={})["row"]
    assert (row["running_batch_mean"], row["running_batch_p10"], row["waiting_step_share"],
            row["kv_preemptions"], row["scheduler_steps"]) == (0.5, 0.0, 0.75, 2, 12)
    assert row["validity_flags"] == ["unsaturated", "preempted"] and row["valid"] is False
    lenient = run_on_node(two_gpus(), execution(min_batch_fraction=0.5, max_kv_preemptions=2),
                          baselines={})["row"]
    assert lenient["validity_flags"] == [] and lenient["valid"] is True


def test_slo_columns_of_a_run_by_hand() -> None:
    """4 requests of 8 tokens in 1.0 s on 800 J: each 250 ms, TTFT and TPOT 31.25 ms."""
    met = run_on_node(two_gpus(), execution(), baselines={},
                      slo={"ttft_ms": 40.0, "tpot_ms": 31.25})["row"]
    assert (met["slo_ttft_ms"], met["slo_tpot_ms"], met["slo_min_attainment"]) == (40.0, 31.25, 0.9)
    assert met["slo_attainment"] == 1.0 and met["goodput_tok_s"] == pytest.approx(32.0)
    assert met["energy_j_per_goodput_token"] == pytest.approx(800.0 / 32)
    missed = run_on_node(two_gpus(), execution(), baselines={},
                         slo={"tpot_ms": 31.0})["row"]
    assert missed["slo_attainment"] == 0.0 and missed["goodput_tok_s"] == 0.0
    assert missed["energy_j_per_goodput_token"] is None and missed["valid"] is True
    plain = run_on_node(two_gpus(), execution(), baselines={})["row"]
    assert plain["slo_attainment"] is None and plain["goodput_tok_s"] is None


def test_prefill_passes_stop_at_max_repeats_or_window() -> None:
    capped = ExecutionConfig.model_validate({"validity": {"min_window_s": 0.75},
                                             "prefill": {"enabled": True, "max_repeats": 2}})
    row = run_on_node(two_gpus(), capped)["row"]
    assert row["prefill_passes"] == 2 and row["prefill_window_s"] == 0.5
    assert row["energy_prefill_j"] == pytest.approx(0.5 * 800.0 / 2)
    assert row["baseline_power_w"] is None and row["energy_adjusted_j"] is None, "no baseline taken"
    exact = ExecutionConfig.model_validate({"validity": {"min_window_s": 0.25},
                                            "prefill": {"enabled": True, "max_repeats": 10}})
    assert run_on_node(two_gpus(), exact)["row"]["prefill_passes"] == 1
    off = ExecutionConfig.model_validate({"validity": {"min_window_s": 0.75},
                                          "prefill": {"enabled": False}})
    row = run_on_node(two_gpus(), off)["row"]
    assert row["prefill_passes"] is None and row["energy_prefill_j"] is None


def test_baseline_of_one_gpu_missing_gives_no_adjustment() -> None:
    """Half a baseline would make the adjusted energy wrong: none at all, then."""
    one = {UUIDS[0]: {"power_w": 55.0, "age_s": 1.0, "method": "idle_mean_power_instant"}}
    assert _baseline(one, UUIDS) == {
        "baseline_power_w": None, "baseline_age_s": None, "baseline_method": None}
    assert _baseline(one, UUIDS[:1])["baseline_power_w"] == 55.0
    assert _baseline(one, [])["baseline_power_w"] is None


def test_environment_columns_of_one_gpu_or_none() -> None:
    one = [GpuEnvironment(power_limit_w=700.0, driver_version="570.86", cuda_driver_version="12.8")]
    assert _conditions(GpuConditions(), one) == Conditions(
        cooldown_wait_s=None, cooldown_temp_c=None, power_limit_w=700.0,
        driver_version="570.86", cuda_driver_version="12.8")
    none = _conditions(GpuConditions(), [])
    assert (none.power_limit_w, none.driver_version, none.cuda_driver_version) == (None,) * 3
    unknown = [*one, GpuEnvironment(power_limit_w=None)]
    assert _conditions(GpuConditions(), unknown).power_limit_w is None, "half a limit is no limit"


def test_cached_baseline_of_one_gpu_and_measured_other() -> None:
    """The cached baseline of GPU 1 alone (GPU 2's is then measured): both are used."""
    cached = {UUIDS[0]: {"power_w": 55.0, "measured_at_s": 1000.0 - 30.0,
                         "method": "idle_mean_power_instant"}}
    row = run_on_node(two_gpus(), execution(), baselines=cached)["row"]
    assert row["baseline_power_w"] == pytest.approx(55.0 + 90.0)
    assert row["baseline_age_s"] == pytest.approx(30.0), "the oldest of the two"


def warm_runner(node: Node, max_engines: int = 4) -> Any:
    worker = worker_on_node(node)
    plan = execution().model_copy(update={"max_engines_per_worker": max_engines,
                                          "baseline": execution().baseline.model_copy(
                                              update={"enabled": False})})

    def run(precision: str, keep: bool = True) -> tuple[float, bool, list[str]]:
        config = ExperimentConfig.model_validate({**TINY_BASE, "backend": "pytorch",
                                                  "gpus_per_experiment": 2,
                                                  "fp_precision": precision})
        request = RunRequest(config.model_dump_json(), PROMPTS, plan, None, keep_engine=keep)
        outcome = worker.run(request, None)
        held = [b.config.fp_precision for b in worker.pool.engines.values()]
        assert len(outcome.engines) == len(held), "the driver hears every engine held"
        return outcome.result.engine_load_s, outcome.result.engine_reused, held

    return run


def test_warm_worker_reuses_an_engine_only_for_the_same_engine_config() -> None:
    node = two_gpus()
    run = warm_runner(node)
    assert run("float32") == (LOAD_S, False, ["float32"])
    assert run("float32") == (0.0, True, ["float32"]), "same engine config: reused"
    assert run("bfloat16") == (LOAD_S, False, ["float32", "bfloat16"])
    assert run("float32") == (0.0, True, ["bfloat16", "float32"]), "both kept"
    assert run("bfloat16", keep=False) == (0.0, True, [])
    assert run("bfloat16") == (LOAD_S, False, ["bfloat16"]), "released when asked not to keep"
    assert node.engines == ["float32", "bfloat16", "bfloat16"] and node.live == 1


def test_warm_worker_keeps_the_most_recent_engines_up_to_its_limit() -> None:
    node = two_gpus()
    run = warm_runner(node, max_engines=2)
    for precision in ("float32", "bfloat16", "float16"):
        assert run(precision)[:2] == (LOAD_S, False)
    assert run("bfloat16") == (0.0, True, ["float16", "bfloat16"])
    assert run("float32") == (LOAD_S, False, ["bfloat16", "float32"]), "float16 was oldest"
    assert node.live == 2


def test_a_load_out_of_memory_beside_other_engines_is_tried_alone() -> None:
    node = two_gpus()
    node.room = 2
    run = warm_runner(node)
    run("float32")
    run("bfloat16")
    assert run("float16") == (LOAD_S, False, ["float16"]), "the others made room"
    node.room = 0
    with pytest.raises(RuntimeError, match="out of memory"):
        run("float32")
    assert node.live == 0, "a failed run leaves no engine behind"


def test_new_shapes_out_of_memory_beside_other_engines_are_prepared_alone() -> None:
    node = two_gpus()
    run = warm_runner(node)
    run("float32")
    run("bfloat16")
    node.prepare_room = 1
    assert run("float32") == (0.0, True, ["float32"]), "bfloat16 made room, float32 kept"
    node.prepare_room = 0
    with pytest.raises(RuntimeError, match="out of memory"):
        run("float32")
    assert node.live == 0


def test_host_energy_of_the_window_and_its_idle_baseline(tmp_path: Path) -> None:
    """The package counter wraps during the measured window; dram adds, core and psys do not."""
    node = two_gpus()
    node.powercap = FakePowercap(tmp_path / "powercap")
    # 100 J before the wrap at load end: warmup (0.5 s x 120 W) uses 60, the window wraps
    node.powercap.set("intel-rapl:0", MAX_UJ - round((LOAD_S * CPU_BUSY_W + 100.0) * 1e6))
    # The windows' edge reads only: a background read between the fake's counter update and
    # its clock step would see energy without time.
    out = run_on_node(node, execution(), baselines={}, edges_only=True)
    row = out["row"]
    assert row["cpu_energy_j"] == pytest.approx(CPU_BUSY_W * 1.0)
    assert row["dram_energy_j"] == pytest.approx(DRAM_W * 1.0)
    assert row["host_energy_j"] == pytest.approx(CPU_BUSY_W + DRAM_W)
    assert row["host_energy_source"] == "rapl:package+dram"
    assert row["host_energy_unavailable_reason"] is None
    assert row["host_shared_by_runs"] == 0
    # the baseline ran on the manual clock's idle node: the counters stood still
    assert row["host_baseline_power_w"] == 0.0
    assert row["host_energy_adjusted_j"] == pytest.approx(CPU_BUSY_W + DRAM_W)
    assert row["energy_with_host_j_per_output_token"] == pytest.approx((800.0 + 136.0) / 32)
    # both methods saw 300 + 500 W: the gap is nought and judged on no flag
    assert row["energy_methods_gap"] == pytest.approx(0.0)
    host = [r for r in out["timeseries"] if r["gpu_uuid"] is None]
    assert host and all(r.get("power_w") is None for r in host), "host rows stay out of GPU sums"
    assert host[-1]["cpu_energy_j"] == pytest.approx(
        sum((r["cpu_power_w"] or 0.0) * (b["t_s"] - a["t_s"])
            for a, b, r in zip(host, host[1:], host[1:])))


def test_host_energy_shared_with_another_run_on_the_node(tmp_path: Path) -> None:
    node = two_gpus()
    node.powercap = FakePowercap(tmp_path / "powercap")
    record = CampaignRecord()
    record.run_started("node-1", "another-worker", node.t_s)
    record.run_started("node-2", "elsewhere", node.t_s)
    row = run_on_node(node, execution(), baselines={}, record=record)["row"]
    assert row["host_shared_by_runs"] == 1
    assert row["host_energy_j"] == pytest.approx(CPU_BUSY_W + DRAM_W), "measured all the same"
    assert row["energy_with_host_j_per_output_token"] is None, "not this run's alone"
    assert row["energy_j_per_output_token"] == pytest.approx(25.0)
    # the host was not idle while the other run ran: no host baseline taken, the GPUs' taken
    assert row["host_baseline_power_w"] is None and row["host_energy_adjusted_j"] is None
    assert row["baseline_power_w"] == pytest.approx(150.0)


def test_node_without_powercap_says_why() -> None:
    row = run_on_node(two_gpus(), execution(), baselines={})["row"]
    assert row["cpu_energy_j"] is None and row["dram_energy_j"] is None
    assert row["host_energy_j"] is None and row["host_energy_source"] is None
    assert "does not exist" in row["host_energy_unavailable_reason"]
    assert row["energy_with_host_j_per_output_token"] is None
    assert row["energy_j"] == pytest.approx(800.0), "the GPUs are measured all the same"
    assert row["valid"] is True


def test_instant_power_off_the_counter_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instant power reads 10% above what the counters accrue: (800 - 880) / 800."""
    def lying() -> Node:
        node = two_gpus()
        for gpu in node.gpus.values():
            gpu.power_lie_w = gpu.busy_w * 0.1
        return node

    # only the windows' edge samples: judge the gap on them
    monkeypatch.setattr("lem_ray.results.validity.MIN_GAP_SAMPLES_PER_GPU", 2)
    row = run_on_node(lying(), execution(), baselines={}, edges_only=True)["row"]
    assert row["energy_integrated_j"] == pytest.approx(880.0)
    assert row["energy_methods_gap"] == pytest.approx(-0.1)
    assert row["validity_flags"] == ["energy_methods_disagree"] and row["valid"] is False
    loose = run_on_node(lying(), execution(max_energy_methods_gap=0.11), baselines={},
                        edges_only=True)["row"]
    assert loose["validity_flags"] == []
    short = run_on_node(lying(), execution(min_window_s=2.0), baselines={}, edges_only=True)["row"]
    assert short["validity_flags"] == ["short_window"], "too short a window: the gap is not judged"


class CompilingEngine(FakeEngine):
    """Compiles its kernels while it loads, unless the compile cache hands them over."""

    def compiler_versions(self) -> dict[str, str] | None:
        return {"engine": "1.2.3"}

    def use_compiled(self, artifact: bytes) -> None:
        self.node.log.append(("loaded kernels", artifact))

    def compiled_artifact(self) -> bytes | None:
        return b"kernels"


def test_rows_say_whether_the_engine_compiled_or_loaded_its_kernels(tmp_path: Path) -> None:
    """A fresh worker compiles and publishes (miss); the next fresh worker's engine gets the
    same artifact (hit, same hash); with the cache off, off; an engine that compiles
    nothing says nothing."""
    cache = str(tmp_path / "compile_cache")
    seen = []
    for engine, location in ((CompilingEngine, cache), (CompilingEngine, cache),
                             (CompilingEngine, None), (FakeEngine, cache)):
        node = two_gpus()
        row = run_on_node(node, ExecutionConfig(), engine=engine,
                          compile_cache=location)["row"]
        seen.append((row["compile_cache"], row["compile_cache_hash"]))
        if seen[-1][0] == "hit":
            assert ("loaded kernels", b"kernels") in node.log
    sha = hashlib.sha256(b"kernels").hexdigest()
    assert seen == [("miss", sha), ("hit", sha), ("off", None), (None, None)]
