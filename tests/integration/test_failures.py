"""Nothing lost, nothing twice: real Ray, real processes killed, real nodes removed."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import ray
import yaml

from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.execution.driver.cluster import WORKER_ENV
from lem_ray.results.manifest import load_manifest
from tests.conftest import TINY_BASE, own_cluster, ray_env
from tests.faults import CampaignThread, DatasetWatcher, kill_one_worker, running_workers, wait_for

pytestmark = pytest.mark.slow

LONG = {**TINY_BASE, "max_output_tokens": 16, "min_output_tokens": 16,
        "prompts": {"source": "synthetic", "count": 300, "input_len": {"mean": 16, "std": 4}}}


def experiments(out: Path) -> list[dict]:
    return ds.dataset(out / "experiments").to_table().to_pylist()


def campaign_actor_nodes() -> dict[str, str]:
    """Node of each live campaign actor (Ray's GCS view: the test cluster runs no dashboard,
    which ray.util.state needs)."""
    from ray._private import state

    return {a["ActorClassName"]: a["Address"]["NodeID"] for a in state.actors().values()
            if a["State"] == "ALIVE" and a["ActorClassName"] in ("CampaignRecord", "ManifestActor")}


def one_ok_per_run(rows: list[dict]) -> Counter:
    return Counter((r["experiment_id"], r["cycle"]) for r in rows if r["status"] == "ok")


def test_killed_worker_is_retried_and_ends_ok_once(local_ray, tmp_path: Path) -> None:
    out = tmp_path / "r"
    campaign = {
        "campaign_name": "kill",
        "base": LONG,
        "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2]}}},
        "execution": {"cycles": 1},
    }
    watcher = DatasetWatcher(out)
    watcher.start()
    thread = CampaignThread(campaign, out)
    thread.start()
    kill_one_worker()
    result = thread.finish()
    watcher.finish()
    assert result.counts["retried"] == 1 and result.counts["ok"] == 2
    rows = experiments(out)
    assert set(one_ok_per_run(rows).values()) == {1} and len(one_ok_per_run(rows)) == 2
    died = [r for r in rows if r["status"] == "failed"]
    assert len(died) == 1 and died[0]["attempt"] == 1 and died[0]["error"].startswith("worker died")
    retried = [r for r in rows if r["run_id"] == died[0]["run_id"] and r["status"] == "ok"]
    assert retried[0]["attempt"] == 2
    states = load_manifest(out)["runs"]
    assert {e["state"] for e in states.values()} == {"ok"}
    assert states[died[0]["run_id"]]["attempt"] == 2
    assert watcher.reads > 0 and watcher.problems == []


def test_backend_error_and_timeout_fail_with_reason_others_finish(
    local_ray, tmp_path: Path
) -> None:
    out = tmp_path / "r"
    campaign = {
        "campaign_name": "errors",
        "base": TINY_BASE,
        "experiments": [
            {"backend": "pytorch"},
            {"backend": "pytorch", "model_name": str(tmp_path / "no-model"), "load_format": "auto"},
        ],
        "execution": {"cycles": 1},
    }
    result = run_campaign(campaign, results_dir=out)
    assert result.counts["ok"] == 1 and result.counts["failed"] == 1
    failed = [r for r in experiments(out) if r["status"] == "failed"]
    assert (
        failed[0]["error"].startswith("OSError")
        and str(tmp_path / "no-model") in failed[0]["error"]
    )

    # The limit is far below the run's length on any machine: 5,000 prompts one at a time are
    # 5,000 generate() calls of 16 decoder passes each, not done in 0.5 s.
    slow = {"campaign_name": "timeout",
            "base": {**LONG, "prompts": {"source": "synthetic", "count": 5000}},
            "experiments": [{"backend": "pytorch"}],
            "execution": {"cycles": 1, "run_timeout_s": 0.5, "max_attempts": 3}}
    result = run_campaign(slow, results_dir=tmp_path / "t")
    assert result.counts["failed"] == 1 and result.counts["retried"] == 0
    rows = experiments(tmp_path / "t")
    assert [(r["status"], r["attempt"]) for r in rows] == [("failed", 1)], (
        "timeouts are not retried"
    )
    assert rows[0]["error"] == "timed out: still running after execution.run_timeout_s = 0.5 s"
    assert [e["state"] for e in load_manifest(tmp_path / "t")["runs"].values()] == ["failed"]


@pytest.fixture
def cluster():
    c = own_cluster(num_cpus=2, num_gpus=1)
    yield c
    ray.shutdown()
    c.shutdown()


def test_removed_node_runs_finish_on_the_other(cluster, tmp_path: Path) -> None:
    doomed = cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(
        address=cluster.address, namespace="lem-ray-test", runtime_env={"env_vars": WORKER_ENV}
    )
    head_id = ray.get_runtime_context().get_node_id()
    out = tmp_path / "r"
    campaign = {
        "campaign_name": "node",
        "base": LONG,
        "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2]}}},
        "execution": {"cycles": 1, "baseline": {"enabled": False}},
    }
    thread = CampaignThread(campaign, out)
    thread.start()
    wait_for(lambda: sum(e["state"] == "running" for e in load_manifest(out)["runs"].values()) == 2
             if (out / "manifest").exists() else False, 120, "both runs to start")
    wait_for(lambda: len(running_workers()) == 2, 120,
             "both workers inside run()")
    # The campaign's own actors live on the driver's node: one on the doomed node (as the
    # baseline cache was, half the time, before it was pinned) fails every run with it.
    assert campaign_actor_nodes() == {"CampaignRecord": head_id, "ManifestActor": head_id}
    cluster.remove_node(doomed)
    result = thread.finish()
    rows = experiments(out)
    oks = [r for r in rows if r["status"] == "ok"]
    assert len(oks) == 2 and set(one_ok_per_run(rows).values()) == {1}, [
        (r["run_id"], r["attempt"], r["status"], r["error"]) for r in rows]
    assert {r["node_id"] for r in oks} == {head_id}, "both finished on the surviving node"
    # a retry may land on the doomed node before Ray has seen it go, and die there again
    lost = [r for r in rows if r["status"] == "failed"]
    assert lost and all(r["error"].startswith("worker died") for r in lost)
    assert all(
        any(o["run_id"] == r["run_id"] and o["attempt"] > r["attempt"] for o in oks) for r in lost
    )
    assert result.counts["retried"] == len(lost)


def test_driver_killed_then_rerun_completes_without_redoing(cluster, tmp_path: Path) -> None:
    cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "r"
    campaign = {
        "campaign_name": "driver",
        "base": {**LONG, "prompts": {"source": "synthetic", "count": 60}},
        "grid": {
            "backends": ["pytorch"],
            "backend_overrides": {"pytorch": {"batch_size": [1, 2, 3]}},
        },
        "execution": {"cycles": 2, "baseline": {"enabled": False}},
        "output": {"results_dir": str(out)},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(campaign))
    env = ray_env(cluster.address)
    command = [sys.executable, "-m", "lem_ray.cli", "campaign", str(path), "--json"]
    watcher = DatasetWatcher(out)
    watcher.start()
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: (out / "experiments").is_dir() and len(experiments(out)) >= 2, 300,
             "two runs to finish")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {r["run_id"]: (r["attempt"], r["started_at"]) for r in experiments(out)
              if r["status"] == "ok"}
    assert 2 <= len(before) < 6
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    watcher.finish()
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = experiments(out)
    assert len(one_ok_per_run(rows)) == 6 and set(one_ok_per_run(rows).values()) == {1}
    after = {r["run_id"]: (r["attempt"], r["started_at"]) for r in rows if r["status"] == "ok"}
    assert all(after[k] == v for k, v in before.items()), "completed runs were not run again"
    assert {e["state"] for e in load_manifest(out)["runs"].values()} == {"ok"}
    assert watcher.problems == []


def test_ctrl_c_marks_running_runs_interrupted_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "r"
    campaign = {
        "campaign_name": "sigint",
        "base": LONG,
        "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2]}}},
        "execution": {"cycles": 1},
        "output": {"results_dir": str(out)},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(campaign))
    env = ray_env()
    driver = subprocess.Popen([sys.executable, "-m", "lem_ray.cli", "campaign", str(path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: running_workers(), 180, "a run in progress")
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-3000:]
    assert "runs in progress were stopped and marked interrupted" in stderr
    states = Counter(e["state"] for e in load_manifest(out)["runs"].values())
    assert states["interrupted"] == 1 and states["pending"] == 1
    assert not (out / "experiments").exists() or not experiments(out), "no row for a stopped run"
    status = subprocess.run([sys.executable, "-m", "lem_ray.cli", "status", str(out), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    report = __import__("json").loads(status.stdout)
    assert report["counts"]["interrupted"] == 1 and report["counts"]["pending"] == 1
    assert len(report["left"]) == 2 and report["campaign_name"] == "sigint"


def test_worker_killed_on_every_attempt_fails_after_max_attempts(local_ray, tmp_path: Path) -> None:
    out = tmp_path / "r"
    # run_timeout_s only bounds the test should a third attempt start: nobody kills that one.
    campaign = {"campaign_name": "attempts",
                "base": {**LONG, "prompts": {"source": "synthetic", "count": 5000}},
                "experiments": [{"backend": "pytorch"}],
                "execution": {"cycles": 1, "max_attempts": 2, "run_timeout_s": 120}}
    thread = CampaignThread(campaign, out)
    thread.start()
    first = kill_one_worker(settle_s=0.5)
    kill_one_worker(spare={first}, settle_s=0.5)
    result = thread.finish()
    rows = sorted(experiments(out), key=lambda r: r["attempt"])
    assert [(r["status"], r["attempt"]) for r in rows] == [("failed", 1), ("failed", 2)]
    assert all(r["error"].startswith("worker died") for r in rows)
    assert result.counts["retried"] == 1 and result.counts["failed"] == 1
    (entry,) = load_manifest(out)["runs"].values()
    assert (entry["state"], entry["attempt"]) == ("failed", 2)
    assert entry["error"].startswith("worker died")
