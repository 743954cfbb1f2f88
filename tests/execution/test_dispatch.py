"""The dispatcher's retry rule without Ray: a run whose worker dies is tried again until
execution.max_attempts, an error or a timeout is not, and the manifest hears every step."""

from __future__ import annotations

import errno
import threading
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

import lem_ray.execution.driver.completion as completion
import lem_ray.execution.driver.slot_pool as slot_pool
import lem_ray.execution.driver.writes as writes
from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.driver.completion import Completion, Progress
from lem_ray.execution.driver.dispatch import Dispatcher
from lem_ray.execution.driver.run_queue import RunQueue, RunTask
from lem_ray.execution.driver.slot_pool import SlotPool
from lem_ray.records import RunAttempt, RunKey
from lem_ray.results.rows import RunRows, failed_rows
from tests.conftest import TINY_BASE

CONFIG = ExperimentConfig.model_validate({**TINY_BASE, "backend": "pytorch"})


def outcome(kind: str, ids: RunAttempt) -> RunRows:
    now = datetime.now(timezone.utc)
    if kind == "ok":
        return RunRows(
            {**ids.as_dict(), "status": "ok", "error": None, "node_id": "n", "gpu_ids": []}
        )
    if kind == "died":
        return failed_rows(ids, CONFIG, "worker died: killed", now, retryable=True)
    return failed_rows(ids, CONFIG, "RuntimeError: boom", now)


def dispatcher(monkeypatch: pytest.MonkeyPatch, max_attempts: int) -> tuple[Dispatcher, dict]:
    """The loop's queue, slot pool (no slots, no cluster) and completion path, without Ray."""
    seen: dict[str, list] = {"stored": [], "manifest": [], "reported": []}
    monkeypatch.setattr(writes, "store_rows", lambda results_dir, rows: seen["stored"].append(
        (rows.experiment["attempt"], rows.experiment["status"])))
    fake_ray = SimpleNamespace(get=lambda ref: ref, kill=lambda actor, no_restart: None)
    monkeypatch.setattr(completion, "ray", fake_ray)
    monkeypatch.setattr(slot_pool, "ray", fake_ray)
    execution = ExecutionConfig(max_attempts=max_attempts)
    d = Dispatcher.__new__(Dispatcher)
    d.execution = execution
    d.queue = RunQueue(execution, {}, has_gpus=False)
    d.pool = SlotPool("c", has_gpus=False, sample_interval_ms=None)
    manifest = SimpleNamespace(update=SimpleNamespace(
        remote=lambda key, **fields: seen["manifest"].append({"key": key, **fields})))
    d.completion = Completion(
        "unused", manifest, execution, Progress(total=1),
        lambda progress, rows: seen["reported"].append(
            None if rows is None else (rows.experiment["attempt"], rows.retryable)),
        d.queue.retry)
    return d, seen


def dispatch_one(monkeypatch: pytest.MonkeyPatch, outcomes: list[str], max_attempts: int,
                 first_attempt: int = 1) -> dict[str, Any]:
    """Finish one run's attempts as `outcomes` say, in turn, taking each retry off the queue."""
    d, seen = dispatcher(monkeypatch, max_attempts)
    task: RunTask | None = RunTask(RunAttempt("c", RunKey("e1", 1), first_attempt), CONFIG,
                                   CONFIG.engine_key)
    attempts = []
    while task is not None:
        attempts.append(task.ids.attempt)
        d.completion.finish(task, outcome(outcomes[len(attempts) - 1], task.ids))
        d.completion.writer.collect(wait=True)
        task = d.queue.tasks.pop(0) if d.queue else None
    d.completion.writer.close()
    assert all(m["gpu_ids"] == [] for m in seen["manifest"]), "never null"
    return {**seen, "attempts": attempts, "progress": d.progress,
            "states": [m["state"] for m in seen["manifest"]],
            "errors": [m.get("error") for m in seen["manifest"]]}


def test_dead_worker_retried_until_max_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    out = dispatch_one(monkeypatch, ["died", "died", "died", "ok"], max_attempts=3)
    assert out["attempts"] == [1, 2, 3]
    assert out["stored"] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert out["states"] == ["pending", "pending", "failed"]
    assert out["errors"][-1] == "worker died: killed"
    p = out["progress"]
    assert (p.retried, p.done, p.failed) == (2, 1, 1)
    assert out["reported"] == [(1, True), (2, True), (3, False)], "the last is final"


def test_retry_that_succeeds_ends_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    out = dispatch_one(monkeypatch, ["died", "ok"], max_attempts=3)
    assert out["attempts"] == [1, 2] and out["stored"] == [(1, "failed"), (2, "ok")]
    assert out["states"][-1] == "ok"
    p = out["progress"]
    assert (p.retried, p.done, p.failed) == (1, 1, 0)


def test_single_attempt_and_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dispatch_one(monkeypatch, ["died"], max_attempts=1)["attempts"] == [1]
    out = dispatch_one(monkeypatch, ["error"], max_attempts=3)
    assert out["attempts"] == [1] and out["states"] == ["failed"]
    assert out["errors"][-1] == "RuntimeError: boom"
    resumed = dispatch_one(monkeypatch, ["died", "died"], max_attempts=3, first_attempt=2)
    assert resumed["attempts"] == [2, 3], "attempts count from the run's first, across drivers"


def test_ctrl_c_marks_running_runs_interrupted_and_stores_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d, seen = dispatcher(monkeypatch, 3)
    task = RunTask(RunAttempt("c", RunKey("e1", 1), 1), CONFIG, CONFIG.engine_key)
    finished: list[bool] = []
    d.pool.slots = {1: SimpleNamespace(run=task, worker="w", finish=lambda: finished.append(True)),
                    2: SimpleNamespace(run=None, worker="idle", finish=lambda: None)}
    d.progress.change(running=1)
    assert d._interrupt() == 1
    assert [(m["key"], m["state"]) for m in seen["manifest"]] == [("e1-c1", "interrupted")]
    assert seen["stored"] == [] and finished == [True]
    assert d.progress.running == 0


def full_disk(
    monkeypatch: pytest.MonkeyPatch, statuses: set[str], written: list | None = None
) -> list:
    """store_rows that fails, as on a full disk, for rows of these statuses."""
    tried: list = []

    def store(results_dir: str, rows: RunRows) -> None:
        tried.append((rows.experiment["attempt"], rows.experiment["status"]))
        if written is not None:
            written.append(rows.experiment)
        if rows.experiment["status"] in statuses:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writes, "store_rows", store)
    return tried


DISK_FULL = "could not store the run's rows: OSError: [Errno 28] No space left on device"


def test_a_final_write_that_fails_fails_the_run_with_its_error(monkeypatch) -> None:
    d, seen = dispatcher(monkeypatch, 3)
    written: list = []
    tried = full_disk(monkeypatch, {"ok"}, written)
    task = RunTask(RunAttempt("c", RunKey("e1", 1), 1), CONFIG, CONFIG.engine_key)
    started = datetime(2026, 1, 2, tzinfo=timezone.utc)
    ok = outcome("ok", task.ids)
    d.completion.finish(task, RunRows({**ok.experiment, "started_at": started, "energy_j": 5.0}))
    d.completion.writer.collect(wait=True)
    d.completion.writer.close()
    assert tried == [(1, "ok"), (1, "failed")], "the failed row is written in its place"
    failed = written[1]
    assert (failed["started_at"], failed["node_id"], failed["energy_j"]) == (started, "n", None), \
        "when and where it ran are kept, nothing it measured"
    assert [(m["state"], m["error"]) for m in seen["manifest"]] == [("failed", DISK_FULL)]
    assert (d.progress.done, d.progress.failed) == (1, 1)
    assert d.completion.writer.unstored == [] and d.completion.writer.failures() == []


def test_a_retry_whose_rows_cannot_be_stored_ends_failed(monkeypatch) -> None:
    d, seen = dispatcher(monkeypatch, 3)
    tried = full_disk(monkeypatch, {"failed"})
    task = RunTask(RunAttempt("c", RunKey("e1", 1), 1), CONFIG, CONFIG.engine_key)
    d.completion.finish(task, outcome("died", task.ids))
    d.completion.writer.close()
    assert tried == [(1, "failed"), (1, "failed")] and d.queue.tasks == [], "not retried"
    assert [(m["state"], m["error"]) for m in seen["manifest"]] == [("failed", DISK_FULL)]
    assert (d.progress.done, d.progress.failed, d.progress.retried) == (1, 1, 0)
    assert d.completion.writer.failures() == [{
        "group": "e1", "experiment_id": "e1", "run_id": "e1-c1", "cycle": 1, "attempt": 1,
        "status": "failed", "reason": DISK_FULL}]


def test_an_error_after_the_write_reaches_the_loop(monkeypatch) -> None:
    """Recording the end is the manifest's write: if it fails, the campaign stops on it. A
    write still in progress is neither handed over early nor forgotten; close waits for it."""
    d, seen = dispatcher(monkeypatch, 3)
    gate = threading.Event()

    def broken(key: str, **fields: Any) -> None:
        gate.wait(timeout=10)
        raise RuntimeError("the manifest could not be written")

    d.completion.manifest = SimpleNamespace(update=SimpleNamespace(remote=broken))
    task = RunTask(RunAttempt("c", RunKey("e1", 1), 1), CONFIG, CONFIG.engine_key)
    d.completion.finish(task, outcome("ok", task.ids))
    d.completion.writer.collect()
    assert len(d.completion.writer.futures) == 1, "still running: kept for later"
    gate.set()
    with pytest.raises(RuntimeError, match="manifest could not be written"):
        d.completion.writer.collect(wait=True)
    assert seen["stored"] == [(1, "ok")] and d.completion.writer.futures == []

    gate.clear()
    d.completion.finish(task, outcome("ok", task.ids))
    threading.Timer(0.2, gate.set).start()
    d.completion.writer.close()
    assert [f.done() for f in d.completion.writer.futures] == [True]
