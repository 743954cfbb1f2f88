"""Three logical nodes: 2-GPU runs stay on one node, no GPU is ever shared, and a results
directory that some nodes cannot see is refused."""

from __future__ import annotations

from pathlib import Path

import psutil
import pyarrow.dataset as ds
import pytest
import ray

from lem_ray.errors import ConfigError
from lem_ray.execution.checks.doctor import run_doctor
from lem_ray.execution.checks.shared_storage import require_shared_results_dir
from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.execution.driver.cluster import WORKER_ENV
from tests.conftest import DEFAULT_PORTS, TINY_BASE, own_cluster

pytestmark = pytest.mark.slow

NODE_GPUS = (3, 3, 4)


@pytest.fixture(scope="module")
def three_nodes():
    cluster = own_cluster(num_cpus=2, num_gpus=NODE_GPUS[0])
    for gpus in NODE_GPUS[1:]:
        cluster.add_node(num_cpus=2, num_gpus=gpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="lem-ray-test",
             runtime_env={"env_vars": WORKER_ENV})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_the_test_cluster_holds_none_of_rays_default_ports(three_nodes) -> None:
    """Two test sessions on one machine never collide: no process of this session's cluster
    listens on a port Ray would take by default (another session's Ray wants it too)."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    listening = {c.laddr.port for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours}
    assert len(ray.nodes()) == 3 and listening, "the cluster's processes are this session's"
    assert not listening & set(DEFAULT_PORTS), sorted(listening & set(DEFAULT_PORTS))


def test_two_gpu_runs_on_one_node_never_share_a_gpu(three_nodes, tmp_path: Path) -> None:
    campaign = {
        "campaign_name": "multinode",
        "base": {**TINY_BASE, "gpus_per_experiment": 2,
                 "prompts": {"source": "synthetic", "count": 8}},
        "grid": {"backends": ["pytorch"],
                 "backend_overrides": {"pytorch": {"batch_size": [1, 2]}}},
        "execution": {"cycles": 2},
    }
    result = run_campaign(campaign, results_dir=tmp_path / "r")
    # Only ok attempts held their GPUs to the end (a worker killed by the machine is retried).
    rows = [r for r in ds.dataset(tmp_path / "r" / "experiments").to_table().to_pylist()
            if r["status"] == "ok"]
    assert result.counts["ok"] == 4 and len({r["run_id"] for r in rows}) == len(rows) == 4

    gpus_of = {n["NodeID"]: int(n["Resources"].get("GPU", 0)) for n in ray.nodes()}
    for r in rows:
        ids = [int(i) for i in r["gpu_ids"]]
        assert len(set(ids)) == 2, r["gpu_ids"]
        assert all(0 <= i < gpus_of[r["node_id"]] for i in ids), "both GPUs are of its node"
    assert len({r["node_id"] for r in rows}) >= 2, "runs used several nodes"

    # One event list per node: at no instant may two runs hold the same GPU.
    overlaps = 0
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if a["node_id"] == b["node_id"] and a["started_at"] < b["finished_at"] \
                    and b["started_at"] < a["finished_at"]:
                overlaps += 1
                assert set(a["gpu_ids"]).isdisjoint(b["gpu_ids"]), (a["run_id"], b["run_id"])
    assert overlaps > 0, "two runs shared a node at some moment, on disjoint GPUs"


def test_node_local_results_dir_is_refused(three_nodes, tmp_path: Path) -> None:
    out = tmp_path / "local-results"
    require_shared_results_dir(str(out))  # every node of this one-host cluster sees tmp_path
    assert not list(out.iterdir()), "the marker file is gone"

    head = ray.get_runtime_context().get_node_id()
    # What a node-local disk looks like from the nodes: only the driver's node finds the marker.
    blind_probe = ray.remote(num_cpus=0, max_retries=0)(
        lambda path, token: ray.get_runtime_context().get_node_id() == head)
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError) as info:
        require_shared_results_dir(str(fresh), probe=blind_probe)
    message = str(info.value)
    assert message.startswith("results_dir: results dir ")
    assert "2 of 3 nodes" in message and "use shared storage" in message
    assert "NFS" in message and "s3://" in message
    assert not fresh.exists(), "a refusal leaves nothing behind"
    require_shared_results_dir("s3://bucket/results", probe=blind_probe)


def test_doctor_checks_every_node_from_a_task_there(three_nodes, tmp_path: Path) -> None:
    report = run_doctor(results_dir=tmp_path / "r")
    assert ray.is_initialized(), "doctor leaves a connection it did not make"
    assert sorted(n["ray_gpus"] for n in report.nodes) == sorted(NODE_GPUS)
    assert len({n["node_id"] for n in report.nodes}) == 3
    nvml = [c for c in report.checks if c.name.startswith("NVML on")]
    assert len(nvml) == 3 and all(c.status == "warn" for c in nvml)
    assert all("none is real to NVML (logical GPUs?)" in c.detail for c in nvml)
    status = {c.name: c.status for c in report.checks}
    assert status["results dir writable"] == status["results dir shared"] == "ok"
    assert not report.failed, [c for c in report.checks if c.status == "fail"]
