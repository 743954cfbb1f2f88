"""One driver per results directory: an exclusive lease, `<results_dir>/lease.json`.

Two drivers on one directory both run every run and overwrite each other's rows. A driver
takes the lease before Ray starts and renews it while it lives; another driver is refused,
naming the holder. A lease is taken over once it has expired (its driver stopped renewing it:
killed, its host gone), or at once when it names this machine and a process that is no longer
alive here (kill -9, then the same command again).

How it is atomic: on a local or NFS path the lease is created whole with link(2), which
fails if the name exists (the O_CREAT|O_EXCL of a file with content), and every
check-then-write (create, takeover, renewal, release) holds an exclusive flock on
`lease.lock`, so of two drivers taking over one expired lease exactly one wins. pyarrow's
object stores (s3://, gs://) offer no conditional write, nor does a file system whose flock
fails (NFS without a lock manager): there the lease is written, read back after SETTLE_S, and
held only if it still carries this driver's token. Of two drivers that each read, then write,
within SETTLE_S, the later write wins and the other reads the winner back and is refused; a
driver stalled longer between its read and its write can still replace a lease just taken, and
then the next renewal of the driver that lost finds another token and stops it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import pyarrow.fs as pafs

from lem_ray.errors import ConfigError
from lem_ray.results.store import resolve

LEASE_FILE = "lease.json"
LOCK_FILE = "lease.lock"
"""Stays after the driver: deleting a file others may hold locked would let two lock it."""
RENEW_EVERY_S = 10.0
EXPIRES_AFTER_S = 60.0
"""A lease not renewed for this long is taken over: its driver is gone, or cut off."""
GIVE_UP_AFTER_S = EXPIRES_AFTER_S - RENEW_EVERY_S
"""A driver that could not renew for this long stops before anyone may take its lease over."""
SETTLE_S = 2.0
"""Without a lock: how long a written lease must stay ours before it counts as taken."""
PID_START_TOLERANCE_S = 1.0
"""A live process with the lease's pid is its driver only if it started at the same time."""


class LeaseHeld(ConfigError):
    """Another driver holds the results directory."""


class LeaseLost(Exception):
    """This driver's lease was taken over (it could not renew it in time); it must stop."""


@dataclass(frozen=True)
class LeaseRecord:
    """What the lease file says: which process holds the results directory, since when."""

    host: str
    pid: int
    pid_started_s: float
    machine: str
    """hostname, boot and pid namespace: equal only where this pid names the same process."""
    token: str
    since: str
    renewed_at: str

    def renewed_s(self) -> float:
        """When the holder last renewed, in epoch seconds."""
        return datetime.fromisoformat(self.renewed_at).timestamp()

    def holder(self) -> str:
        """The holder as the refusal names it."""
        since = datetime.fromisoformat(self.since).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"host {self.host}, pid {self.pid}, since {since}"


def _record(data: Any) -> LeaseRecord:
    """A lease file's record; TypeError or ValueError if it is not one."""
    record = LeaseRecord(**data)
    texts = (record.host, record.machine, record.token, record.since, record.renewed_at)
    if not all(isinstance(t, str) for t in texts) or isinstance(record.pid, bool) \
            or not isinstance(record.pid, int) \
            or not isinstance(record.pid_started_s, (int, float)):
        raise TypeError("fields of the wrong type")
    datetime.fromisoformat(record.since)
    datetime.fromisoformat(record.renewed_at)
    return record


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def machine_id() -> str:
    """Where a pid means one process: this host, since its boot, in this pid namespace (two
    containers with one hostname have different ones)."""
    boot = _read_text("/proc/sys/kernel/random/boot_id") or ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{boot}/{namespace}"


def driver_alive(record: LeaseRecord) -> bool:
    """False only when the lease's process is certainly gone: same machine, and its pid is
    free, a zombie, or now names a process started at another time (the pid was reused)."""
    if record.machine != machine_id():
        return True
    try:
        process = psutil.Process(record.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(process.create_time() - record.pid_started_s) < PID_START_TOLERANCE_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@dataclass(frozen=True)
class Found:
    """What the lease file holds: a record, or (a damaged file) only when it was written."""

    record: LeaseRecord | None
    written_s: float
    problem: str | None = None


def _expired(found: Found, now_s: float) -> bool:
    written_s = found.record.renewed_s() if found.record else found.written_s
    return now_s - written_s > EXPIRES_AFTER_S


class Lease:
    """This driver's lease on a results directory; `take` it, `keep_renewed`, `release`."""

    def __init__(self, results_dir: str) -> None:
        self.results_dir = results_dir
        self.fs, self.base = resolve(results_dir)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.path = f"{self.base}/{LEASE_FILE}"
        process = psutil.Process()
        now = _utc_now()
        self.record = LeaseRecord(socket.gethostname(), process.pid, process.create_time(),
                                  machine_id(), secrets.token_hex(16), now, now)
        self.lost: str | None = None
        self.renewed_s = time.time()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the file ---------------------------------------------------------------------------

    def _read(self) -> Found | None:
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return None
        written_s = info.mtime.timestamp() if info.mtime else time.time()
        try:
            with self.fs.open_input_stream(self.path) as stream:
                data: Any = json.loads(stream.read().decode())
            return Found(_record(data), written_s)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            return Found(None, written_s, f"{type(exc).__name__}")

    def _payload(self) -> bytes:
        return json.dumps(asdict(self.record), indent=1).encode()

    def _write(self, create: bool) -> None:
        """The lease, whole. create: fail (FileExistsError) if one appeared meanwhile."""
        if not self.local:
            with self.fs.open_output_stream(self.path) as stream:
                stream.write(self._payload())
            return
        temp = f"{self.base}/.{LEASE_FILE}.{secrets.token_hex(6)}.tmp"
        with open(temp, "wb") as out:
            out.write(self._payload())
            out.flush()
            os.fsync(out.fileno())
        try:
            if create:
                os.link(temp, self.path)
            else:
                os.replace(temp, self.path)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)

    @contextmanager
    def _locked(self) -> Iterator[bool]:
        """An exclusive flock on the lock file; yields False where there is none to take."""
        if not self.local:
            yield False
            return
        os.makedirs(self.base, exist_ok=True)
        fd = os.open(f"{self.base}/{LOCK_FILE}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked = True
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                locked = False
            yield locked
        finally:
            os.close(fd)

    # --- taking, renewing, releasing --------------------------------------------------------

    def _refusal(self, found: Found) -> LeaseHeld:
        tail = (f"a lease not renewed for {EXPIRES_AFTER_S:g} s is taken over; wait for that "
                "driver to finish, stop it, or choose another results directory")
        if found.record is None:
            written = datetime.fromtimestamp(found.written_s, timezone.utc)
            return LeaseHeld(f"{LEASE_FILE} cannot be read ({found.problem}), last written "
                             f"{written:%Y-%m-%d %H:%M:%S} UTC; {tail}", file=self.results_dir)
        ago_s = max(0.0, time.time() - found.record.renewed_s())
        return LeaseHeld(f"another lem-ray driver is running here ({found.record.holder()}, "
                         f"renewed {ago_s:.0f} s ago); {tail}", file=self.results_dir)

    def _free(self, found: Found | None) -> bool:
        if found is None or _expired(found, time.time()):
            return True
        return found.record is not None and not driver_alive(found.record)

    def take(self) -> None:
        """Refused (LeaseHeld, one line naming the holder) while another driver holds it."""
        try:
            self._take()
        except OSError as exc:
            raise ConfigError(f"cannot take the lease {LEASE_FILE}: {exc.strerror or exc}",
                              file=self.results_dir) from None

    def _take(self) -> None:
        self.fs.create_dir(self.base, recursive=True)
        with self._locked() as locked:
            found = self._read()
            if found is not None and not self._free(found):
                raise self._refusal(found)
            if locked:
                try:
                    self._write(create=found is None)
                except FileExistsError:
                    raise self._refusal(
                        self._read() or Found(None, time.time(), "vanished")
                    ) from None
                self.renewed_s = time.time()
                return
            self._write(create=False)
        time.sleep(SETTLE_S)
        back = self._read()
        if back is None or back.record is None or back.record.token != self.record.token:
            raise self._refusal(back or Found(None, time.time(), "deleted meanwhile"))
        self.renewed_s = time.time()

    def _mine(self, found: Found | None) -> bool:
        return found is not None and found.record is not None \
            and found.record.token == self.record.token

    def renew(self) -> None:
        """Raises LeaseLost when the lease is no longer this driver's."""
        with self._guard, self._locked():
            found = self._read()
            if not self._mine(found):
                holder = found.record.holder() if found and found.record else "nobody"
                raise LeaseLost(f"{self.path} was taken over ({holder}) while this driver could "
                                "not renew it")
            self.record = LeaseRecord(**{**asdict(self.record), "renewed_at": _utc_now()})
            self._write(create=False)
            self.renewed_s = time.time()

    def release(self) -> None:
        """Delete the lease if it is still this driver's; stop renewing it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._guard, self._locked():
            if self._mine(self._read()):
                self.fs.delete_file(self.path)

    def move_with_directory(self, moved_to: str) -> None:
        """`--fresh` moved the directory (this lease in it) to moved_to: drop the lease there,
        take a new one here, where the new results go."""
        old = Lease(moved_to)
        old.record = self.record
        old.release()
        self.take()

    def keep_renewed(self, on_lost: Callable[[str], None]) -> None:
        """Renew every RENEW_EVERY_S in a thread; on_lost(reason) once, if the lease is taken
        over or cannot be renewed for GIVE_UP_AFTER_S."""
        self._thread = threading.Thread(target=self._renew_loop, args=(on_lost,),
                                        name="lem-ray-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self, on_lost: Callable[[str], None]) -> None:
        while not self._stop.wait(RENEW_EVERY_S):
            try:
                self.renew()
                continue
            except LeaseLost as exc:
                self.lost = str(exc)
            except OSError as exc:
                if time.time() - self.renewed_s < GIVE_UP_AFTER_S:
                    continue
                self.lost = (f"{self.path} could not be renewed for {GIVE_UP_AFTER_S:g} s "
                             f"({exc.strerror or exc}); another driver may take it over")
            on_lost(self.lost)
            return


def only_lease_there(results_dir: str) -> bool:
    """The directory holds nothing but a lease (it was created to hold it)."""
    fs, base = resolve(results_dir)
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))}
    return names <= {LEASE_FILE, LOCK_FILE}
