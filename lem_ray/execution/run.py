"""One run: a placement group, a worker and a sampler in it, rows out, everything released."""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.config.runtime_env import RuntimeEnvSpec
from lem_ray.execution.actors import SamplerActor, WorkerActor
from lem_ray.execution.handoff import GpuConditions, WorkerIdentity
from lem_ray.execution.rows import RunRows, failed_rows, ok_rows
from lem_ray.execution.worker import PrefillSettings
from lem_ray.records import RunAttempt


@ray.remote(num_cpus=0)
class BaselineCache:
    """Idle baselines by GPU UUID, kept for the whole campaign while samplers come and go."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def get(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        return {u: self.entries[u] for u in uuids if u in self.entries}

    def put(self, entries: dict[str, dict[str, Any]]) -> None:
        self.entries.update(entries)


class Inflight:
    """Worker actors of the runs in progress, so an interrupt can stop them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: dict[str, Any] = {}

    def add(self, key: str, worker: Any) -> None:
        with self._lock:
            self._workers[key] = worker

    def discard(self, key: str) -> None:
        with self._lock:
            self._workers.pop(key, None)

    def kill_all(self) -> int:
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            ray.kill(worker, no_restart=True)
        return len(workers)


@dataclass
class RunTask:
    ids: RunAttempt
    config: ExperimentConfig
    prompts: list[str]
    use_gpus: bool
    execution: ExecutionConfig
    baselines: Any
    inflight: Inflight
    gap_s: float = 0.0
    runtime_env: RuntimeEnvSpec = field(default_factory=RuntimeEnvSpec)


def describe_error(exc: BaseException) -> str:
    """The backend's own exception, not Ray's wrapping of it."""
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is not None:
            return f"{type(cause).__name__}: {cause}".strip()
    if isinstance(exc, RayActorError):
        return f"worker died: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


def _no_gpu_reason(identity: WorkerIdentity) -> str | None:
    """Why a run has no GPU to measure, in words a reader of the results table understands."""
    if identity.gpu_uuids:
        return None
    if identity.gpu_ids:
        return (f"Ray assigned GPU ids {identity.gpu_ids} but no CUDA device or NVML is "
                "visible on this node (logical GPUs?), so energy cannot be measured")
    return "ran on CPU: energy is measured on NVIDIA GPUs through NVML only"


def _prepare_gpus(task: RunTask, sampler: Any, uuids: list[str]) -> GpuConditions:
    """Cool down and take (or reuse) the idle baseline, both before anything is loaded."""
    execution = task.execution
    if not uuids:
        return GpuConditions()
    waited_s = hottest_c = None
    if execution.cooldown.target_temp_c is not None:
        waited_s, hottest_c = ray.get(sampler.cool_down.remote(
            execution.cooldown.target_temp_c, execution.cooldown.max_wait_s))
    baselines: dict[str, dict[str, Any]] = {}
    if execution.baseline.enabled:
        known = ray.get(task.baselines.get.remote(uuids))
        baselines = ray.get(sampler.baseline.remote(
            known, execution.baseline.duration_s, execution.baseline.ttl_s))
        ray.get(task.baselines.put.remote(baselines))
    return GpuConditions(waited_s, hottest_c, baselines)


def reserve(task: RunTask) -> PlacementGroup:
    """The run's whole GPUs (or one CPU) on one node, blocking until Ray grants them.

    The driver reserves runs one after another in plan order: Ray does not grant pending
    placement groups first-come first-served, so a run needing two GPUs would otherwise wait
    for ever while one-GPU runs behind it keep taking each GPU as it frees.
    """
    gpus = task.config.gpus_per_experiment if task.use_gpus else 0
    bundle = {"CPU": 1, "GPU": gpus} if gpus else {"CPU": 1}
    pg = placement_group([bundle], strategy="STRICT_PACK", name=f"lem-ray:{task.ids.run_id}")
    ray.get(pg.ready())
    return pg


def execute_run(task: RunTask, pg: PlacementGroup) -> RunRows:
    """Run in the reserved placement group, and give it back whatever happens."""
    gpus = task.config.gpus_per_experiment if task.use_gpus else 0
    actors: list[Any] = []
    identity: WorkerIdentity | None = None
    runtime_env_json = task.runtime_env.to_json()
    # The worker and its sampler both run in the backend's environment; None: the job's.
    ray_env = task.runtime_env.ray_runtime_env()
    env = {"runtime_env": ray_env} if ray_env else {}
    execution = task.execution
    started_at = datetime.now(timezone.utc)
    try:
        if task.gap_s:
            time.sleep(task.gap_s)
        started_at = datetime.now(timezone.utc)
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        worker = WorkerActor.options(
            num_cpus=1, num_gpus=gpus, scheduling_strategy=strategy, **env
        ).remote(task.config.model_dump_json(), task.prompts)
        actors.append(worker)
        task.inflight.add(task.ids.run_id, worker)
        identity = ray.get(worker.identify.remote())
        sampler = SamplerActor.options(scheduling_strategy=strategy, **env).remote(
            identity.gpu_uuids, execution.telemetry.sample_interval_ms, _no_gpu_reason(identity)
        )
        actors.append(sampler)
        conditions = _prepare_gpus(task, sampler, identity.gpu_uuids)
        ray.get(sampler.start.remote())
        prefill = PrefillSettings(
            execution.prefill.enabled, execution.validity.min_window_s, execution.prefill.max_repeats
        )
        try:
            result = ray.get(worker.run.remote(sampler, prefill), timeout=execution.run_timeout_s)
        except GetTimeoutError:
            return failed_rows(
                task.ids, task.config,
                f"timed out: still running after execution.run_timeout_s = "
                f"{execution.run_timeout_s:g} s", started_at, identity, runtime_env_json,
            )
        telemetry = ray.get(sampler.finish.remote())
        return ok_rows(task.ids, task.config, execution, identity, result, telemetry, conditions,
                       started_at, runtime_env_json)
    except (RayTaskError, RayActorError) as exc:
        retryable = isinstance(exc, RayActorError) and not isinstance(exc, RayTaskError)
        return failed_rows(task.ids, task.config, describe_error(exc), started_at, identity,
                           runtime_env_json, retryable=retryable)
    except Exception as exc:  # a bug of ours: keep the campaign going, keep the trace
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return failed_rows(task.ids, task.config, f"internal error: {detail}", started_at,
                           identity, runtime_env_json)
    finally:
        task.inflight.discard(task.ids.run_id)
        for actor in actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(pg)
