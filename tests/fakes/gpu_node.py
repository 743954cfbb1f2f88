"""A two-GPU node on a manual clock, answering as NVML does (counters in mJ since driver load,
far from zero and different per GPU; instant power in W; temperatures; clocks-event bits), and
an engine whose work advances that clock by exact binary fractions of a second: every figure a
run reports on it can be written out by hand. Shared by the protocol's and the energy path's
tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lem_ray.backends.base import Backend, RequestRecord
from lem_ray.telemetry.nvml import DeviceReader, GpuSample
from lem_ray.telemetry.rapl import HostEnergy
from lem_ray.telemetry.sampler import EnergySampler
from tests.fakes.powercap import FakePowercap

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
                         temperature_c=self.gpu.temperature_c, sm_clock_mhz=1980,
                         mem_clock_mhz=3201, memory_used_mib=2048.0,
                         utilization_pct=100.0 if self.node.busy else 0.0,
                         throttle_reasons=self.gpu.throttle_reasons)

    def environment(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "name": self.name, "power_limit_w": 700.0,
                "driver_version": "570.86", "cuda_driver_version": "12.8",
                "mig_enabled": self.gpu.mig_enabled,
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

    def generate(
        self, prompts: list[str], max_output_tokens: int | None = None
    ) -> list[RequestRecord]:
        most, _ = self.output_bounds(max_output_tokens)
        per_prompt_s = PREFILL_PROMPT_S if most == 1 else PROMPT_S
        records = []
        for i, prompt in enumerate(prompts):
            start_s = self.node.t_s
            self.node.work(per_prompt_s)
            records.append(RequestRecord(
                index=i, input_tokens=len(prompt.split()), output_tokens=most,
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


PROMPTS = ["one two three", "four five six seven", "eight nine",
           "ten eleven twelve thirteen fourteen"]


def two_gpus(**second: Any) -> Node:
    return Node({UUIDS[0]: Gpu(idle_w=60.0, busy_w=300.0, counter_mj=8_123_456_789_000.0,
                               temperature_c=45.0),
                 UUIDS[1]: Gpu(idle_w=90.0, busy_w=500.0, counter_mj=77_000_000_000_000.0,
                               temperature_c=60.0, **second)})


def node_sampler(node: Node, host_key: str = "host", interval_ms: float = 100) -> EnergySampler:
    """The campaign's sampler on the node's GPUs and host, on the node's clock."""
    return EnergySampler(list(node.gpus), interval_ms, device_factory=node.device,
                         clock=node.clock, host=node.host(), host_key=host_key)
