"""One loop sends the runs out: it holds a slot (placement group + worker) per set of GPUs in
use, never one per pending run; the policy says which run goes to which slot; worker deaths
are retried; rows are stored off the loop (writes.py), a failed write failing its run;
Ctrl-C stops all."""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from itertools import groupby
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError, RayTaskError

from lem_ray.config.experiment import ExperimentConfig
from lem_ray.config.runtime_env import RuntimeEnvSpec
from lem_ray.execution.actors import BaselineCache
from lem_ray.execution.cluster import Capacity, node_gpus
from lem_ray.execution.handoff import RunOutcome
from lem_ray.execution.lengths import RunLengths, decode_steps
from lem_ray.execution.metrics import run_tags
from lem_ray.execution.policy import Assign, Close, Open, QueuedRun, SlotView, decide
from lem_ray.results.rows import RunRows, failed_rows, ok_rows
from lem_ray.execution.slots import Slot
from lem_ray.execution.worker import RunRequest
from lem_ray.execution.writes import RowWriter
from lem_ray.planning.plan import CampaignPlan
from lem_ray.records import RunAttempt, RunKey
from lem_ray.results.compile_cache import cache_location
from lem_ray.results.gpu_time import GpuLedger, save_ledger

CPU_NODE = "cpu"
"""On a cluster without GPUs, runs go one at a time, so none disturbs another: one slot."""
LEDGER_SAVE_S = 5.0
# Where an attempt ran, kept on the failed row of one whose rows could not be written.
WHERE_COLUMNS = ("node_ip", "node_id", "hostname", "device", "gpu_ids", "gpu_uuids", "gpu_names",
                 "python_executable")


class CampaignInterrupted(Exception):
    """Ctrl-C: runs in progress were stopped and marked interrupted; rerun to resume."""

    def __init__(self, interrupted: int) -> None:
        self.interrupted = interrupted
        super().__init__(f"{interrupted} runs interrupted")


@dataclass
class Progress:
    """What the progress display shows; updated from the loop and the writers under a lock."""

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


@dataclass
class RunTask:
    ids: RunAttempt
    config: ExperimentConfig
    engine: str
    env: RuntimeEnvSpec = field(default_factory=RuntimeEnvSpec)
    dispatched_at: datetime | None = None

    @property
    def kind(self) -> str:
        return self.env.to_json()


def describe_error(exc: BaseException) -> str:
    """The backend's own exception, not Ray's wrapping of it."""
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is not None:
            return f"{type(cause).__name__}: {cause}".strip()
    if isinstance(exc, RayActorError):
        return f"worker died: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


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
        """Backends whose runtime environment failed its probe: their runs fail with this."""
        self.baselines = BaselineCache.remote()
        self.nodes = self._nodes()
        self.slots: dict[int, Slot] = {}
        self.slot_ids = 0
        self.queue: list[RunTask] = []
        self.lengths = RunLengths()
        """Run lengths learned from finished runs: backfill's, and the wait for a worker's."""
        self.steps: dict[str, int] = {}
        self.baseline_at: dict[str, float] = {}
        self.interrupted = 0
        self.started_any = False
        self.last_cycle: int | None = None
        self.cycle_gate_s: float | None = None
        self.ledger = GpuLedger(f"{int(time.time())}-{uuid.uuid4().hex[:6]}", time.time(),
                                sum(self.nodes.values()) if cap.has_gpus else 0)
        self.ledger_saved_s = 0.0
        self.writer = RowWriter(results_dir, self._conclude)

    def _nodes(self) -> dict[str, int]:
        return node_gpus() if self.cap.has_gpus else {CPU_NODE: 1}

    def _report(self, rows: RunRows | None) -> None:
        if self.reporter:
            self.reporter(self.progress, rows)

    def _record(self, key: str, **fields: Any) -> None:
        ray.get(self.manifest.update.remote(key, **fields))

    def _units(self, task: RunTask) -> int:
        return task.config.gpus_per_experiment if self.cap.has_gpus else 1

    def run(self, pending: list[RunKey], attempts: dict[str, int]) -> None:
        for key in pending:
            config = self.plan.experiment(key.experiment_id).config
            ids = RunAttempt(self.plan.name, key, attempts.get(key.run_id, 0) + 1)
            env = self.runtime_envs.get(config.backend, RuntimeEnvSpec())
            self.queue.append(RunTask(ids, config, config.engine_key, env))
        if self.execution.structure == "interleaved":
            self.queue = self._longest_first(self.queue)
        try:
            self._refuse_unschedulable()
            while self.queue or any(s.run for s in self.slots.values()):
                self._dispatch()
                self._wait()
            self.writer.collect(wait=True)
        except KeyboardInterrupt:
            self._interrupt()
            raise CampaignInterrupted(self.interrupted) from None
        finally:
            for slot in list(self.slots.values()):
                slot.close()
            self.slots.clear()
            self.writer.close()
            save_ledger(self.results_dir, self.ledger.snapshot(time.time()))

    def _steps(self, task: RunTask) -> int:
        experiment_id = task.ids.key.experiment_id
        if experiment_id not in self.steps:
            self.steps[experiment_id] = decode_steps(task.config, len(self.prompts[experiment_id]))
        return self.steps[experiment_id]

    def _longest_first(self, queue: list[RunTask]) -> list[RunTask]:
        """Within each cycle (its runs are exchangeable), the runs of most planned GPU-time
        (decode steps x GPUs) first, the larger of equal ones first: short runs at the end
        fill the gaps the long ones leave. Interleaved campaigns only: a shuffled order is
        the user's, drawn to spread drift, and a grouped one keeps cycles together."""
        ordered: list[RunTask] = []
        for _, runs in groupby(queue, key=lambda task: task.ids.key.cycle):
            ordered += sorted(runs, key=lambda task: (-self._steps(task) * self._units(task),
                                                      -self._units(task)))
        return ordered

    def _estimate(self, task: RunTask, warm: bool, new_worker: bool = False) -> float | None:
        return self.lengths.estimate(task.ids.key.experiment_id, task.engine, self._steps(task),
                                     warm, new_worker)

    def _refuse_unschedulable(self) -> None:
        largest = max(self.nodes.values(), default=0)
        for task in list(self.queue):
            reason = self.env_refusals.get(task.config.backend)
            if self._units(task) > largest:
                reason = (f"needs {task.config.gpus_per_experiment} GPUs on one node; the "
                          f"largest node of this cluster has {largest}")
            if reason is None:
                continue
            self.queue.remove(task)
            self._record(task.ids.run_id, state="running", attempt=task.ids.attempt, error=None)
            self._finish(task, failed_rows(task.ids, task.config, reason, _now(), None,
                                           task.kind))

    def _window(self) -> list[RunTask]:
        """The runs the policy may look at now: a bounded prefix of the queue, cut at a cycle
        boundary while execution.cycle_gap_s holds the next cycle back."""
        limit = 4 * sum(self.nodes.values()) + 8
        window = self.queue[:limit]
        gap_s = self.execution.cycle_gap_s
        if not gap_s or not window:
            return window
        cycle = window[0].ids.key.cycle
        if any(s.run and s.run.ids.key.cycle != cycle for s in self.slots.values()):
            return []
        if self.last_cycle is not None and cycle != self.last_cycle:
            if self.cycle_gate_s is None:
                self.cycle_gate_s = time.monotonic() + gap_s
            if time.monotonic() < self.cycle_gate_s:
                return []
        return [t for t in window if t.ids.key.cycle == cycle]

    def _dispatch(self) -> None:
        window = self._window()
        now = time.monotonic()
        held = {engine for s in self.slots.values() for engine in s.engines}
        queued = [QueuedRun(t.ids.run_id, self._units(t), t.engine,
                            self._estimate(t, t.engine in held), t.ids.key.cycle, t.kind,
                            self.lengths.cold(t.engine)) for t in window]
        views = [SlotView(s.slot_id, s.node, s.units, tuple(s.engines), s.run is not None,
                          s.started_s, s.est_s, s.kind) for s in self.slots.values()]
        decisions, _ = decide(now, queued, views, self.nodes)
        tasks = {t.ids.run_id: t for t in window}
        for decision in decisions:
            if isinstance(decision, Close):
                self.slots.pop(decision.slot_id).close()
            elif isinstance(decision, Open):
                task = tasks[decision.run_id]
                self.slot_ids += 1
                slot = Slot.open(self.slot_ids, self._units(task) if self.cap.has_gpus else 0,
                                 decision.node, f"lem-ray:{self.plan.name}:{self.slot_ids}",
                                 task.env.ray_runtime_env(), task.kind,
                                 self.execution.telemetry.sample_interval_ms)
                self.slots[slot.slot_id] = slot
                self._start(task, slot)
            elif isinstance(decision, Assign):
                self._start(tasks[decision.run_id], self.slots[decision.slot_id])

    def _baseline_due(self, slot: Slot) -> bool:
        baseline = self.execution.baseline
        if not baseline.enabled or not slot.uuids:
            return False
        now = time.time()
        return any(now - self.baseline_at.get(u, -float("inf")) > baseline.ttl_s
                   for u in slot.uuids)

    def _start(self, task: RunTask, slot: Slot) -> None:
        """A worker that has held an engine gets a fresh process before a cold start (on
        request) or an idle baseline (which must see GPUs no process of ours has touched)."""
        self.queue.remove(task)
        if slot.used and (self.execution.force_cold_start or self._baseline_due(slot)):
            slot.recycle()
        execution = self.execution
        request = RunRequest(
            task.config.model_dump_json(), self.prompts[task.ids.key.experiment_id], execution,
            self.baselines, execution.config_gap_s if self.started_any else 0.0,
            keep_engine=not execution.force_cold_start,
            metric_tags=run_tags(task.ids) if execution.telemetry.ray_metrics else None,
            compile_cache=cache_location(self.results_dir, execution.compile_cache),
        )
        self.started_any = True
        self.last_cycle, self.cycle_gate_s = task.ids.key.cycle, None
        task.dispatched_at = _now()
        self.manifest.update.remote(task.ids.run_id, state="running",
                                    attempt=task.ids.attempt, error=None)
        slot.submit(task, request, time.monotonic(), self._timeout_s(slot))
        slot.est_s = self._estimate(task, task.engine in slot.engines, slot.starting is not None)
        slot.engines = [*(e for e in slot.engines if e != task.engine), task.engine]
        self.progress.change(running=1)
        self._report(None)

    def _timeout_s(self, slot: Slot) -> float | None:
        """run_timeout_s, plus the longest cooldown and baseline waits where GPUs may have them."""
        execution = self.execution
        timeout_s = execution.run_timeout_s
        measurable = self.cap.has_gpus and (bool(slot.uuids) or not slot.used)
        if timeout_s is None or not measurable:
            return timeout_s
        if execution.cooldown.target_temp_c is not None:
            timeout_s += execution.cooldown.max_wait_s
        if execution.baseline.enabled:
            timeout_s += execution.baseline.duration_s
        return timeout_s

    def _wait(self) -> None:
        busy = {s.ref: s for s in self.slots.values() if s.ref is not None}
        starting = {s.starting: s for s in self.slots.values() if s.starting is not None}
        if not busy:
            if self.queue:
                time.sleep(0.05)
            return
        deadlines = [s.deadline_s for s in busy.values() if s.deadline_s is not None]
        timeout_s = min([1.0, *(d - time.monotonic() for d in deadlines)])
        refs = [*busy, *starting]
        ready, rest = ray.wait(refs, num_returns=1, timeout=max(0.0, timeout_s))
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        for ref in ready:
            if ref in starting:
                slot = starting[ref]
                slot.started(time.monotonic())
                self.lengths.started(slot.ready_s - slot.started_s)
        for ref in ready:
            if ref in busy:
                self._complete(busy[ref])
        self.writer.collect()
        now = time.monotonic()
        for slot in [s for s in self.slots.values() if s.deadline_s and s.deadline_s < now]:
            self._time_out(slot)
        if time.monotonic() - self.ledger_saved_s > LEDGER_SAVE_S:
            self.ledger_saved_s = time.monotonic()
            save_ledger(self.results_dir, self.ledger.snapshot(time.time()))

    def _complete(self, slot: Slot) -> None:
        task, ref = slot.run, slot.ref
        run_s = time.monotonic() - max(slot.started_s, slot.ready_s)
        slot.finish()
        self.progress.change(running=-1)
        try:
            out: RunOutcome = ray.get(ref)
        except RayTaskError as exc:
            slot.engines = []
            self._finish(task, self._failed(task, slot, describe_error(exc)))
            return
        except RayActorError as exc:
            self._drop(slot)
            self._finish(task, self._failed(task, slot, describe_error(exc), retryable=True))
            return
        identity = out.identity
        slot.identity, slot.uuids, slot.used = identity, identity.gpu_uuids, True
        if self.cap.has_gpus and identity.node_id:
            slot.node = identity.node_id
        slot.engines = list(out.engines)
        for gpu, entry in out.conditions.baselines.items():
            self.baseline_at[gpu] = entry["measured_at_s"]
        self.lengths.finished(task.ids.key.experiment_id, task.engine, self._steps(task), run_s,
                              out.result.engine_load_s, out.result.engine_reused)
        if self.cap.has_gpus:
            self.ledger.add_run(out.phases_s, slot.gpus)
        try:
            rows = ok_rows(task.ids, task.config, self.execution, identity, out.result,
                           out.telemetry, out.conditions, out.started_at, task.kind)
        except Exception as exc:  # a bug of ours: keep the campaign going, keep the trace
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            rows = self._failed(task, slot, f"internal error: {detail}")
        self._finish(task, rows)

    def _failed(self, task: RunTask, slot: Slot, error: str, retryable: bool = False) -> RunRows:
        return failed_rows(task.ids, task.config, error, task.dispatched_at or _now(),
                           slot.identity, task.kind, retryable=retryable)

    def _drop(self, slot: Slot) -> None:
        """A dead worker's slot goes; its node may have gone too, so look at the cluster again."""
        self.slots.pop(slot.slot_id, None)
        slot.close()
        self.nodes = self._nodes()
        if self.cap.has_gpus:
            self.ledger.advance(time.time(), sum(self.nodes.values()))

    def _time_out(self, slot: Slot) -> None:
        task = slot.run
        slot.finish()
        self.progress.change(running=-1)
        self._drop(slot)
        self._finish(task, self._failed(
            task, slot, f"timed out: still running after execution.run_timeout_s = "
                        f"{self.execution.run_timeout_s:g} s"))

    def _finish(self, task: RunTask, rows: RunRows) -> None:
        """Retry a dead worker's run at the front of the queue (stored and recorded here, so
        the manifest sees attempts in order); hand final rows to a writer. A retry whose rows
        cannot be stored ends the run failed: the next attempt's rows would not fit either."""
        exp = rows.experiment
        if not rows.ok and rows.retryable and task.ids.attempt < self.execution.max_attempts:
            stored = self.writer.stored(rows, lambda error: self._unstored(task, rows, error))
            if stored is not rows:
                self._conclude(stored)
                return
            self._record(task.ids.run_id, state="pending", error=exp["error"], **_identity(exp))
            self.progress.change(retried=1)
            self._report(rows)
            ids = replace(task.ids, attempt=task.ids.attempt + 1)
            self.queue.insert(0, RunTask(ids, task.config, task.engine, task.env))
            return
        rows = replace(rows, retryable=False)
        self.writer.submit(rows, lambda error: self._unstored(task, rows, error))

    def _unstored(self, task: RunTask, rows: RunRows, error: str) -> RunRows:
        """The failed row of an attempt whose rows could not be written: where it ran is
        kept, nothing it measured (those rows are not in the dataset)."""
        exp = rows.experiment
        failed = failed_rows(task.ids, task.config, error, exp.get("started_at") or _now(),
                             None, task.kind)
        where = {k: exp.get(k) for k in WHERE_COLUMNS if exp.get(k) is not None}
        return replace(failed, experiment={**failed.experiment, **where})

    def _conclude(self, rows: RunRows) -> None:
        """A run's end, recorded once its rows are stored (in a writer's thread, or the loop's
        for a retry that could not be stored)."""
        exp = rows.experiment
        if rows.ok:
            self._record(exp["run_id"], state="ok", **_identity(exp))
        else:
            self._record(exp["run_id"], state="failed", error=exp["error"], **_identity(exp))
        self.progress.change(done=1, failed=0 if rows.ok else 1)
        self._report(rows)

    def _interrupt(self) -> None:
        """Stop every worker at once, then mark their runs interrupted (no rows for them)."""
        running = [s for s in self.slots.values() if s.run is not None]
        for slot in running:
            ray.kill(slot.worker, no_restart=True)
        for slot in running:
            self._record(slot.run.ids.run_id, state="interrupted")
            self.interrupted += 1
            self.progress.change(running=-1)
            slot.finish()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _identity(exp: dict[str, Any]) -> dict[str, Any]:
    return {"node_id": exp.get("node_id"), "gpu_ids": exp.get("gpu_ids") or []}
