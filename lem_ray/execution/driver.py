"""The campaign driver: plan, skip what is done, run the rest concurrently on Ray, record all."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import ray

from lem_ray.execution.cluster import Capacity, capacity, connect
from lem_ray.execution.rows import RunIds, RunRows, failed_rows
from lem_ray.execution.run import BaselineCache, RunTask, execute_run, reserve
from lem_ray.planning.order import RunKey
from lem_ray.planning.plan import CampaignPlan, plan_campaign
from lem_ray.results.store import attempt_stem, previous_attempts, write_rows
from lem_ray.results.summary import summarize


@dataclass
class CampaignResult:
    campaign_name: str
    results_dir: Path
    counts: dict[str, int]
    summary: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Progress:
    """What the progress display shows; updated from run threads under a lock."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def started(self) -> None:
        with self.lock:
            self.running += 1

    def finished(self, ok: bool) -> None:
        with self.lock:
            self.running -= 1
            self.done += 1
            self.failed += 0 if ok else 1


Reporter = Callable[[Progress, RunRows | None], None]


def _store(results_dir: Path, rows: RunRows) -> None:
    exp = rows.experiment
    stem = attempt_stem(exp["experiment_id"], exp["cycle"], exp["attempt"])
    write_rows(results_dir, "requests", stem, rows.requests)
    write_rows(results_dir, "timeseries", stem, rows.timeseries)
    write_rows(results_dir, "experiments", stem, [exp])


def _unschedulable(plan: CampaignPlan, cap: Capacity, eid: str) -> str | None:
    need = plan.experiment(eid).config.gpus_per_experiment
    if cap.has_gpus and need > cap.max_gpus_per_node:
        return (
            f"needs {need} GPUs on one node; the largest node of this cluster has "
            f"{cap.max_gpus_per_node}"
        )
    return None


def _slots(plan: CampaignPlan, cap: Capacity) -> int:
    """GPU runs: as many at once as whole GPU sets fit. CPU runs: one, so none disturbs another."""
    if not cap.has_gpus:
        return 1
    smallest = min(e.config.gpus_per_experiment for e in plan.experiments)
    return max(1, cap.total_gpus // smallest)


def run_campaign(
    source: Any,
    results_dir: str | Path | None = None,
    address: str | None = None,
    reporter: Reporter | None = None,
) -> CampaignResult:
    """Run what is not yet `ok` in the results directory; return where results are and a summary."""
    plan = plan_campaign(source)
    out = plan.results_dir(results_dir)
    done, attempts = previous_attempts(out)
    pending = [r for r in plan.runs if (r.experiment_id, r.cycle) not in done]
    prompts = plan.load_prompts({r.experiment_id for r in pending})
    progress = Progress(total=len(pending))
    started_ray = connect(address) if pending else False
    try:
        if pending:
            _execute(plan, pending, prompts, attempts, out, progress, reporter)
    finally:
        if started_ray:
            ray.shutdown()
    summary, failures = summarize(out)
    counts = {
        "planned": len(plan.runs),
        "skipped_done": len(plan.runs) - len(pending),
        "ran": progress.done,
        "failed": progress.failed,
        "ok": progress.done - progress.failed,
    }
    return CampaignResult(plan.name, out, counts, summary, failures)


def _execute(
    plan: CampaignPlan,
    pending: list[RunKey],
    prompts: dict[str, list[str]],
    attempts: dict[tuple[str, int], int],
    out: Path,
    progress: Progress,
    reporter: Reporter | None,
) -> None:
    cap = capacity()
    execution = plan.campaign.execution
    baselines = BaselineCache.remote()

    def one(task: RunTask, pg: Any, refusal: str | None) -> None:
        progress.started()
        if reporter:
            reporter(progress, None)
        if refusal:
            rows = failed_rows(task.ids, task.config, refusal, datetime.now(timezone.utc))
        else:
            rows = execute_run(task, pg)
        _store(out, rows)
        progress.finished(rows.ok)
        if reporter:
            reporter(progress, rows)

    with ThreadPoolExecutor(max_workers=_slots(plan, cap), thread_name_prefix="run") as pool:
        futures: list[Future[None]] = []
        previous: RunKey | None = None
        for key in pending:
            if previous is not None and key.cycle != previous.cycle and execution.cycle_gap_s:
                for f in futures:
                    f.result()
                time.sleep(execution.cycle_gap_s)
            gap = execution.config_gap_s if previous is not None else 0.0
            ids = RunIds(plan.name, key.experiment_id, key.cycle,
                         attempts.get((key.experiment_id, key.cycle), 0) + 1)
            task = RunTask(ids, plan.experiment(key.experiment_id).config,
                           prompts[key.experiment_id], cap.has_gpus, execution, baselines, gap)
            refusal = _unschedulable(plan, cap, key.experiment_id)
            pg = None if refusal else reserve(task)
            futures.append(pool.submit(one, task, pg, refusal))
            previous = key
        for f in futures:
            f.result()
