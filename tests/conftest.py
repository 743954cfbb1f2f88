"""Shared fixtures: campaign files written to tmp dirs, the tiny model's base config, and Ray
instances of the test's own (never a cluster someone else started on this machine)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

# Ray's socket paths must stay under 107 bytes, so its temp dir is short, not under tmp_path.
RAY_TMP = tempfile.mkdtemp(prefix="lrt-", dir="/tmp" if os.path.isdir("/tmp") else None)
# Every Ray started by a test or by a CLI the test runs keeps its files in RAY_TMP, and no
# test inherits a RAY_ADDRESS from the shell: the driver then starts a new local instance
# (cluster.connect) rather than use a developer's own cluster, which a Ctrl-C test would
# interrupt. A test that wants a cluster passes its address explicitly.
os.environ.pop("RAY_ADDRESS", None)
os.environ["RAY_TMPDIR"] = RAY_TMP

TINY_BASE: dict[str, Any] = {
    "model_name": "builtin:tiny-llama",
    "load_format": "dummy",
    "fp_precision": "float32",
    "max_input_tokens": 32,
    "max_output_tokens": 8,
    "min_output_tokens": 8,
    "prompts": {"source": "synthetic", "count": 6, "input_len": {"mean": 16, "std": 4}},
    "warmup": {"mode": "fixed", "requests": 2},
}


def ray_env(address: str | None = None) -> dict[str, str]:
    """Environment for a CLI subprocess: its Ray is a new local one in this session's temp
    dir, or the test's own cluster at `address`.

    The test's cluster runs without token authentication (this process started it so); a
    driver joining it must too: with a token in ~/.ray (any earlier local run leaves one) it
    would join in token mode, and its workers die at start ("the actor died unexpectedly")."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    joined = {"RAY_ADDRESS": address, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    return {**env, "RAY_TMPDIR": RAY_TMP, **(joined if address else {})}


# Ray's default ports (GCS 6379, dashboard 8265, client server 10001, dashboard agent 52365) are
# held by any other Ray on the machine, another test session's included: a test's own cluster
# starts without the dashboard and lets every port be picked free. Its files go to this session's
# temp dir (RAY_TMPDIR), where Ray also writes the address a plain ray.init() would join.
DEFAULT_PORTS = (6379, 8265, 10001, 52365)


def own_cluster(**head_args: Any) -> Cluster:
    """A ray.cluster_utils.Cluster of this session's own, its head with `head_args`."""
    from ray.cluster_utils import Cluster

    return Cluster(initialize_head=True, head_node_args={
        **head_args, "include_dashboard": False, "dashboard_port": None,
        "dashboard_agent_listen_port": None})


@contextmanager
def isolated_ray(num_cpus: int = 2) -> Iterator[None]:
    """A new local Ray instance for the duration, in this session's temp dir."""
    import ray

    from lem_ray.execution.driver.cluster import WORKER_ENV

    ray.init(
        address="local",
        _temp_dir=os.path.join(RAY_TMP, "ray"),
        num_cpus=num_cpus,
        include_dashboard=False,
        namespace="lem-ray-test",
        runtime_env={"env_vars": WORKER_ENV},
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def local_ray() -> Iterator[None]:
    with isolated_ray():
        yield


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def no_ray_left_behind() -> Iterator[None]:
    """A test stops the Ray it started: one left connected would be silently reused by the
    next test's run_campaign, making results depend on which test ran before. (A module's
    own cluster fixture, up before the test and down after the module, is not the test's.)"""
    up_before = _ray_up()
    yield
    if _ray_up() and not up_before:
        sys.modules["ray"].shutdown()
        pytest.fail("the test left Ray initialised; start it with the local_ray fixture")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(RAY_TMP, ignore_errors=True)


@pytest.fixture
def write_campaign(tmp_path: Path):
    def write(data: dict[str, Any], name: str = "campaign.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests need NVML; without it they are skipped, not failed."""
    from lem_ray.telemetry.nvml import nvml_status

    available, reason = nvml_status()
    if available:
        return
    skip = pytest.mark.skip(reason=f"gpu test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def synthetic_results(tmp_path: Path) -> Path:
    """tests/fakes/synthetic_results.py's directory, with a pre-journal manifest."""
    from tests.fakes.synthetic_results import synthetic_with_legacy_manifest

    return synthetic_with_legacy_manifest(tmp_path / "results")
