"""A worker's start: what its first run waits for while the GPUs are held imports nothing
heavy (torch and the backends load with the first run that needs them)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import ray

from lem_ray.execution.driver.cluster import WORKER_ENV
from lem_ray.execution.driver.slots import Slot
from lem_ray.execution.worker.gpus import DRIVER_NODES
from tests.conftest import RAY_TMP

HEAVY = ("torch", "transformers", "vllm", "tensorrt_llm")


@pytest.fixture
def two_logical_gpus() -> Iterator[None]:
    ray.init(address="local", _temp_dir=os.path.join(RAY_TMP, "ray"), num_cpus=2, num_gpus=2,
             include_dashboard=False, namespace="lem-ray-test",
             runtime_env={"env_vars": WORKER_ENV})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.skipif(any(os.path.exists(node) for node in DRIVER_NODES),
                    reason="a GPU driver is installed: resolving its GPUs may need torch")
def test_a_worker_on_logical_gpus_starts_without_heavy_imports(two_logical_gpus) -> None:
    slot = Slot.open(1, 2, ray.get_runtime_context().get_node_id(), "lem-ray:start:1")
    try:
        identity = ray.get(slot.starting, timeout=120)
        assert (identity.device, sorted(identity.gpu_ids), identity.gpu_uuids) == (
            "cpu", ["0", "1"], [])
        loaded = ray.get(slot.worker.__ray_call__.remote(
            lambda _worker: [name for name in HEAVY if name in sys.modules]), timeout=60)
        assert loaded == []
    finally:
        slot.close()


def test_a_worker_given_the_interval_starts_its_sampler_before_any_run(two_logical_gpus) -> None:
    """The sampler's process comes up beside the worker, not inside its first run; a run with
    another interval replaces it."""
    from lem_ray.config.campaign import ExecutionConfig

    slot = Slot.open(1, 1, ray.get_runtime_context().get_node_id(), "lem-ray:start:1",
                     sample_interval_ms=50.0)
    try:
        ray.get(slot.starting, timeout=120)
        sampler, interval = ray.get(slot.worker.__ray_call__.remote(
            lambda worker: (worker.sampler_actor, worker.runs.sample_interval_ms)), timeout=60)
        assert interval == 50.0 and sampler is not None
        assert ray.get(sampler.start.remote(), timeout=60) is None  # up, and answering
        ray.get(sampler.finish.remote(), timeout=60)
        execution = ExecutionConfig.model_validate({"telemetry": {"sample_interval_ms": 200}})
        interval_ms = execution.telemetry.sample_interval_ms
        replaced = ray.get(slot.worker.__ray_call__.remote(
            lambda worker: (worker.runs.sampler_for(interval_ms).actor,
                            worker.runs.sample_interval_ms)), timeout=60)
        assert replaced[1] == 200 and replaced[0]._actor_id != sampler._actor_id
    finally:
        slot.close()
