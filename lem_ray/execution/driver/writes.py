"""A finished run's rows are written off the dispatch loop, in a few threads, and its end is
recorded only once they are on disk: `ok` in the manifest means the rows are there. A write
that fails fails its run with the error; nothing is dropped in a thread unseen."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lem_ray.records import RunAttempt
from lem_ray.results.rows import RunRows
from lem_ray.results.store import write_rows

WRITERS = 4
STORE_ERROR = "could not store the run's rows"

Done = Callable[[RunRows], None]
"""Told how a run ended, once its rows are stored: the rows as written, or a failed row."""
Failed = Callable[[str], RunRows]
"""The failed rows of the same attempt, with this error."""


def store_rows(results_dir: str, rows: RunRows) -> None:
    """Requests and time series first, the experiments row last: a reader that finds the
    experiments row finds the rest."""
    exp = rows.experiment
    stem = RunAttempt.of_row(exp).stem
    write_rows(results_dir, "requests", stem, rows.requests)
    write_rows(results_dir, "timeseries", stem, rows.timeseries)
    write_rows(results_dir, "experiments", stem, [exp])


class RowWriter:
    """Stores rows in a pool of threads, so the loop never waits on a disk or an upload.

    `unstored` holds the failed rows that could not be written either (the disk stayed full):
    their runs are failed in the manifest, and these rows are the only trace of why."""

    def __init__(self, results_dir: str, done: Done) -> None:
        self.results_dir = results_dir
        self.done = done
        self.pool = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="store")
        self.futures: list[Future[None]] = []
        self.unstored: list[RunRows] = []
        self.lock = threading.Lock()

    def stored(self, rows: RunRows, failed: Failed) -> RunRows:
        """Write rows now; if that fails, the attempt's failed row with the write's error
        (written if it can be: a failed write of requests leaves room for it)."""
        try:
            store_rows(self.results_dir, rows)
            return rows
        except Exception as exc:
            failure = failed(f"{STORE_ERROR}: {type(exc).__name__}: {exc}")
        try:
            store_rows(self.results_dir, failure)
        except Exception:
            with self.lock:
                self.unstored.append(failure)
        return failure

    def submit(self, rows: RunRows, failed: Failed) -> None:
        """Write a run's rows in the background; done() then commits the run."""
        self.futures.append(self.pool.submit(lambda: self.done(self.stored(rows, failed))))

    def collect(self, wait: bool = False) -> None:
        """Hand the loop any error a writer met after the write (recording, reporting): the
        campaign stops on it rather than go on with a run nobody recorded."""
        if wait:
            for future in self.futures:
                future.exception()
        finished = {f for f in self.futures if f.done()}
        self.futures = [f for f in self.futures if f not in finished]
        for future in finished:
            future.result()

    def failures(self) -> list[dict[str, Any]]:
        """The unstored failures as the summary lists failures (report.excluded): the dataset
        has no row of them for the summary to find."""
        return [{"group": e["experiment_id"],
                 **{k: e[k] for k in ("experiment_id", "run_id", "cycle", "attempt")},
                 "status": "failed", "reason": e["error"]}
                for e in (rows.experiment for rows in self.unstored)]

    def close(self) -> None:
        """Wait for every write to finish."""
        self.pool.shutdown(wait=True)
