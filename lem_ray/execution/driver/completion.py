"""How a run ends: its outcome becomes rows, the rows go to a writer, and the manifest says
ok or failed only once the writer has said how the write went; a dead worker's run goes back
to the queue while it has attempts left."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from lem_ray.config.campaign import ExecutionConfig
from lem_ray.execution.driver.run_queue import RunTask
from lem_ray.execution.driver.writes import RowWriter
from lem_ray.execution.worker.handoff import RunOutcome, WorkerIdentity
from lem_ray.results.rows import RunRows, failed_rows, ok_rows

# Where an attempt ran, kept on the failed row of one whose rows could not be written.
WHERE_COLUMNS = ("node_ip", "node_id", "hostname", "device", "gpu_ids", "gpu_uuids", "gpu_names",
                 "python_executable")


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
        """Add to the counts, atomically."""
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


Reporter = Callable[[Progress, RunRows | None], None]


def describe_error(exc: BaseException) -> str:
    """The backend's own exception, not Ray's wrapping of it."""
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is not None:
            return f"{type(cause).__name__}: {cause}".strip()
    if isinstance(exc, RayActorError):
        return f"worker died: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


class Completion:
    """Ends runs: records them in the manifest, stores their rows, reports them, and hands a
    dead worker's run back to `retry`."""

    def __init__(self, results_dir: str, manifest: Any, execution: ExecutionConfig,
                 progress: Progress, reporter: Reporter | None,
                 retry: Callable[[RunTask], None]) -> None:
        self.manifest = manifest
        self.execution = execution
        self.progress = progress
        self.reporter = reporter
        self.retry = retry
        self.writer = RowWriter(results_dir, self.conclude)

    def report(self, rows: RunRows | None) -> None:
        """Tell the reporter (the display, the metrics) of progress and of a run's end."""
        if self.reporter:
            self.reporter(self.progress, rows)

    def record(self, key: str, **fields: Any) -> None:
        """A run's new state, durable in the manifest before this returns."""
        ray.get(self.manifest.update.remote(key, **fields))

    def started(self, task: RunTask) -> None:
        """The run went to a worker (recorded without waiting: its end is recorded after)."""
        task.dispatched_at = _now()
        self.manifest.update.remote(task.ids.run_id, state="running",
                                    attempt=task.ids.attempt, error=None)
        self.progress.change(running=1)
        self.report(None)

    def refuse(self, task: RunTask, reason: str) -> None:
        """A run no worker could run fails at once with the reason."""
        self.record(task.ids.run_id, state="running", attempt=task.ids.attempt, error=None)
        self.finish(task, failed_rows(task.ids, task.config, reason, _now(), None, task.kind))

    def rows(self, task: RunTask, out: RunOutcome) -> RunRows:
        """A finished run's rows; a failed row if making them fails."""
        try:
            return ok_rows(task.ids, task.config, self.execution, out.identity, out.result,
                           out.telemetry, out.conditions, out.started_at, task.kind)
        except Exception as exc:  # a bug of ours: keep the campaign going, keep the trace
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return self.failed(task, out.identity, f"internal error: {detail}")

    def failed(self, task: RunTask, identity: WorkerIdentity | None, error: str,
               retryable: bool = False) -> RunRows:
        """The attempt's failed row, with where it ran when known."""
        return failed_rows(task.ids, task.config, error, task.dispatched_at or _now(),
                           identity, task.kind, retryable=retryable)

    def finish(self, task: RunTask, rows: RunRows) -> None:
        """Retry a dead worker's run at the front of the queue (stored and recorded here, so
        the manifest sees attempts in order); hand final rows to a writer. A retry whose rows
        cannot be stored ends the run failed: the next attempt's rows would not fit either."""
        exp = rows.experiment
        if not rows.ok and rows.retryable and task.ids.attempt < self.execution.max_attempts:
            stored = self.writer.stored(rows, lambda error: self.unstored(task, rows, error))
            if stored is not rows:
                self.conclude(stored)
                return
            self.record(task.ids.run_id, state="pending", error=exp["error"], **_identity(exp))
            self.progress.change(retried=1)
            self.report(rows)
            ids = replace(task.ids, attempt=task.ids.attempt + 1)
            self.retry(RunTask(ids, task.config, task.engine, task.env))
            return
        rows = replace(rows, retryable=False)
        self.writer.submit(rows, lambda error: self.unstored(task, rows, error))

    def unstored(self, task: RunTask, rows: RunRows, error: str) -> RunRows:
        """The failed row of an attempt whose rows could not be written: where it ran is
        kept, nothing it measured (those rows are not in the dataset)."""
        exp = rows.experiment
        failed = failed_rows(task.ids, task.config, error, exp.get("started_at") or _now(),
                             None, task.kind)
        where = {k: exp.get(k) for k in WHERE_COLUMNS if exp.get(k) is not None}
        return replace(failed, experiment={**failed.experiment, **where})

    def conclude(self, rows: RunRows) -> None:
        """A run's end, recorded once its rows are stored (in a writer's thread, or the loop's
        for a retry that could not be stored)."""
        exp = rows.experiment
        if rows.ok:
            self.record(exp["run_id"], state="ok", **_identity(exp))
        else:
            self.record(exp["run_id"], state="failed", error=exp["error"], **_identity(exp))
        self.progress.change(done=1, failed=0 if rows.ok else 1)
        self.report(rows)

    def interrupted(self, task: RunTask) -> None:
        """A run stopped by Ctrl-C: no rows, marked interrupted to run again on resume."""
        self.record(task.ids.run_id, state="interrupted")
        self.progress.change(running=-1)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _identity(exp: dict[str, Any]) -> dict[str, Any]:
    return {"node_id": exp.get("node_id"), "gpu_ids": exp.get("gpu_ids") or []}
