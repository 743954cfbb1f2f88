"""Host energy from powercap trees shaped as real ones, and the rule for runs sharing a node."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lem_ray.execution.worker.node_runs import NodeRuns, overlaps
from lem_ray.results.schema import TABLES
from lem_ray.results.store import read_table
from lem_ray.telemetry.rapl import HostEnergy, discover, host_status, read_text, wrapped_delta_uj
from lem_ray.telemetry.sampler import EnergySampler
from tests.fakes.powercap import MAX_UJ, FakePowercap

PACKAGE, DRAM = "intel-rapl:0", "intel-rapl:0/intel-rapl:0:0"


def test_package_and_dram_zones_only(tmp_path: Path) -> None:
    """core is inside the package's figure and psys covers the platform: neither is added."""
    tree = FakePowercap(tmp_path, packages=2)
    zones, reason = discover(str(tmp_path))
    assert reason is None
    assert [(os.path.relpath(z.path, tmp_path), z.kind) for z in zones] == [
        (PACKAGE, "cpu"), (DRAM, "dram"),
        ("intel-rapl:1", "cpu"), ("intel-rapl:1/intel-rapl:1:0", "dram")]
    host = HostEnergy(str(tmp_path))
    start = host.read(0.0)
    for rel, joules in ((PACKAGE, 100.0), ("intel-rapl:1", 80.0), (DRAM, 10.0),
                        ("intel-rapl:1/intel-rapl:1:0", 5.0), ("intel-rapl:0/intel-rapl:0:1", 60.0),
                        ("intel-rapl:2", 999.0)):
        tree.add(rel, joules)
    window = host.window(start, host.read(1.0))
    assert (window.cpu_energy_j, window.dram_energy_j) == pytest.approx((180.0, 15.0))
    assert window.energy_j == pytest.approx(195.0)
    assert window.source == "rapl:package+dram" and window.unavailable_reason is None


def test_wrap_around_at_max_energy_range(tmp_path: Path) -> None:
    assert wrapped_delta_uj(MAX_UJ - 5, 7, MAX_UJ) == 12
    tree = FakePowercap(tmp_path, start_uj=MAX_UJ - 30_000_000)
    host = HostEnergy(str(tmp_path))
    start = host.read(0.0)
    # two wraps in the window, each seen by a read in between (the sampler's ticks)
    for _ in range(4):
        tree.add(PACKAGE, MAX_UJ / 2e6)
        host.read(0.5)
    tree.add(PACKAGE, 40.0)
    assert tree.counters[PACKAGE] < MAX_UJ - 30_000_000, "the counter wrapped"
    assert host.window(start, host.read(1.0)).cpu_energy_j == pytest.approx(2 * MAX_UJ / 1e6 + 40.0)


def test_zone_vanishing_mid_run(tmp_path: Path) -> None:
    tree = FakePowercap(tmp_path)
    host = HostEnergy(str(tmp_path))
    start = host.read(0.0)
    tree.add(PACKAGE, 50.0)
    tree.remove(DRAM)
    window = host.window(start, host.read(1.0))
    assert window.cpu_energy_j == pytest.approx(50.0) and window.dram_energy_j is None
    assert "intel-rapl:0:0 vanished or could not be read" in window.unavailable_reason
    # a zone that failed between the edges and came back may have missed a wrap: null too
    tree2 = FakePowercap(tmp_path / "again")
    host2 = HostEnergy(str(tmp_path / "again"))
    start2 = host2.read(0.0)
    saved = tree2.counters[PACKAGE]
    (tmp_path / "again" / PACKAGE / "energy_uj").unlink()
    host2.read(0.5)
    tree2.set(PACKAGE, saved + 1_000_000)
    assert host2.window(start2, host2.read(1.0)).cpu_energy_j is None


def test_energy_uj_root_only(tmp_path: Path) -> None:
    """Linux >= 5.10 makes energy_uj readable by root alone (chmod 000 stops no root test)."""
    FakePowercap(tmp_path)

    def denied(path: str) -> str:
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return read_text(path)

    host = HostEnergy(str(tmp_path), read=denied)
    assert host.zones == [] and host.source is None
    assert "energy_uj is not readable" in host.unavailable_reason
    window = host.window(host.read(0.0), host.read(1.0))
    assert window.energy_j is None and window.unavailable_reason == host.unavailable_reason
    status = host_status(str(tmp_path), read=denied)
    assert status["zones"] == [] and "chmod o+r" in status["fix"]


def test_vm_without_powercap_and_amd_without_dram(tmp_path: Path) -> None:
    host = HostEnergy(str(tmp_path / "missing"))
    assert host.zones == [] and "does not exist" in host.unavailable_reason
    assert "mount" in host_status(str(tmp_path / "missing"))["fix"]
    sampler = EnergySampler([], host=host)
    sampler.begin("measure")
    window = sampler.end("measure")
    assert window.host is not None and window.host.energy_j is None
    assert window.host.unavailable_reason == host.unavailable_reason
    FakePowercap(tmp_path / "amd", dram=False)
    amd = HostEnergy(str(tmp_path / "amd"))
    assert amd.source == "rapl:package"
    window = amd.window(amd.read(0.0), amd.read(1.0))
    assert window.cpu_energy_j == 0.0 and window.dram_energy_j is None
    assert window.energy_j == 0.0 and "no dram zone" in window.unavailable_reason
    assert host_status(str(tmp_path / "amd"))["zones"] == ["intel-rapl:0 (package-0)"]


def test_cpu_only_node_measures_its_host(tmp_path: Path) -> None:
    """No GPU to sample: the sampler still reads the host at the edges and in its series."""
    tree = FakePowercap(tmp_path)
    now = [100.0]
    sampler = EnergySampler([], host=HostEnergy(str(tmp_path)), clock=lambda: now[0])
    sampler.begin("measure")
    for _ in range(4):
        tree.add(PACKAGE, 25.0)
        tree.add(DRAM, 2.5)
        now[0] += 0.25
        sampler._sample_host()
    window = sampler.end("measure")
    assert window.energy_j is None and window.host is not None
    assert (window.host.cpu_energy_j, window.host.dram_energy_j) == pytest.approx((100.0, 10.0))
    rows = sampler.timeseries()
    assert [r["t_s"] for r in rows] == [100.0, 100.25, 100.5, 100.75, 101.0, 101.0]
    assert [r["cpu_power_w"] for r in rows[1:5]] == pytest.approx([100.0] * 4)
    assert rows[-1]["cpu_energy_j"] == pytest.approx(100.0)
    assert rows[-1]["dram_energy_j"] == pytest.approx(10.0)


def test_idle_host_baseline_under_the_node_key(tmp_path: Path) -> None:
    """Counters over the baseline's seconds: 3 J of package and 0.5 J of DRAM between its edges."""
    tree = FakePowercap(tmp_path)
    reads = []

    def read_counting(path: str) -> str:
        reads.append(path)
        return read_text(path)

    sampler = EnergySampler([], host=HostEnergy(str(tmp_path), read=read_counting),
                            host_key="host:node-1")
    original_sleep = time.sleep

    def sleep_and_work(s: float) -> None:
        tree.add(PACKAGE, 1.5)
        tree.add(DRAM, 0.25)
        original_sleep(s)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lem_ray.telemetry.sampler.time.sleep", sleep_and_work)
        found = sampler.measure_idle_baseline(duration_s=0.03, interval_ms=10)
    entry = found["host:node-1"]
    assert set(found) == {"host:node-1"}
    assert entry["power_w"] == pytest.approx(3.5 / entry["duration_s"])
    assert entry["method"] == "idle_mean_rapl:package+dram"
    reads.clear()
    assert sampler.measure_idle_baseline(duration_s=0.03)["host:node-1"]["age_s"] >= 0
    assert reads == [], "fresh: taken from the cache"


def test_overlap_rule() -> None:
    # [start, end] against a window [10, 20]; end None: still running
    assert overlaps(5, 15, 10, 20) and overlaps(12, 18, 10, 20) and overlaps(15, None, 10, 20)
    assert overlaps(5, None, 10, 20)
    assert not overlaps(5, 10, 10, 20), "ended as the window began"
    assert not overlaps(20, None, 10, 20), "began as the window ended"
    runs = NodeRuns()
    runs.started("n1", "a", 0.0)
    runs.started("n1", "b", 5.0)
    runs.started("n2", "c", 5.0)
    runs.ended("b", 12.0)
    # a's window [10, 20] shared with b (ended inside it); c is on another node
    assert runs.sharing("n1", "a", 10.0, 20.0) == 1
    runs.started("n1", "d", 25.0)
    assert runs.sharing("n1", "d", 26.0, 30.0) == 1, "a still runs, b ended long before"
    assert runs.active("n1", "d", 25.0) == 1 and runs.active("n1", "x", 25.0) == 2
    assert runs.active("n1", "x", 0.0) == 1, "a run started at that instant is active"
    runs.ended("a", 31.0)
    assert runs.sharing("n1", "d", 26.0, 30.0) == 1, "a's record outlives it while d runs"
    runs.ended("d", 32.0)
    runs.ended("c", 32.0)
    assert runs.sharing("n1", "x", 0.0, 100.0) == 0, "nothing running: every record pruned"


def test_results_written_before_the_host_columns_read_with_them_null(tmp_path: Path) -> None:
    new = {"experiments": ["energy_methods_gap", "cpu_energy_j", "host_shared_by_runs",
                           "energy_with_host_j_per_output_token"],
           "requests": ["energy_attribution"], "timeseries": ["cpu_power_w", "dram_energy_j"]}
    ids = {"campaign_name": "c", "experiment_id": "e", "run_id": "e-c1", "cycle": 1, "attempt": 1}
    for table, columns in new.items():
        old = pa.schema([f for f in TABLES[table] if f.name not in columns])
        (tmp_path / table).mkdir()
        row = {**dict.fromkeys(old.names), **ids}
        pq.write_table(
            pa.Table.from_pylist([row], schema=old), tmp_path / table / "e-c1-a1.parquet"
        )
        back = read_table(tmp_path, table)
        assert back.schema.equals(TABLES[table])
        assert all(back[c].to_pylist() == [None] for c in columns)
