"""Runs go out in plan order, each on its own thread once Ray has granted its GPUs; worker
deaths are retried, everything is recorded in the results and the manifest, Ctrl-C stops all."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

import ray

from lem_ray.config.runtime_env import RuntimeEnvSpec
from lem_ray.execution.cluster import Capacity
from lem_ray.execution.rows import RunRows, failed_rows
from lem_ray.execution.run import BaselineCache, Inflight, RunTask, execute_run, reserve
from lem_ray.planning.plan import CampaignPlan
from lem_ray.records import RunAttempt, RunKey
from lem_ray.results.store import write_rows


class CampaignInterrupted(Exception):
    """Ctrl-C: runs in progress were stopped and marked interrupted; rerun to resume."""

    def __init__(self, interrupted: int) -> None:
        self.interrupted = interrupted
        super().__init__(f"{interrupted} runs interrupted")


@dataclass
class Progress:
    """What the progress display shows; updated from run threads under a lock."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    retried: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def change(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


Reporter = Callable[[Progress, RunRows | None], None]


def store_rows(results_dir: str, rows: RunRows) -> None:
    """Requests and time series first, the experiments row last: a reader that finds the
    experiments row finds the rest."""
    exp = rows.experiment
    stem = RunKey(exp["experiment_id"], exp["cycle"]).stem(exp["attempt"])
    write_rows(results_dir, "requests", stem, rows.requests)
    write_rows(results_dir, "timeseries", stem, rows.timeseries)
    write_rows(results_dir, "experiments", stem, [exp])


def unschedulable(plan: CampaignPlan, cap: Capacity, experiment_id: str) -> str | None:
    need = plan.experiment(experiment_id).config.gpus_per_experiment
    if cap.has_gpus and need > cap.max_gpus_per_node:
        return (
            f"needs {need} GPUs on one node; the largest node of this cluster has "
            f"{cap.max_gpus_per_node}"
        )
    return None


def slots(plan: CampaignPlan, cap: Capacity) -> int:
    """GPU runs: as many at once as whole GPU sets fit. CPU runs: one, so none disturbs another."""
    if not cap.has_gpus:
        return 1
    smallest = min(e.config.gpus_per_experiment for e in plan.experiments)
    return max(1, cap.total_gpus // smallest)


class Dispatcher:
    def __init__(
        self,
        plan: CampaignPlan,
        results_dir: str,
        manifest: Any,
        prompts: dict[str, list[str]],
        cap: Capacity,
        progress: Progress,
        reporter: Reporter | None,
        runtime_envs: dict[str, RuntimeEnvSpec] | None = None,
        env_refusals: dict[str, str] | None = None,
    ) -> None:
        self.plan = plan
        self.results_dir = results_dir
        self.manifest = manifest
        self.prompts = prompts
        self.cap = cap
        self.progress = progress
        self.reporter = reporter
        self.execution = plan.campaign.execution
        self.runtime_envs = runtime_envs or {}
        self.env_refusals = env_refusals or {}
        self.baselines = BaselineCache.remote()
        self.inflight = Inflight()
        self.stopping = threading.Event()
        self.interrupted = 0

    def _report(self, rows: RunRows | None) -> None:
        if self.reporter:
            self.reporter(self.progress, rows)

    def _record(self, key: str, **fields: Any) -> None:
        ray.get(self.manifest.update.remote(key, **fields))

    def _one(self, task: RunTask, pg: Any, refusal: str | None) -> None:
        key = task.ids.run_id
        self.progress.change(running=1)
        self._report(None)
        while True:
            self._record(key, state="running", attempt=task.ids.attempt, error=None)
            if refusal:
                rows = failed_rows(task.ids, task.config, refusal, datetime.now(timezone.utc),
                                   None, task.runtime_env.to_json())
            else:
                rows = execute_run(task, pg)
            if self.stopping.is_set() and not rows.ok:
                self._record(key, state="interrupted")
                self.interrupted += 1
                self.progress.change(running=-1)
                return
            store_rows(self.results_dir, rows)
            exp = rows.experiment
            identity = {"node_id": exp.get("node_id"), "gpu_ids": exp.get("gpu_ids") or []}
            if rows.ok:
                self._record(key, state="ok", **identity)
                break
            if rows.retryable and task.ids.attempt < self.execution.max_attempts:
                self._record(key, state="pending", error=exp["error"], **identity)
                self.progress.change(retried=1)
                self._report(rows)
                task = replace(task, ids=replace(task.ids, attempt=task.ids.attempt + 1), gap_s=0.0)
                pg = reserve(task)
                continue
            self._record(key, state="failed", error=exp["error"], **identity)
            rows = replace(rows, retryable=False)
            break
        self.progress.change(running=-1, done=1, failed=0 if rows.ok else 1)
        self._report(rows)

    def run(self, pending: list[RunKey], attempts: dict[str, int]) -> None:
        pool = ThreadPoolExecutor(max_workers=slots(self.plan, self.cap), thread_name_prefix="run")
        futures: list[Future[None]] = []
        try:
            previous: RunKey | None = None
            for key in pending:
                if previous is not None and key.cycle != previous.cycle and self.execution.cycle_gap_s:
                    for f in futures:
                        f.result()
                    time.sleep(self.execution.cycle_gap_s)
                task = self._task(key, attempts.get(key.run_id, 0) + 1, previous is not None)
                refusal = unschedulable(self.plan, self.cap, key.experiment_id) or \
                    self.env_refusals.get(task.config.backend)
                pg = None if refusal else reserve(task)
                futures.append(pool.submit(self._one, task, pg, refusal))
                previous = key
            for f in futures:
                f.result()
        except KeyboardInterrupt:
            self.stopping.set()
            pool.shutdown(wait=False, cancel_futures=True)
            self.inflight.kill_all()
            for f in futures:
                if not f.cancelled():
                    f.exception()
            raise CampaignInterrupted(self.interrupted) from None
        finally:
            pool.shutdown(wait=True)

    def _task(self, key: RunKey, attempt: int, gap: bool) -> RunTask:
        config = self.plan.experiment(key.experiment_id).config
        return RunTask(
            ids=RunAttempt(self.plan.name, key, attempt),
            config=config,
            prompts=self.prompts[key.experiment_id],
            use_gpus=self.cap.has_gpus,
            execution=self.execution,
            baselines=self.baselines,
            inflight=self.inflight,
            gap_s=self.execution.config_gap_s if gap else 0.0,
            runtime_env=self.runtime_envs.get(config.backend, RuntimeEnvSpec()),
        )
