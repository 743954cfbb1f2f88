"""Helpers for the failure tests: find and kill real worker processes, watch the dataset."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pyarrow.dataset as ds

from lem_ray.results.store import read_table


def running_workers() -> list[psutil.Process]:
    """Experiment worker processes inside their run() (Ray titles them ray::Class.method).

    Only this test's own: Ray's processes descend from the test process (ray.init, Cluster,
    or a driver it started), while other test sessions on the same machine have their own."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
            alive = proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
        if alive and cmdline.startswith("ray::ExperimentWorker.run"):
            found.append(proc)
    return found


class CampaignThread(threading.Thread):
    """run_campaign in the background, so a test can hurt it meanwhile; finish() says what
    went wrong in full (an exception, a hang with the manifest's states) rather than leaving
    the test to fail later on an empty dataset."""

    def __init__(self, campaign: dict, results_dir: Path) -> None:
        super().__init__(daemon=True)
        self.campaign, self.results_dir = campaign, results_dir
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from lem_ray.execution.driver.campaign import run_campaign

        try:
            self.result = run_campaign(self.campaign, results_dir=self.results_dir)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout_s: float = 600) -> Any:
        self.join(timeout=timeout_s)
        if self.is_alive():
            from lem_ray.results.manifest import load_manifest

            states = Counter(e["state"] for e in load_manifest(self.results_dir)["runs"].values())
            raise AssertionError(f"campaign still running after {timeout_s} s: {dict(states)}")
        if self.error is not None:
            raise AssertionError(f"campaign raised {self.error!r}") from self.error
        return self.result


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def kill_one_worker(
    timeout_s: float = 120, spare: set[int] = frozenset(), settle_s: float = 1.0
) -> int:
    """SIGKILL a worker inside its run(), not one of the `spare` pids (killed before)."""
    proc = wait_for(lambda: next((p for p in running_workers() if p.pid not in spare), None),
                    timeout_s, "a running worker")
    time.sleep(settle_s)
    proc.send_signal(signal.SIGKILL)
    return proc.pid


class DatasetWatcher(threading.Thread):
    """Reads the results as a user would, all the time, and records anything a reader
    must never see: a hidden or temporary file, an unreadable file, two ok rows for a run.
    Rows are read through lem-ray's reader, which hides the moment of a compaction when an
    attempt is in a compacted file and in its own file both (docs/results.md)."""

    def __init__(self, results_dir: Path) -> None:
        super().__init__(daemon=True)
        self.results_dir = results_dir
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.reads = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for table in ("experiments", "requests", "timeseries"):
                folder = self.results_dir / table
                if not folder.is_dir():
                    continue
                try:
                    dataset = ds.dataset(folder, format="parquet")
                    bad = [f for f in dataset.files if Path(f).name.startswith(".")]
                    if bad:
                        self.problems.append(f"hidden file visible: {bad}")
                    data = read_table(self.results_dir, table)
                    self.reads += 1
                except Exception as exc:  # any read failure is the finding
                    self.problems.append(f"{table}: {type(exc).__name__}: {exc}")
                    continue
                if table == "experiments" and data.num_rows:
                    rows = data.select(["experiment_id", "cycle", "status"]).to_pylist()
                    oks = Counter(
                        (r["experiment_id"], r["cycle"]) for r in rows if r["status"] == "ok"
                    )
                    twice = [k for k, n in oks.items() if n > 1]
                    if twice:
                        self.problems.append(f"two ok rows for {twice}")
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=10)
