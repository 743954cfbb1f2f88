"""The results directory's lease (results/lease.py): one driver at a time, taken over only
once expired or once its driver is certainly dead on this machine, and exactly one winner when
drivers race for it. Real files, real processes; no Ray."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest

from lem_ray.results import lease as lease_module
from lem_ray.results.lease import (
    EXPIRES_AFTER_S,
    LEASE_FILE,
    Lease,
    LeaseHeld,
    LeaseLost,
    machine_id,
)
from tests.fakes.leases import held_by


def ago(seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat(timespec="seconds")


def on_disk(results: Path) -> dict[str, Any]:
    return json.loads((results / LEASE_FILE).read_text())


def test_taken_recorded_refused_to_a_second_and_released(tmp_path: Path) -> None:
    results = tmp_path / "r"
    first = Lease(str(results))
    first.take()
    record = on_disk(results)
    assert (record["pid"], record["machine"]) == (os.getpid(), machine_id())
    assert record["token"] == first.record.token and len(record["token"]) == 32
    assert datetime.fromisoformat(record["since"]).tzinfo is not None
    with pytest.raises(LeaseHeld) as refused:
        Lease(str(results)).take()
    line = str(refused.value)
    assert "\n" not in line and f"pid {os.getpid()}" in line and record["host"] in line
    assert datetime.fromisoformat(record["since"]).strftime("%Y-%m-%d %H:%M:%S UTC") in line
    assert on_disk(results)["token"] == first.record.token, "the refused driver wrote nothing"
    first.release()
    assert not (results / LEASE_FILE).exists()
    Lease(str(results)).take()


def test_another_hosts_lease_is_refused_until_it_expires(tmp_path: Path) -> None:
    results = tmp_path / "r"
    held_by(results, renewed_at=ago(EXPIRES_AFTER_S - 10))
    with pytest.raises(LeaseHeld, match="host gpu-node-7, pid 4242, since"):
        Lease(str(results)).take()
    held_by(results, renewed_at=ago(EXPIRES_AFTER_S + 5))
    taker = Lease(str(results))
    taker.take()
    assert on_disk(results)["token"] == taker.record.token


def test_a_dead_drivers_lease_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    """Ctrl-C or kill -9, then the same command again: no minute of waiting."""
    results = tmp_path / "r"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started_s = psutil.Process(gone.pid).create_time()
    gone.wait()
    held_by(results, host="here", machine=machine_id(), pid=gone.pid, pid_started_s=started_s)
    Lease(str(results)).take()


def test_a_killed_driver_not_yet_reaped_is_dead(tmp_path: Path) -> None:
    results = tmp_path / "r"
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started_s = psutil.Process(zombie.pid).create_time()
    zombie.kill()
    time.sleep(0.5)
    held_by(results, machine=machine_id(), pid=zombie.pid, pid_started_s=started_s)
    try:
        Lease(str(results)).take()
    finally:
        zombie.wait()


def test_a_reused_pid_is_not_the_driver(tmp_path: Path) -> None:
    """The lease's pid now names another process (started later): its driver is gone."""
    results = tmp_path / "r"
    other = psutil.Process(os.getppid())
    held_by(results, machine=machine_id(), pid=other.pid, pid_started_s=other.create_time() - 3600)
    Lease(str(results)).take()


def test_a_live_driver_on_this_machine_is_refused(tmp_path: Path) -> None:
    results = tmp_path / "r"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held_by(results, machine=machine_id(), pid=alive.pid,
                pid_started_s=psutil.Process(alive.pid).create_time())
        with pytest.raises(LeaseHeld, match=f"pid {alive.pid}"):
            Lease(str(results)).take()
    finally:
        alive.kill()
        alive.wait()


def test_same_pid_on_another_machine_is_not_judged_here(tmp_path: Path) -> None:
    """A pid means nothing across hosts (or containers): only expiry frees that lease."""
    results = tmp_path / "r"
    held_by(results, pid=999_999_999, machine="elsewhere")
    with pytest.raises(LeaseHeld):
        Lease(str(results)).take()


def test_a_damaged_lease_file_holds_until_it_is_old(tmp_path: Path) -> None:
    results = tmp_path / "r"
    results.mkdir()
    path = results / LEASE_FILE
    for content in ('{"host": "x", "pi', '[1, 2]', '{"host": 1}'):
        path.write_text(content)
        with pytest.raises(LeaseHeld, match=f"{LEASE_FILE} cannot be read"):
            Lease(str(results)).take()
    old_s = time.time() - EXPIRES_AFTER_S - 5
    os.utime(path, (old_s, old_s))
    Lease(str(results)).take()


def test_renewal_finds_a_takeover_and_stops(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "r"
    mine = Lease(str(results))
    mine.take()
    since = on_disk(results)["renewed_at"]
    monkeypatch.setattr(lease_module, "RENEW_EVERY_S", 0.05)
    monkeypatch.setattr(lease_module, "_utc_now", lambda: ago(-5))
    mine.renew()
    assert on_disk(results)["renewed_at"] > since
    lost = threading.Event()
    mine.keep_renewed(lambda reason: lost.set())
    held_by(results)
    assert lost.wait(10)
    assert "taken over (host gpu-node-7, pid 4242" in mine.lost
    with pytest.raises(LeaseLost):
        mine.renew()
    mine.release()
    assert on_disk(results)["token"] == "f" * 32, "release leaves another driver's lease"


def test_renewal_that_keeps_failing_gives_up_before_expiry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "r"
    mine = Lease(str(results))
    mine.take()
    monkeypatch.setattr(lease_module, "RENEW_EVERY_S", 0.05)
    monkeypatch.setattr(lease_module, "GIVE_UP_AFTER_S", 0.3)

    def broken(create: bool) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(mine, "_write", broken)
    lost = threading.Event()
    mine.keep_renewed(lambda reason: lost.set())
    assert lost.wait(10)
    assert "could not be renewed" in mine.lost and "Input/output error" in mine.lost
    mine.release()


def _race(results: str, start: Any, done: Any, wins: Any) -> None:
    start.wait()
    try:
        Lease(results).take()
        wins.put(os.getpid())
    except LeaseHeld:
        pass
    done.wait()  # the winner stays alive until all have tried: a dead winner's lease is free


@pytest.mark.parametrize("stale", ["expired", "none"])
def test_racing_drivers_leave_exactly_one_winner(tmp_path: Path, stale: str) -> None:
    results = tmp_path / "r"
    if stale == "expired":
        held_by(results, renewed_at=ago(EXPIRES_AFTER_S * 3))
    context = multiprocessing.get_context("fork")
    drivers = 6
    start, done = context.Barrier(drivers), context.Barrier(drivers)
    wins = context.Queue()
    procs = [context.Process(target=_race, args=(str(results), start, done, wins))
             for _ in range(drivers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    winners = []
    while not wins.empty():
        winners.append(wins.get())
    assert len(winners) == 1, winners
    assert on_disk(results)["pid"] == winners[0]


def test_without_a_lock_the_written_lease_is_read_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Object stores and NFS without a lock manager: write, settle, read back; one winner."""
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(lease_module, "SETTLE_S", 0.5)
    results = tmp_path / "r"
    held_by(results, renewed_at=ago(EXPIRES_AFTER_S * 3))
    outcomes: list[str] = []

    def take() -> None:
        try:
            Lease(str(results)).take()
            outcomes.append("won")
        except LeaseHeld:
            outcomes.append("refused")

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 3 + ["won"]


def test_fresh_moves_the_results_with_their_lease_and_takes_a_new_one(tmp_path: Path) -> None:
    from lem_ray.execution.driver.guard import move_aside

    results = tmp_path / "r"
    lease = Lease(str(results))
    lease.take()
    assert move_aside(str(results), lease) is None, "a directory made for the lease is new"
    (results / "campaign.json").write_text("{}")
    moved = Path(move_aside(str(results), lease))
    assert (moved / "campaign.json").exists() and not (moved / LEASE_FILE).exists()
    assert on_disk(results)["token"] == lease.record.token
    with pytest.raises(LeaseHeld):
        Lease(str(results)).take()
