"""The dispatcher's retry rule without Ray: a run whose worker dies is tried again until
execution.max_attempts, an error or a timeout is not, and the manifest hears every step."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

import lem_ray.execution.dispatch as dispatch
from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.dispatch import Dispatcher, Progress
from lem_ray.execution.rows import RunRows, failed_rows
from lem_ray.execution.run import RunTask
from lem_ray.records import RunAttempt, RunKey
from tests.conftest import TINY_BASE

CONFIG = ExperimentConfig.model_validate({**TINY_BASE, "backend": "pytorch"})


def outcome(kind: str, ids: RunAttempt) -> RunRows:
    now = datetime.now(timezone.utc)
    if kind == "ok":
        return RunRows({**ids.as_dict(), "status": "ok", "error": None, "node_id": "n", "gpu_ids": []})
    if kind == "died":
        return failed_rows(ids, CONFIG, "worker died: killed", now, retryable=True)
    return failed_rows(ids, CONFIG, "RuntimeError: boom", now)


def dispatch_one(monkeypatch: pytest.MonkeyPatch, outcomes: list[str], max_attempts: int,
                 first_attempt: int = 1, stopping: bool = False) -> dict[str, Any]:
    """Run Dispatcher._one for one run whose attempts end as `outcomes` say, in turn."""
    attempts: list[int] = []
    stored: list[tuple[int, str]] = []
    manifest: list[dict[str, Any]] = []

    reported: list[tuple[int, bool] | None] = []

    def execute_run(task: RunTask, pg: Any) -> RunRows:
        assert task.gap_s == (0.0 if attempts else 5.0), "a retry does not wait the config gap"
        attempts.append(task.ids.attempt)
        return outcome(outcomes[len(attempts) - 1], task.ids)

    monkeypatch.setattr(dispatch, "execute_run", execute_run)
    monkeypatch.setattr(dispatch, "reserve", lambda task: "pg")
    monkeypatch.setattr(dispatch, "store_rows", lambda results_dir, rows: stored.append(
        (rows.experiment["attempt"], rows.experiment["status"])))
    monkeypatch.setattr(dispatch, "ray", SimpleNamespace(get=lambda ref: ref))
    d = Dispatcher.__new__(Dispatcher)
    d.execution = ExecutionConfig(max_attempts=max_attempts)
    d.results_dir, d.interrupted = "unused", 0
    d.reporter = lambda progress, rows: reported.append(
        None if rows is None else (rows.experiment["attempt"], rows.retryable))
    d.progress = Progress(total=1)
    d.stopping = SimpleNamespace(is_set=lambda: stopping)
    d.manifest = SimpleNamespace(update=SimpleNamespace(
        remote=lambda key, **fields: manifest.append({"key": key, **fields})))
    task = RunTask(ids=RunAttempt("c", RunKey("e1", 1), first_attempt), config=CONFIG, prompts=[], use_gpus=False,
                   execution=d.execution, baselines=None, inflight=None, gap_s=5.0)
    d._one(task, "pg", None)
    states = [(m["state"], m.get("attempt")) for m in manifest]
    assert all(m["gpu_ids"] == [] for m in manifest if m["state"] in ("ok", "pending", "failed")), "never null"
    return {"reported": reported, "attempts": attempts, "stored": stored, "states": states, "progress": d.progress,
            "errors": [m.get("error") for m in manifest], "interrupted": d.interrupted}


def test_dead_worker_retried_until_max_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    out = dispatch_one(monkeypatch, ["died", "died", "died", "ok"], max_attempts=3)
    assert out["attempts"] == [1, 2, 3]
    assert out["stored"] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert out["states"] == [("running", 1), ("pending", None), ("running", 2), ("pending", None),
                             ("running", 3), ("failed", None)]
    assert out["errors"][-1] == "worker died: killed"
    p = out["progress"]
    assert (p.retried, p.done, p.failed, p.running) == (2, 1, 1, 0)
    assert out["reported"] == [None, (1, True), (2, True), (3, False)], "the last is final"


def test_retry_that_succeeds_ends_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    out = dispatch_one(monkeypatch, ["died", "ok"], max_attempts=3)
    assert out["attempts"] == [1, 2] and out["stored"] == [(1, "failed"), (2, "ok")]
    assert out["states"][-1] == ("ok", None)
    p = out["progress"]
    assert (p.retried, p.done, p.failed, p.running) == (1, 1, 0, 0)


def test_single_attempt_and_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dispatch_one(monkeypatch, ["died"], max_attempts=1)["attempts"] == [1]
    out = dispatch_one(monkeypatch, ["error"], max_attempts=3)
    assert out["attempts"] == [1] and out["states"] == [("running", 1), ("failed", None)]
    assert out["errors"][-1] == "RuntimeError: boom"
    resumed = dispatch_one(monkeypatch, ["died", "died"], max_attempts=3, first_attempt=2)
    assert resumed["attempts"] == [2, 3], "attempts count from the run's first, across drivers"


def test_ctrl_c_marks_the_run_interrupted_and_stores_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers killed by the interrupt look like deaths: not retried, not stored, counted."""
    out = dispatch_one(monkeypatch, ["died"], max_attempts=3, stopping=True)
    assert out["attempts"] == [1] and out["stored"] == []
    assert out["states"] == [("running", 1), ("interrupted", None)] and out["interrupted"] == 1
    p = out["progress"]
    assert (p.running, p.done, p.failed) == (0, 0, 0)
    finished = dispatch_one(monkeypatch, ["ok"], max_attempts=3, stopping=True)
    assert finished["stored"] == [(1, "ok")] and finished["states"][-1] == ("ok", None)
    assert finished["interrupted"] == 0, "a run that ended ok before the interrupt keeps its row"
