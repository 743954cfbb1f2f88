"""One loop sends the runs out: the run queue (run_queue.py) says which runs wait and in
what order, the slot pool (slot_pool.py) holds a placement group and worker per set of GPUs
in use, the policy (policy.py) says which run goes to which slot, and the completion path
(completion.py) turns each outcome into stored rows and a manifest state; Ctrl-C stops all."""

from __future__ import annotations

import time
import uuid

import ray
from ray.exceptions import RayActorError, RayTaskError

from lem_ray.config.runtime_env import RuntimeEnvSpec
from lem_ray.execution.driver.cluster import Capacity, on_driver_node
from lem_ray.execution.driver.completion import Completion, Progress, Reporter, describe_error
from lem_ray.execution.driver.policy import Assign, Close, Open, QueuedRun, decide
from lem_ray.execution.driver.run_queue import RunQueue, RunTask
from lem_ray.execution.driver.slot_pool import SlotPool
from lem_ray.execution.driver.slots import Slot
from lem_ray.execution.metrics import run_tags
from lem_ray.execution.worker.actors import BaselineCache
from lem_ray.execution.worker.handoff import RunOutcome
from lem_ray.execution.worker.runs import RunRequest
from lem_ray.planning.plan import CampaignPlan
from lem_ray.records import RunAttempt, RunKey
from lem_ray.results.compile_cache import cache_location
from lem_ray.results.gpu_time import GpuLedger, save_ledger

LEDGER_SAVE_S = 5.0


class CampaignInterrupted(Exception):
    """Ctrl-C: runs in progress were stopped and marked interrupted; rerun to resume."""

    def __init__(self, interrupted: int) -> None:
        self.interrupted = interrupted
        super().__init__(f"{interrupted} runs interrupted")


class Dispatcher:
    """The loop between the queue, the slot pool and the completion path."""

    def __init__(
        self,
        plan: CampaignPlan,
        results_dir: str,
        manifest: object,
        prompts: dict[str, list[str]],
        cap: Capacity,
        progress: Progress,
        reporter: Reporter | None,
        runtime_envs: dict[str, RuntimeEnvSpec] | None = None,
        env_refusals: dict[str, str] | None = None,
    ) -> None:
        self.plan = plan
        self.results_dir = results_dir
        self.prompts = prompts
        self.cap = cap
        self.execution = plan.campaign.execution
        self.runtime_envs = runtime_envs or {}
        self.env_refusals = env_refusals or {}
        """Backends whose runtime environment failed its probe: their runs fail with this."""
        self.baselines = BaselineCache.options(scheduling_strategy=on_driver_node()).remote()
        self.queue = RunQueue(self.execution, prompts, cap.has_gpus)
        self.pool = SlotPool(plan.name, cap.has_gpus,
                             self.execution.telemetry.sample_interval_ms)
        self.completion = Completion(results_dir, manifest, self.execution, progress, reporter,
                                     self.queue.retry)
        self.started_any = False
        self.ledger = GpuLedger(f"{int(time.time())}-{uuid.uuid4().hex[:6]}", time.time(),
                                sum(self.pool.nodes.values()) if cap.has_gpus else 0)
        self.ledger_saved_s = 0.0

    @property
    def progress(self) -> Progress:
        """The counts the display and the metrics show."""
        return self.completion.progress

    def run(self, pending: list[RunKey], attempts: dict[str, int]) -> None:
        """Run every pending run to its end (ok, failed, or interrupted by Ctrl-C)."""
        tasks = []
        for key in pending:
            config = self.plan.experiment(key.experiment_id).config
            ids = RunAttempt(self.plan.name, key, attempts.get(key.run_id, 0) + 1)
            env = self.runtime_envs.get(config.backend, RuntimeEnvSpec())
            tasks.append(RunTask(ids, config, config.engine_key, env))
        self.queue.fill(tasks)
        writer = self.completion.writer
        try:
            self._refuse_unschedulable()
            while self.queue or self.pool.running():
                self._dispatch()
                self._wait()
            writer.collect(wait=True)
        except KeyboardInterrupt:
            raise CampaignInterrupted(self._interrupt()) from None
        finally:
            self.pool.close_all()
            writer.close()
            save_ledger(self.results_dir, self.ledger.snapshot(time.time()))

    def _refuse_unschedulable(self) -> None:
        largest = max(self.pool.nodes.values(), default=0)
        for task in list(self.queue.tasks):
            reason = self.env_refusals.get(task.config.backend)
            if self.queue.units(task) > largest:
                reason = (f"needs {task.config.gpus_per_experiment} GPUs on one node; the "
                          f"largest node of this cluster has {largest}")
            if reason is None:
                continue
            self.queue.drop(task)
            self.completion.refuse(task, reason)

    def _dispatch(self) -> None:
        window = self.queue.window(4 * sum(self.pool.nodes.values()) + 8,
                                   self.pool.running_cycles())
        held = self.pool.held_engines()
        queued = [QueuedRun(t.ids.run_id, self.queue.units(t), t.engine,
                            self.queue.estimate(t, t.engine in held), t.ids.key.cycle, t.kind,
                            self.queue.lengths.cold(t.engine)) for t in window]
        decisions, _ = decide(time.monotonic(), queued, self.pool.views(), self.pool.nodes)
        tasks = {t.ids.run_id: t for t in window}
        for decision in decisions:
            if isinstance(decision, Close):
                self.pool.close(decision.slot_id)
            elif isinstance(decision, Open):
                task = tasks[decision.run_id]
                self._start(task, self.pool.open(task, self.queue.units(task), decision.node))
            elif isinstance(decision, Assign):
                self._start(tasks[decision.run_id], self.pool.slots[decision.slot_id])

    def _start(self, task: RunTask, slot: Slot) -> None:
        """A worker that has held an engine gets a fresh process before a cold start (on
        request) or an idle baseline (which must see GPUs no process of ours has touched)."""
        self.queue.take(task)
        execution = self.execution
        if slot.used and (execution.force_cold_start
                          or self.pool.baseline_due(slot, execution.baseline)):
            slot.recycle()
        request = RunRequest(
            task.config.model_dump_json(), self.prompts[task.ids.key.experiment_id], execution,
            self.baselines, execution.config_gap_s if self.started_any else 0.0,
            keep_engine=not execution.force_cold_start,
            metric_tags=run_tags(task.ids) if execution.telemetry.ray_metrics else None,
            compile_cache=cache_location(self.results_dir, execution.compile_cache),
        )
        self.started_any = True
        self.completion.started(task)
        slot.submit(task, request, time.monotonic(), self._timeout_s(slot))
        slot.est_s = self.queue.estimate(task, task.engine in slot.engines,
                                         slot.starting is not None)
        slot.engines = [*(e for e in slot.engines if e != task.engine), task.engine]

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
        busy, starting = self.pool.busy(), self.pool.starting()
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
                self.queue.lengths.started(slot.ready_s - slot.started_s)
        for ref in ready:
            if ref in busy:
                self._complete(busy[ref])
        self.completion.writer.collect()
        for slot in self.pool.overdue(time.monotonic()):
            self._time_out(slot)
        if time.monotonic() - self.ledger_saved_s > LEDGER_SAVE_S:
            self.ledger_saved_s = time.monotonic()
            save_ledger(self.results_dir, self.ledger.snapshot(time.time()))

    def _complete(self, slot: Slot) -> None:
        task, ref = slot.run, slot.ref
        run_s = time.monotonic() - max(slot.started_s, slot.ready_s)
        slot.finish()
        self.progress.change(running=-1)
        completion = self.completion
        try:
            out: RunOutcome = ray.get(ref)
        except RayTaskError as exc:
            slot.engines = []
            completion.finish(task, completion.failed(task, slot.identity, describe_error(exc)))
            return
        except RayActorError as exc:
            self._drop(slot)
            completion.finish(task, completion.failed(task, slot.identity, describe_error(exc),
                                                      retryable=True))
            return
        self.pool.learn(slot, out)
        self.queue.lengths.finished(task.ids.key.experiment_id, task.engine,
                                    self.queue.decode_steps(task), run_s,
                                    out.result.engine_load_s, out.result.engine_reused)
        if self.cap.has_gpus:
            self.ledger.add_run(out.phases_s, slot.gpus)
        completion.finish(task, completion.rows(task, out))

    def _drop(self, slot: Slot) -> None:
        self.pool.drop(slot)
        if self.cap.has_gpus:
            self.ledger.advance(time.time(), sum(self.pool.nodes.values()))

    def _time_out(self, slot: Slot) -> None:
        task = slot.run
        slot.finish()
        self.progress.change(running=-1)
        self._drop(slot)
        self.completion.finish(task, self.completion.failed(
            task, slot.identity, f"timed out: still running after execution.run_timeout_s = "
                                 f"{self.execution.run_timeout_s:g} s"))

    def _interrupt(self) -> int:
        """Stop every worker at once, then mark their runs interrupted (no rows for them)."""
        stopped = self.pool.stop_running()
        for task in stopped:
            self.completion.interrupted(task)
        return len(stopped)
