"""The Ray actor wrappers: the worker holds the GPUs; baselines outlive workers."""

from __future__ import annotations

import ray

from lem_ray.execution.worker.node_runs import CampaignRecord
from lem_ray.execution.worker.runs import ExperimentWorker

WorkerActor = ray.remote(max_restarts=0, max_task_retries=0)(ExperimentWorker)

BaselineCache = ray.remote(num_cpus=0)(CampaignRecord)
"""The campaign's record, one actor for all its workers."""
