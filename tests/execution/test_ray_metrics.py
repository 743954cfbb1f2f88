"""Ray's metrics endpoint during a real campaign: the driver's runs by state and GPU-seconds,
and a sampler actor's power and temperature with the run's tags.

A local Ray with a Prometheus export port, scraped over HTTP as Prometheus would. The campaign
runs on CPU, where there is no NVML: its own samplers publish nothing, so a sampler actor of
the real class runs beside it in Ray on two GPUs whose NVML readings are scripted, started
with the tags of one of the campaign's runs.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
import ray.cloudpickle

from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.execution.driver.cluster import WORKER_ENV
from lem_ray.execution.metrics import CampaignGauges, run_tags
from lem_ray.execution.worker.sampler_actor import SamplerActor
from lem_ray.planning.plan import plan_campaign
from lem_ray.records import RunAttempt
from lem_ray.telemetry.nvml import DeviceReader, GpuSample
from lem_ray.telemetry.sampler import EnergySampler
from tests.conftest import RAY_TMP, TINY_BASE

pytestmark = pytest.mark.slow

UUIDS = ["GPU-3f1c0d2e-0000-4000-8000-000000000000", "GPU-9a7b6c5d-1111-4111-8111-111111111111"]
POWER_W = {UUIDS[0]: 312.5, UUIDS[1]: 287.25}
TEMPERATURE_C = {UUIDS[0]: 61.0, UUIDS[1]: 58.5}
EXPORT_INTERVAL_MS = 2000
"""Ray's metrics export interval here (10 s by default): a gauge not set again leaves the
endpoint after two of them, so the test scrapes often."""
SCRAPE_EVERY_S = 0.5
SCRAPE_LIMIT_S = 120.0


class ScriptedGpu(DeviceReader):
    """Answers as NVML would for a GPU holding steady power and temperature."""

    def __init__(self, uuid: str) -> None:
        self.uuid, self.name = uuid, "NVIDIA H200"
        self.supports_energy_counter, self.power_method = True, "power_instant"

    def energy_mj(self) -> int:
        return round(time.time() * POWER_W[self.uuid] * 1000)

    def power_instant_w(self) -> float:
        return POWER_W[self.uuid]

    def sample(self) -> GpuSample:
        return GpuSample(t_s=time.time(), power_w=POWER_W[self.uuid],
                         temperature_c=TEMPERATURE_C[self.uuid], sm_clock_mhz=1980,
                         mem_clock_mhz=3201, memory_used_mib=2048.0, utilization_pct=100.0,
                         throttle_reasons=0)

    def environment(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "name": self.name, "compute_process_pids": []}

    def compute_process_pids(self) -> list[int]:
        return []


class ScriptedSampler(SamplerActor.__ray_actor_class__):  # type: ignore[name-defined]
    """The real sampler actor, its EnergySampler reading the scripted GPUs."""

    def __init__(self, uuids: list[str], sample_interval_ms: float) -> None:
        super().__init__(uuids, sample_interval_ms, None)
        self.sampler = EnergySampler(uuids, sample_interval_ms, device_factory=ScriptedGpu)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_with_metrics() -> Iterator[int]:
    port = free_port()
    ray.init(address="local", _temp_dir=os.path.join(RAY_TMP, "ray"), num_cpus=2,
             include_dashboard=False, namespace="lem-ray-test",
             runtime_env={"env_vars": WORKER_ENV}, _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": EXPORT_INTERVAL_MS})
    try:
        yield port
    finally:
        ray.shutdown()


SERIES = re.compile(r'^(\w+)\{(.*)\} (\S+)$')
TAG = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """(name, tags, value) of every lem-ray series on the endpoint (Ray prefixes `ray_`)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    found = []
    for line in body.splitlines():
        match = SERIES.match(line)
        if match and match.group(1).startswith("ray_lem_ray_"):
            found.append((match.group(1), dict(TAG.findall(match.group(2))), float(match.group(3))))
    return found


def named(series: list[tuple[str, dict[str, str], float]], name: str,
          **tags: str) -> list[tuple[dict[str, str], float]]:
    return [(t, v) for n, t, v in series
            if n == name and all(t.get(k) == v for k, v in tags.items())]


def campaign(name: str, metrics: bool, tmp_path: Path) -> dict[str, Any]:
    return {
        "campaign_name": name,
        "base": TINY_BASE,
        "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 3]}}},
        "execution": {"cycles": 2, "config_gap_s": 2, "telemetry": {"ray_metrics": metrics}},
        "output": {"results_dir": str(tmp_path / name)},
    }


@dataclass
class Scrape:
    series: list[tuple[str, dict[str, str], float]]
    running: str | None
    """The campaign running while this scrape was taken, if any."""


class Scraper:
    """Scrapes the endpoint every SCRAPE_EVERY_S from a thread, as Prometheus would, noting
    which campaign was running at the time."""

    def __init__(self, port: int) -> None:
        self.port, self.scrapes, self.running = port, [], None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(SCRAPE_EVERY_S):
            running = self.running
            self.scrapes.append(Scrape(scrape(self.port), running))

    def run(self, config: dict[str, Any]) -> Any:
        self.running = config["campaign_name"]
        try:
            return run_campaign(config)
        finally:
            time.sleep(EXPORT_INTERVAL_MS / 1000 + 2 * SCRAPE_EVERY_S)  # its last values, exported
            self.running = None

    def wait_for(self, name: str, **tags: str) -> list[tuple[dict[str, str], float]]:
        deadline = time.monotonic() + SCRAPE_LIMIT_S
        while time.monotonic() < deadline:
            found = [named(s.series, name, **tags) for s in self.scrapes]
            if any(found):
                return next(f for f in found if f)
            time.sleep(SCRAPE_EVERY_S)
        raise AssertionError(f"no {name} {tags} on the endpoint within {SCRAPE_LIMIT_S:.0f} s")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def test_endpoint_shows_runs_and_gpu_power_with_their_tags(
    ray_with_metrics: int, tmp_path: Path
) -> None:
    scraper = Scraper(ray_with_metrics)
    watched = campaign("watched", True, tmp_path)
    ids = RunAttempt("watched", plan_campaign(watched).runs[0], 1)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    sampler = ray.remote(num_cpus=0)(ScriptedSampler).remote(UUIDS, 100)
    ray.get(sampler.start.remote(run_tags(ids)))
    try:
        assert scraper.run(watched).counts["ok"] == 4
        quiet = campaign("quiet", False, tmp_path)
        assert scraper.run(quiet).counts["ok"] == 4
        power = scraper.wait_for("ray_lem_ray_gpu_power_w", run_id=ids.run_id)
        temperatures = scraper.wait_for("ray_lem_ray_gpu_temperature_c", run_id=ids.run_id)
    finally:
        ray.get(sampler.finish.remote())
        scraper.close()

    # The sampler's series: one per GPU, tagged with the node, the GPU and the run.
    expected = {**run_tags(ids), "node_ip": ray.util.get_node_ip_address()}
    assert {t["gpu_uuid"]: v for t, v in power} == POWER_W
    assert {t["gpu_uuid"]: v for t, v in temperatures} == TEMPERATURE_C
    for tags, _ in power + temperatures:
        assert {k: tags[k] for k in expected} == expected

    # The driver's: runs by state while the campaign runs, ending with its four runs ok.
    states = [
        {t["state"]: v for t, v in named(s.series, "ray_lem_ray_runs", campaign_name="watched")}
        for s in scraper.scrapes
        if s.running == "watched"
    ]
    states = [found for found in states if found]
    assert states, "the run-state series appear while the campaign runs"
    assert all(set(found) == {"pending", "running", "ok", "failed"} for found in states)
    assert states[0]["pending"] > 0 and states[-1] == {
        "pending": 0,
        "running": 0,
        "ok": 4,
        "failed": 0,
    }
    phases = [
        {
            t["phase"]: v
            for t, v in named(s.series, "ray_lem_ray_gpu_seconds", campaign_name="watched")
        }
        for s in scraper.scrapes
    ]
    assert dict.fromkeys(("measuring", "warmup", "loading", "baseline", "cooldown", "idle"), 0.0) \
        in phases, "GPU-seconds by phase (none on CPU)"

    # With ray_metrics off, nothing of that campaign reached the endpoint, which still exported.
    during_quiet = [s.series for s in scraper.scrapes if s.running == "quiet"]
    assert any(named(series, "ray_lem_ray_gpu_power_w") for series in during_quiet)
    assert not [
        t for series in during_quiet for _, t, _ in series if t.get("campaign_name") == "quiet"
    ]


def test_finished_run_energy_on_the_endpoint(ray_with_metrics: int) -> None:
    """What the driver publishes for a run with energy (GPUs only): its own gauge, and the
    experiment's running total."""
    gauges = CampaignGauges("energy")
    gauges.finished({"experiment_id": "e1", "run_id": "e1-c1", "energy_j": 812.5})
    gauges.finished({"experiment_id": "e1", "run_id": "e1-c2", "energy_j": 787.5})
    gauges.finished({"experiment_id": "e1", "run_id": "e1-c3", "energy_j": None})
    deadline = time.monotonic() + SCRAPE_LIMIT_S
    while time.monotonic() < deadline:
        series = scrape(ray_with_metrics)
        runs = {
            t["run_id"]: v
            for t, v in named(series, "ray_lem_ray_run_energy_j", campaign_name="energy")
        }
        total = named(
            series, "ray_lem_ray_energy_j_total", campaign_name="energy", experiment_id="e1"
        )
        if runs and total:
            break
        time.sleep(SCRAPE_EVERY_S)
    assert runs == {"e1-c1": 812.5, "e1-c2": 787.5}
    assert [v for _, v in total] == [1600.0]
