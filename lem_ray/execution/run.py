"""One run: a placement group, a worker and a sampler in it, rows out, everything released."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.actors import SamplerActor, WorkerActor
from lem_ray.execution.rows import RunIds, RunRows, failed_rows, ok_rows

SAMPLE_INTERVAL_MS = 100.0


@dataclass
class RunTask:
    ids: RunIds
    config: ExperimentConfig
    prompts: list[str]
    use_gpus: bool
    gap_s: float = 0.0


def describe_error(exc: BaseException) -> str:
    """The backend's own exception, not Ray's wrapping of it."""
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is not None:
            return f"{type(cause).__name__}: {cause}".strip()
    if isinstance(exc, RayActorError):
        return f"worker died: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


def _no_gpu_reason(identity: dict[str, Any]) -> str | None:
    """Why a run has no GPU to measure, in words a reader of the results table understands."""
    if identity["gpu_uuids"]:
        return None
    if identity["gpu_ids"]:
        return (f"Ray assigned GPU ids {identity['gpu_ids']} but no CUDA device or NVML is "
                "visible on this node (logical GPUs?), so energy cannot be measured")
    return "ran on CPU: energy is measured on NVIDIA GPUs through NVML only"


def execute_run(task: RunTask) -> RunRows:
    started_at = datetime.now(timezone.utc)
    gpus = task.config.gpus_per_experiment if task.use_gpus else 0
    bundle = {"CPU": 1, "GPU": gpus} if gpus else {"CPU": 1}
    pg = placement_group([bundle], strategy="STRICT_PACK", name=f"lem-ray:{task.ids.run_id}")
    actors: list[Any] = []
    identity: dict[str, Any] = {}
    try:
        ray.get(pg.ready())
        if task.gap_s:
            time.sleep(task.gap_s)
        started_at = datetime.now(timezone.utc)  # from here on the run holds its GPUs
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        worker = WorkerActor.options(
            num_cpus=1, num_gpus=gpus, scheduling_strategy=strategy
        ).remote(task.config.model_dump_json(), task.prompts)
        actors.append(worker)
        identity = ray.get(worker.identify.remote())
        sampler = SamplerActor.options(scheduling_strategy=strategy).remote(
            identity["gpu_uuids"], SAMPLE_INTERVAL_MS, _no_gpu_reason(identity)
        )
        actors.append(sampler)
        result = ray.get(worker.run.remote(sampler))
        telemetry = ray.get(sampler.finish.remote())
        return ok_rows(
            task.ids, task.config, identity, result, telemetry["timeseries"],
            telemetry["environment"], started_at,
        )
    except (RayTaskError, RayActorError, GetTimeoutError) as exc:
        return failed_rows(task.ids, task.config, describe_error(exc), started_at, identity)
    except Exception as exc:  # a bug of ours: keep the campaign going, keep the trace
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return failed_rows(task.ids, task.config, f"internal error: {detail}", started_at, identity)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(pg)
