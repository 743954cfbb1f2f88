"""Warm engines on real Ray: reuse exactly when the engine config is equal, a cold start on
request, a killed warm worker costs one run, and the GPU-seconds by phase add up."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import ray

from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.execution.driver.cluster import WORKER_ENV
from lem_ray.results.manifest import load_manifest
from tests.conftest import TINY_BASE
from tests.faults import running_workers, wait_for

pytestmark = pytest.mark.slow


def engine_key(row: dict) -> str:
    return ExperimentConfig.model_validate_json(row["config_json"]).engine_key


def rows_of(out: Path) -> list[dict]:
    return ds.dataset(out / "experiments").to_table().to_pylist()


@pytest.fixture(scope="module")
def two_gpus():
    """Two logical GPUs: two workers at once, each keeping its engine."""
    ray.init(num_cpus=3, num_gpus=2, include_dashboard=False, namespace="lem-ray-test",
             runtime_env={"env_vars": WORKER_ENV})
    yield
    ray.shutdown()


def test_reuse_exactly_when_engine_config_equal_and_gpu_seconds_add_up(
    two_gpus, tmp_path: Path
) -> None:
    out = tmp_path / "r"
    campaign = {
        "campaign_name": "warm",
        "base": TINY_BASE,
        "grid": {"backends": ["pytorch"], "backend_overrides": {
            "pytorch": {"batch_size": [1, 2], "attn_implementation": ["sdpa", "eager"]}}},
        "execution": {"cycles": 2},
    }
    result = run_campaign(campaign, results_dir=out)
    assert result.counts["ok"] == 8
    rows = sorted(rows_of(out), key=lambda r: r["started_at"])
    held: dict[tuple[str, ...], set[str]] = {}
    for row in rows:
        gpus = held.setdefault(tuple(row["gpu_ids"]), set())
        assert row["engine_reused"] == (engine_key(row) in gpus), row["run_id"]
        assert row["engine_load_s"] >= 0.0
        gpus.add(engine_key(row))
    assert sum(r["engine_reused"] for r in rows) >= 2, "batch sizes share a loaded engine"
    assert len({engine_key(r) for r in rows}) == 2

    gpu_time = result.gpu_time
    seconds = gpu_time["gpu_seconds"]
    assert set(seconds) == {"measuring", "warmup", "loading", "baseline", "cooldown", "idle"}
    assert all(v >= 0 for v in seconds.values()) and seconds["measuring"] > 0
    assert sum(seconds.values()) == pytest.approx(gpu_time["total_gpu_s"])
    assert gpu_time["total_gpu_s"] == pytest.approx(2 * gpu_time["wall_s"])
    measured = sum(r["energy_window_s"] + (r["prefill_window_s"] or 0) for r in rows)
    assert seconds["measuring"] == pytest.approx(measured, rel=1e-6)
    assert seconds["loading"] >= sum(r["engine_load_s"] for r in rows)

    status = subprocess.run([sys.executable, "-m", "lem_ray.cli", "status", str(out), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["gpu_seconds"] == seconds
    assert json.loads(status.stdout)["compile_cache"] is None, "eager engines compile nothing"


def test_interleaved_cycles_over_three_engines_load_each_engine_once(
    two_gpus, tmp_path: Path
) -> None:
    """One worker (every run takes both GPUs) keeps all three engines: after cycle 1 every
    run reuses one, though the interleaved order changes engine every run."""
    out = tmp_path / "r"
    campaign = {"campaign_name": "three", "base": {**TINY_BASE, "backend": "pytorch",
                                                   "gpus_per_experiment": 2},
                "grid": {"shared": {"random_seed": [1, 2, 3]}},
                "execution": {"cycles": 3, "prefill": {"enabled": False}}}
    run_campaign(campaign, results_dir=out)
    rows = sorted(rows_of(out), key=lambda r: r["started_at"])
    assert [r["status"] for r in rows] == ["ok"] * 9
    assert len({engine_key(r) for r in rows}) == 3
    assert sum(not r["engine_reused"] for r in rows) == 3
    assert [r["engine_reused"] for r in rows if r["cycle"] > 1] == [True] * 6
    engine_ids = {engine_key(r): {x["engine_id"] for x in rows if engine_key(x) == engine_key(r)}
                  for r in rows}
    assert all(len(ids) == 1 for ids in engine_ids.values()), "each engine serves its 3 cycles"
    assert len(set.union(*engine_ids.values())) == 3


def test_force_cold_start_loads_every_run_in_a_fresh_worker(two_gpus, tmp_path: Path) -> None:
    out = tmp_path / "r"
    campaign = {"campaign_name": "cold", "base": {**TINY_BASE, "backend": "pytorch"},
                "execution": {"cycles": 3, "force_cold_start": True}}
    run_campaign(campaign, results_dir=out)
    rows = rows_of(out)
    assert len(rows) == 3 and not any(r["engine_reused"] for r in rows)
    assert len({r["engine_id"] for r in rows}) == 3, "an engine id per load"
    assert all(r["engine_load_s"] > 0 for r in rows)
    assert {r["compile_cache"] for r in rows} == {None}, "an eager engine compiles nothing"
    assert not (out / "compile_cache").exists()


def test_killed_warm_worker_costs_one_retried_run(two_gpus, tmp_path: Path) -> None:
    """Three runs of one engine on one worker: killed in its second run (engine reused),
    only that run is lost and retried; the first stays done, the third runs."""
    out = tmp_path / "r"
    long = {**TINY_BASE, "backend": "pytorch", "max_output_tokens": 16, "min_output_tokens": 16,
            "prompts": {"source": "synthetic", "count": 300, "input_len": {"mean": 16, "std": 4}},
            "gpus_per_experiment": 2}
    campaign = {"campaign_name": "warmkill", "base": long, "execution": {"cycles": 3}}
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(r=run_campaign(campaign, results_dir=out)))
    thread.start()
    wait_for(lambda: (out / "manifest").exists() and any(
        e["state"] == "ok" for e in load_manifest(out)["runs"].values()), 300, "a first run")
    victim = wait_for(lambda: next(iter(running_workers()), None), 120, "the second run")
    wait_for(lambda: "running" in {e["state"] for e in load_manifest(out)["runs"].values()},
             60, "the second run recorded")
    victim.kill()
    thread.join(timeout=600)
    assert result["r"].counts == {"planned": 3, "skipped_done": 0, "ran": 3, "failed": 0,
                                  "ok": 3, "retried": 1}
    rows = rows_of(out)
    died = [r for r in rows if r["status"] == "failed"]
    assert len(died) == 1 and died[0]["error"].startswith("worker died")
    assert died[0]["cycle"] == 2 and died[0]["attempt"] == 1
    ok = {(r["cycle"], r["attempt"]) for r in rows if r["status"] == "ok"}
    assert ok == {(1, 1), (2, 2), (3, 1)}
