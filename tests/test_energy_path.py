"""The energy path of one run on a two-GPU node, on CPU: the worker's windows, the sampler
actor's arithmetic and the experiments row, fed with NVML-shaped readings of two GPUs.

The node below answers as NVML does (counters in mJ since driver load, far from zero and
different per GPU; instant power in W; temperatures; clocks-event bits), driven by a manual
clock that the fake engine advances by exact binary fractions of a second. Every figure the
row reports can therefore be written out by hand, and is, in the tests.
"""

from __future__ import annotations

import gc
import hashlib
import json
import pickle
from pathlib import Path
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import lem_ray.execution.sampler_actor as actors
import lem_ray.execution.worker as worker_module
from lem_ray.backends.base import Backend, RequestRecord
from lem_ray.backends.traffic import EngineLoad
from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.engines import EnginePool
from lem_ray.execution.gpus import GpuIdentity
from lem_ray.execution.handoff import GpuConditions, WorkerIdentity
from lem_ray.results.rows import _baseline, _conditions, ok_rows
from lem_ray.execution.compiled import CompiledArtifacts
from lem_ray.execution.worker import ExperimentWorker, RunRequest
from lem_ray.records import Baseline, GpuEnvironment, RunAttempt, RunKey
from lem_ray.results.columns import Conditions
from lem_ray.telemetry.nvml import DeviceReader, GpuSample
from lem_ray.telemetry.sampler import EnergySampler
from lem_ray.execution.node_runs import NodeRuns
from lem_ray.telemetry.rapl import HostEnergy
from tests.conftest import TINY_BASE
from tests.powercap import MAX_UJ, FakePowercap

CPU_IDLE_W, CPU_BUSY_W, DRAM_W = 40.0, 120.0, 16.0
UUIDS = ["GPU-3f1c0d2e-0000-4000-8000-000000000000", "GPU-9a7b6c5d-1111-4111-8111-111111111111"]


@dataclass
class Gpu:
    idle_w: float
    busy_w: float
    counter_mj: float
    temperature_c: float
    heats_c_per_s: float = 0.0
    throttle_reasons: int = 0
    mig_enabled: bool = False
    power_lie_w: float = 0.0
    """Instant power reads this much above what the counter accrues."""


@dataclass
class Node:
    """Two GPUs and a clock; the engine's work advances the clock and the counters with it."""

    gpus: dict[str, Gpu]
    t_s: float = 1000.0
    busy: bool = False
    log: list[tuple[str, float]] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)
    """Every engine loaded, in order; `live` those not released yet."""
    live: int = 0
    room: int | None = None
    """Engines the GPUs' memory holds at once; a load past it runs out of memory."""
    prepare_room: int | None = None
    """Engines beside which prepare() (new batch shapes) still fits."""
    powercap: FakePowercap | None = None
    """The host's RAPL zones; None: a node without powercap (a VM)."""

    def clock(self) -> float:
        return self.t_s

    def work(self, dt_s: float, heats: bool = True) -> None:
        for gpu in self.gpus.values():
            gpu.counter_mj += (gpu.busy_w if self.busy else gpu.idle_w) * dt_s * 1000
            gpu.temperature_c += gpu.heats_c_per_s * dt_s if heats else 0.0
        if self.powercap is not None:
            self.powercap.add("intel-rapl:0", (CPU_BUSY_W if self.busy else CPU_IDLE_W) * dt_s)
            self.powercap.add("intel-rapl:0/intel-rapl:0:0", DRAM_W * dt_s)
            self.powercap.add("intel-rapl:0/intel-rapl:0:1", 1000.0 * dt_s)
            self.powercap.add("intel-rapl:1", 5000.0 * dt_s)
        self.t_s += dt_s

    def host(self) -> HostEnergy:
        root = self.powercap.root if self.powercap else Path("/nonexistent/powercap")
        return HostEnergy(str(root))

    def device(self, uuid: str) -> DeviceReader:
        return NvmlShapedGpu(self, uuid)


class NvmlShapedGpu(DeviceReader):
    def __init__(self, node: Node, uuid: str) -> None:
        self.node, self.uuid, self.gpu = node, uuid, node.gpus[uuid]
        self.name = "NVIDIA H200"
        self.supports_energy_counter = True
        self.power_method = "power_instant"

    def energy_mj(self) -> int:
        return round(self.gpu.counter_mj)

    def power_instant_w(self) -> float:
        return (self.gpu.busy_w if self.node.busy else self.gpu.idle_w) + self.gpu.power_lie_w

    def sample(self) -> GpuSample:
        return GpuSample(t_s=self.node.t_s, power_w=self.power_instant_w(),
                         temperature_c=self.gpu.temperature_c, sm_clock_mhz=1980, mem_clock_mhz=3201,
                         memory_used_mib=2048.0, utilization_pct=100.0 if self.node.busy else 0.0,
                         throttle_reasons=self.gpu.throttle_reasons)

    def environment(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "name": self.name, "power_limit_w": 700.0, "driver_version": "570.86",
                "cuda_driver_version": "12.8", "mig_enabled": self.gpu.mig_enabled,
                "compute_process_pids": []}

    def compute_process_pids(self) -> list[int]:
        return []


LOAD_S = 2.0
PROMPT_S = 0.25
"""Seconds of engine work per prompt for the full output, and per prompt for one token:"""
PREFILL_PROMPT_S = 0.0625


class LibraryVersion(str):
    """A library's own version type, as torch's TorchVersion is: pickled, it names its module."""


class FakeEngine(Backend):
    """Eight output tokens per prompt; each call advances the node's clock by its work."""

    name = "pytorch"
    node: Node
    _loaded = False

    def load(self) -> None:
        if self.node.room is not None and self.node.live >= self.node.room:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
        self.node.work(LOAD_S, heats=False)
        self.node.busy = True
        self.node.live += 1
        self._loaded = True
        self.node.engines.append(self.config.fp_precision)

    def prepare(self, prompts: list[str]) -> None:
        if self.node.prepare_room is not None and self.node.live > self.node.prepare_room:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def generate(self, prompts: list[str], max_output_tokens: int | None = None) -> list[RequestRecord]:
        most, _ = self.output_bounds(max_output_tokens)
        per_prompt_s = PREFILL_PROMPT_S if most == 1 else PROMPT_S
        records = []
        for i, prompt in enumerate(prompts):
            start_s = self.node.t_s
            self.node.work(per_prompt_s)
            records.append(RequestRecord(index=i, input_tokens=len(prompt.split()), output_tokens=most,
                                         e2e_ms=per_prompt_s * 1000, ttft_ms=per_prompt_s * 1000 / most,
                                         itl_ms=[per_prompt_s * 1000 / most] * (most - 1), start_s=start_s))
        self.node.log.append(("generate", len(prompts)))
        return records

    def versions(self) -> dict[str, str]:
        return {"engine": LibraryVersion("1.2.3")}

    def release(self) -> None:
        """Also called after a failed load, on an engine that never loaded."""
        self.node.busy = False
        if self._loaded:
            self.node.live -= 1
        self._loaded = False


class InProcess:
    """An actor's methods called in this process: `handle.method.remote(...)` runs it now."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return SimpleNamespace(remote=getattr(self._target, name))


PROMPTS = ["one two three", "four five six seven", "eight nine", "ten eleven twelve thirteen fourteen"]


@pytest.fixture(autouse=True)
def unfrozen_heap() -> Any:
    """The worker runs in this process and freezes its heap after a load: thawed after each
    test, so the rest of the session collects as usual."""
    yield
    gc.unfreeze()


def worker_on_node(node: Node, monkeypatch: pytest.MonkeyPatch,
                   engine: type[FakeEngine] = FakeEngine) -> ExperimentWorker:
    """The real worker, in this process, holding the node's two GPUs."""
    engine.node = node
    monkeypatch.setattr(worker_module, "backend_class", lambda name: engine)
    monkeypatch.setattr(worker_module, "ray", SimpleNamespace(get=lambda ref: ref, __version__="test"))
    monkeypatch.setattr(worker_module, "time", SimpleNamespace(perf_counter=node.clock, time=node.clock))
    monkeypatch.setattr(actors, "EnergySampler", lambda uuids, sample_interval_ms, host, host_key:
                        EnergySampler(uuids, sample_interval_ms, device_factory=node.device,
                                      clock=node.clock, host=node.host(), host_key=host_key))
    worker = ExperimentWorker.__new__(ExperimentWorker)
    worker.node_id, worker.pool = "node-1", EnginePool()
    worker.artifacts = CompiledArtifacts(None, "NVIDIA H200")
    worker.identity = GpuIdentity(device="cuda", gpu_ids=["0", "1"], gpu_uuids=UUIDS,
                                  gpu_names=["NVIDIA H200"] * 2)
    identity = WorkerIdentity(**vars(worker.identity), node_id="node-1", node_ip="10.0.0.1", hostname="n1")
    worker.identify = lambda: identity
    sampler = actors.SamplerActor.__ray_actor_class__(UUIDS, 100, None, "node-1")
    worker.sampler, worker.sample_interval_ms = InProcess(sampler), 100
    return worker


def run_on_node(node: Node, monkeypatch: pytest.MonkeyPatch, execution: ExecutionConfig,
                baselines: dict[str, dict[str, Any]] | None = None,
                runs: NodeRuns | None = None,
                engine: type[FakeEngine] = FakeEngine,
                compile_cache: str | None = None, **fields: Any) -> dict[str, Any]:
    """The real worker.run and sampler actor on the node, then the real ok_rows."""
    worker = worker_on_node(node, monkeypatch, engine)
    identity = worker.identify()
    config = ExperimentConfig.model_validate({**TINY_BASE, "backend": "pytorch", "gpus_per_experiment": 2,
                                              **fields})
    # The campaign's baseline cache, in process: `baselines` are what it already holds;
    # `runs` the other runs it knows active on the nodes.
    runs = runs or NodeRuns()
    cache = InProcess(SimpleNamespace(get=lambda uuids: dict(baselines or {}),
                                      put=lambda entries: None, run_started=runs.started,
                                      run_ended=runs.ended, sharing=runs.sharing,
                                      active=runs.active))
    execution = execution.model_copy(update={"baseline": execution.baseline.model_copy(
        update={"enabled": baselines is not None, "duration_s": 0.02})})
    outcome = worker.run(RunRequest(config.model_dump_json(), PROMPTS, execution, cache,
                                    compile_cache=compile_cache))
    rows = ok_rows(RunAttempt("c", RunKey("e1", 1), 1), config, execution, identity, outcome.result,
                   outcome.telemetry, outcome.conditions, datetime.now(timezone.utc), None)
    return {"row": rows.experiment, "requests": rows.requests, "result": outcome.result,
            "timeseries": rows.timeseries}


def two_gpus(**second: Any) -> Node:
    return Node({UUIDS[0]: Gpu(idle_w=60.0, busy_w=300.0, counter_mj=8_123_456_789_000.0, temperature_c=45.0),
                 UUIDS[1]: Gpu(idle_w=90.0, busy_w=500.0, counter_mj=77_000_000_000_000.0,
                               temperature_c=60.0, **second)})


def execution(**validity: Any) -> ExecutionConfig:
    return ExecutionConfig.model_validate({"validity": {"min_window_s": 0.75, **validity},
                                           "prefill": {"enabled": True, "max_repeats": 10}})


def test_two_gpu_run_figures_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    node = two_gpus()
    out = run_on_node(node, monkeypatch, execution(), baselines={})
    row = out["row"]
    # warmup: 2 requests of 1 prompt (0.5 s); measure: 4 prompts (1.0 s) on 300 + 500 W
    assert row["energy_warmup_j"] == pytest.approx(0.5 * 800.0)
    assert row["energy_window_s"] == 1.0 and row["energy_source"] == "nvml_counter"
    assert row["energy_j"] == pytest.approx(800.0)
    assert json.loads(row["energy_by_gpu_json"]) == pytest.approx({UUIDS[0]: 300.0, UUIDS[1]: 500.0})
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


def test_versions_reach_the_driver_as_plain_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver without the backend's library must still unpickle the result."""
    result = run_on_node(two_gpus(), monkeypatch, execution(), baselines={})["result"]
    assert result.versions["engine"] == "1.2.3"
    assert {type(v) for v in result.versions.values()} == {str}
    assert b"LibraryVersion" not in pickle.dumps(result.versions)


def test_hot_and_throttled_second_gpu_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    node = two_gpus(heats_c_per_s=8.0, throttle_reasons=0x8 | 0x1)
    # Only the windows' own edge samples: the background thread samples on the real clock, so
    # how many of its samples land inside a window of the simulated clock depends on the load.
    monkeypatch.setattr(EnergySampler, "start", lambda self: None)
    row = run_on_node(node, monkeypatch, execution(temperature_max_c=75.0, max_cycle_cv=0.125),
                      baselines={})["row"]
    assert row["max_cycle_cv"] == 0.125, "the campaign's limit, for lem-ray report"
    # GPU 2 starts the measured window at 60 + 8 x 0.5 (warmup) = 64 C and ends it at 72 C
    assert row["temperature_start_c"] == pytest.approx(64.0)
    assert row["temperature_max_c"] == pytest.approx(72.0)
    assert row["validity_flags"] == ["throttled"] and row["valid"] is False
    # GPU 2's samples on the window's edges, 0.1 s apiece: the clock stands still between
    # windows, so the warmup's end and the prefill's begin samples fall on the edges too
    assert json.loads(row["throttle_s_json"]) == pytest.approx({"gpu_idle": 0.4, "hw_slowdown": 0.4})
    hot = run_on_node(two_gpus(heats_c_per_s=8.0), monkeypatch, execution(temperature_max_c=70.0),
                      baselines={})["row"]
    assert hot["validity_flags"] == ["temperature_out_of_range"]
    mig = run_on_node(two_gpus(mig_enabled=True), monkeypatch, execution(), baselines={})["row"]
    assert mig["validity_flags"] == ["mig"], "one GPU of the two in MIG mode is enough"
    # the row keeps the hottest GPU's temperatures, so "too cold" means the hottest one is
    cold = run_on_node(two_gpus(), monkeypatch, execution(temperature_min_c=65.0), baselines={})["row"]
    assert cold["validity_flags"] == ["temperature_out_of_range"], "both GPUs below 65 C"


def test_power_capped_gpu_is_valid_unless_the_campaign_opts_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU held at its power limit is measured as configured; the seconds and limit stay in the row."""
    monkeypatch.setattr(EnergySampler, "start", lambda self: None)
    capped = run_on_node(two_gpus(throttle_reasons=0x4), monkeypatch, execution(), baselines={})["row"]
    assert capped["validity_flags"] == [] and capped["valid"] is True
    assert capped["throttle_reasons"] & 0x4 and capped["power_limit_w"] == 1400.0
    assert json.loads(capped["throttle_s_json"]) == pytest.approx({"sw_power_cap": 0.4})
    strict = run_on_node(two_gpus(throttle_reasons=0x4), monkeypatch,
                         execution(power_cap_invalidates=True), baselines={})["row"]
    assert strict["validity_flags"] == ["throttled"] and strict["valid"] is False


def test_engine_load_reaches_the_row_and_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend's scheduler load becomes columns; a half-full saturating engine with a KV
    preemption is `unsaturated` and `preempted` (batch_size 1 here: mean 0.5 < 0.8)."""
    load = EngineLoad(running_mean=0.5, running_p10=0.0, waiting_step_share=0.75,
                      preemptions=2, steps=12, saturating=True)
    monkeypatch.setattr(FakeEngine, "engine_load", lambda self: load)
    row = run_on_node(two_gpus(), monkeypatch, execution(), baselines={})["row"]
    assert (row["running_batch_mean"], row["running_batch_p10"], row["waiting_step_share"],
            row["kv_preemptions"], row["scheduler_steps"]) == (0.5, 0.0, 0.75, 2, 12)
    assert row["validity_flags"] == ["unsaturated", "preempted"] and row["valid"] is False
    lenient = run_on_node(two_gpus(), monkeypatch,
                          execution(min_batch_fraction=0.5, max_kv_preemptions=2), baselines={})["row"]
    assert lenient["validity_flags"] == [] and lenient["valid"] is True


def test_slo_columns_of_a_run_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 requests of 8 tokens in 1.0 s on 800 J: each 250 ms, TTFT and TPOT 31.25 ms."""
    met = run_on_node(two_gpus(), monkeypatch, execution(), baselines={},
                      slo={"ttft_ms": 40.0, "tpot_ms": 31.25})["row"]
    assert (met["slo_ttft_ms"], met["slo_tpot_ms"], met["slo_min_attainment"]) == (40.0, 31.25, 0.9)
    assert met["slo_attainment"] == 1.0 and met["goodput_tok_s"] == pytest.approx(32.0)
    assert met["energy_j_per_goodput_token"] == pytest.approx(800.0 / 32)
    missed = run_on_node(two_gpus(), monkeypatch, execution(), baselines={},
                         slo={"tpot_ms": 31.0})["row"]
    assert missed["slo_attainment"] == 0.0 and missed["goodput_tok_s"] == 0.0
    assert missed["energy_j_per_goodput_token"] is None and missed["valid"] is True
    plain = run_on_node(two_gpus(), monkeypatch, execution(), baselines={})["row"]
    assert plain["slo_attainment"] is None and plain["goodput_tok_s"] is None


def test_prefill_passes_stop_at_max_repeats_or_window(monkeypatch: pytest.MonkeyPatch) -> None:
    capped = ExecutionConfig.model_validate({"validity": {"min_window_s": 0.75},
                                             "prefill": {"enabled": True, "max_repeats": 2}})
    row = run_on_node(two_gpus(), monkeypatch, capped)["row"]
    assert row["prefill_passes"] == 2 and row["prefill_window_s"] == 0.5
    assert row["energy_prefill_j"] == pytest.approx(0.5 * 800.0 / 2)
    assert row["baseline_power_w"] is None and row["energy_adjusted_j"] is None, "no baseline taken"
    exact = ExecutionConfig.model_validate({"validity": {"min_window_s": 0.25},
                                            "prefill": {"enabled": True, "max_repeats": 10}})
    assert run_on_node(two_gpus(), monkeypatch, exact)["row"]["prefill_passes"] == 1
    off = ExecutionConfig.model_validate({"validity": {"min_window_s": 0.75}, "prefill": {"enabled": False}})
    row = run_on_node(two_gpus(), monkeypatch, off)["row"]
    assert row["prefill_passes"] is None and row["energy_prefill_j"] is None


def test_baseline_of_one_gpu_missing_gives_no_adjustment() -> None:
    """Half a baseline would make the adjusted energy wrong: none at all, then."""
    one = {UUIDS[0]: Baseline(power_w=55.0, age_s=1.0, method="idle_mean_power_instant")}
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


def test_cached_baseline_of_one_gpu_and_measured_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached baseline of GPU 1 alone (GPU 2's is then measured): both are used."""
    cached = {UUIDS[0]: {"power_w": 55.0, "measured_at_s": 1000.0 - 30.0, "method": "idle_mean_power_instant"}}
    row = run_on_node(two_gpus(), monkeypatch, execution(), baselines=cached)["row"]
    assert row["baseline_power_w"] == pytest.approx(55.0 + 90.0)
    assert row["baseline_age_s"] == pytest.approx(30.0), "the oldest of the two"


def warm_runner(node: Node, monkeypatch: pytest.MonkeyPatch, max_engines: int = 4) -> Any:
    worker = worker_on_node(node, monkeypatch)
    plan = execution().model_copy(update={"max_engines_per_worker": max_engines,
                                          "baseline": execution().baseline.model_copy(
                                              update={"enabled": False})})

    def run(precision: str, keep: bool = True) -> tuple[float, bool, list[str]]:
        config = ExperimentConfig.model_validate({**TINY_BASE, "backend": "pytorch",
                                                  "gpus_per_experiment": 2, "fp_precision": precision})
        request = RunRequest(config.model_dump_json(), PROMPTS, plan, None, keep_engine=keep)
        outcome = worker.run(request)
        held = [b.config.fp_precision for b in worker.pool.engines.values()]
        assert len(outcome.engines) == len(held), "the driver hears every engine held"
        return outcome.result.engine_load_s, outcome.result.engine_reused, held

    return run


def test_warm_worker_reuses_an_engine_only_for_the_same_engine_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = two_gpus()
    run = warm_runner(node, monkeypatch)
    assert run("float32") == (LOAD_S, False, ["float32"])
    assert run("float32") == (0.0, True, ["float32"]), "same engine config: reused"
    assert run("bfloat16") == (LOAD_S, False, ["float32", "bfloat16"])
    assert run("float32") == (0.0, True, ["bfloat16", "float32"]), "both kept"
    assert run("bfloat16", keep=False) == (0.0, True, [])
    assert run("bfloat16") == (LOAD_S, False, ["bfloat16"]), "released when asked not to keep"
    assert node.engines == ["float32", "bfloat16", "bfloat16"] and node.live == 1


def test_warm_worker_keeps_the_most_recent_engines_up_to_its_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = two_gpus()
    run = warm_runner(node, monkeypatch, max_engines=2)
    for precision in ("float32", "bfloat16", "float16"):
        assert run(precision)[:2] == (LOAD_S, False)
    assert run("bfloat16") == (0.0, True, ["float16", "bfloat16"])
    assert run("float32") == (LOAD_S, False, ["bfloat16", "float32"]), "float16 was oldest"
    assert node.live == 2


def test_a_load_out_of_memory_beside_other_engines_is_tried_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = two_gpus()
    node.room = 2
    run = warm_runner(node, monkeypatch)
    run("float32")
    run("bfloat16")
    assert run("float16") == (LOAD_S, False, ["float16"]), "the others made room"
    node.room = 0
    with pytest.raises(RuntimeError, match="out of memory"):
        run("float32")
    assert node.live == 0, "a failed run leaves no engine behind"


def test_new_shapes_out_of_memory_beside_other_engines_are_prepared_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = two_gpus()
    run = warm_runner(node, monkeypatch)
    run("float32")
    run("bfloat16")
    node.prepare_room = 1
    assert run("float32") == (0.0, True, ["float32"]), "bfloat16 made room, float32 kept"
    node.prepare_room = 0
    with pytest.raises(RuntimeError, match="out of memory"):
        run("float32")
    assert node.live == 0


def test_host_energy_of_the_window_and_its_idle_baseline(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The package counter wraps during the measured window; dram adds, core and psys do not."""
    node = two_gpus()
    node.powercap = FakePowercap(tmp_path / "powercap")
    # 100 J before the wrap at load end: warmup (0.5 s x 120 W) uses 60, the window wraps
    node.powercap.set("intel-rapl:0", MAX_UJ - round((LOAD_S * CPU_BUSY_W + 100.0) * 1e6))
    # The windows' edge reads only: a background read between the fake's counter update and
    # its clock step would see energy without time.
    monkeypatch.setattr(EnergySampler, "start", lambda self: None)
    out = run_on_node(node, monkeypatch, execution(), baselines={})
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


def test_host_energy_shared_with_another_run_on_the_node(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    node = two_gpus()
    node.powercap = FakePowercap(tmp_path / "powercap")
    runs = NodeRuns()
    runs.started("node-1", "another-worker", node.t_s)
    runs.started("node-2", "elsewhere", node.t_s)
    row = run_on_node(node, monkeypatch, execution(), baselines={}, runs=runs)["row"]
    assert row["host_shared_by_runs"] == 1
    assert row["host_energy_j"] == pytest.approx(CPU_BUSY_W + DRAM_W), "measured all the same"
    assert row["energy_with_host_j_per_output_token"] is None, "not this run's alone"
    assert row["energy_j_per_output_token"] == pytest.approx(25.0)
    # the host was not idle while the other run ran: no host baseline taken, the GPUs' taken
    assert row["host_baseline_power_w"] is None and row["host_energy_adjusted_j"] is None
    assert row["baseline_power_w"] == pytest.approx(150.0)


def test_node_without_powercap_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    row = run_on_node(two_gpus(), monkeypatch, execution(), baselines={})["row"]
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

    monkeypatch.setattr(EnergySampler, "start", lambda self: None)
    # only the windows' edge samples: judge the gap on them
    monkeypatch.setattr("lem_ray.results.validity.MIN_GAP_SAMPLES_PER_GPU", 2)
    row = run_on_node(lying(), monkeypatch, execution(), baselines={})["row"]
    assert row["energy_integrated_j"] == pytest.approx(880.0)
    assert row["energy_methods_gap"] == pytest.approx(-0.1)
    assert row["validity_flags"] == ["energy_methods_disagree"] and row["valid"] is False
    loose = run_on_node(lying(), monkeypatch, execution(max_energy_methods_gap=0.11), baselines={})["row"]
    assert loose["validity_flags"] == []
    short = run_on_node(lying(), monkeypatch, execution(min_window_s=2.0), baselines={})["row"]
    assert short["validity_flags"] == ["short_window"], "too short a window: the gap is not judged"


class CompilingEngine(FakeEngine):
    """Compiles its kernels while it loads, unless the compile cache hands them over."""

    def compiler_versions(self) -> dict[str, str] | None:
        return {"engine": "1.2.3"}

    def use_compiled(self, artifact: bytes) -> None:
        self.node.log.append(("loaded kernels", artifact))

    def compiled_artifact(self) -> bytes | None:
        return b"kernels"


def test_rows_say_whether_the_engine_compiled_or_loaded_its_kernels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fresh worker compiles and publishes (miss); the next fresh worker's engine gets the
    same artifact (hit, same hash); with the cache off, off; an engine that compiles
    nothing says nothing."""
    cache = str(tmp_path / "compile_cache")
    seen = []
    for engine, location in ((CompilingEngine, cache), (CompilingEngine, cache),
                             (CompilingEngine, None), (FakeEngine, cache)):
        node = two_gpus()
        row = run_on_node(node, monkeypatch, ExecutionConfig(), engine=engine,
                          compile_cache=location)["row"]
        seen.append((row["compile_cache"], row["compile_cache_hash"]))
        if seen[-1][0] == "hit":
            assert ("loaded kernels", b"kernels") in node.log
    sha = hashlib.sha256(b"kernels").hexdigest()
    assert seen == [("miss", sha), ("hit", sha), ("off", None), (None, None)]
