"""The manifest on disk: a snapshot plus an append-only journal of changes since it.

An update costs one small journal record, whatever the size of the campaign; the snapshot is
rewritten only once the journal has grown as large as the state it would replace, so the bytes
written per update stay flat as a campaign grows (see docs/scale.md).

Layout under `<results_dir>/manifest/`:
- `snapshot.json`: `{"format": 2, "seq": S, "campaign_name": ..., "runs": {...}}`, replaced
  atomically; it holds every change up to sequence number S.
- `journal-<first seq>.jsonl`: one JSON record a line, `{"seq": n, ...}`. On a local or NFS
  path a writer appends to one such segment (fsync before acknowledging) and starts a new one
  when it opens and after each snapshot, so it never appends after a torn line. An object
  store cannot append: each batch of changes becomes one new object of the same name pattern.
- `state.json`: the format before the journal (the whole state, no seq); read when there is no
  snapshot, and removed once a snapshot replaces it.

Recovery reads the snapshot and replays the records with seq > S in order; a torn last line
of a segment (the writer died while appending) was never acknowledged and is ignored.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from lem_ray.results.store import atomic_write, resolve

MANIFEST_DIR = "manifest"
SNAPSHOT_FILE = "snapshot.json"
LEGACY_FILE = "state.json"
JOURNAL_PREFIX = "journal-"
JOURNAL_SUFFIX = ".jsonl"
FORMAT = 2
# Rewrite the snapshot once the journal holds this many records per known run (at least
# MIN_RECORDS_BETWEEN_SNAPSHOTS): the journal then stays about as large as the snapshot.
RECORDS_PER_RUN_BEFORE_SNAPSHOT = 1.0
MIN_RECORDS_BETWEEN_SNAPSHOTS = 1000


class ManifestCorrupt(Exception):
    """A manifest file that is not what lem-ray wrote (edited, or damaged on disk)."""


@dataclass
class ManifestState:
    """The manifest in memory: campaign name, runs by id, last applied sequence number."""

    campaign_name: str | None = None
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The manifest as read by status and report."""
        return {"campaign_name": self.campaign_name, "runs": self.runs}


def apply(state: ManifestState, record: dict[str, Any]) -> None:
    """One journal record: `add` (new run entries), `set` (fields of one run), `campaign`."""
    if "add" in record:
        for key, entry in record["add"].items():
            state.runs.setdefault(key, entry)
    if "set" in record:
        state.runs[record["run"]].update(record["set"])
    if "campaign" in record:
        state.campaign_name = record["campaign"]
    state.seq = record["seq"]


def _journal_names(fs: pafs.FileSystem, directory: str) -> list[tuple[int, str]]:
    """(first seq, path) of every journal segment or object, in seq order."""
    found = []
    for info in fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True)):
        name = info.base_name
        if name.startswith(JOURNAL_PREFIX) and name.endswith(JOURNAL_SUFFIX):
            digits = name[len(JOURNAL_PREFIX):-len(JOURNAL_SUFFIX)]
            if digits.isdigit():
                found.append((int(digits), info.path))
    return sorted(found)


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _records(data: bytes, path: str) -> list[dict[str, Any]]:
    """Complete records of one segment; a torn last line is dropped, a damaged line elsewhere
    is an error (nothing is ever appended after a torn line)."""
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    records = []
    for number, line in enumerate(complete, 1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(complete) and not tail:
                break
            raise ManifestCorrupt(f"{path}: line {number} is not a journal record") from None
        if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
            raise ManifestCorrupt(f"{path}: line {number} is not a journal record")
        records.append(record)
    return records


def read_state(results_dir: str | Path) -> ManifestState:
    """What was acknowledged: the snapshot (or the pre-journal state.json) plus the journal."""
    fs, base = resolve(results_dir)
    directory = f"{base}/{MANIFEST_DIR}"
    state = ManifestState()
    for name in (SNAPSHOT_FILE, LEGACY_FILE):
        path = f"{directory}/{name}"
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            continue
        try:
            data = json.loads(_read_bytes(fs, path))
            state = ManifestState(data["campaign_name"], data["runs"], data.get("seq", 0))
        except (ValueError, KeyError, TypeError):
            raise ManifestCorrupt(f"{path}: not a lem-ray manifest snapshot") from None
        break
    pending: list[dict[str, Any]] = []
    for _, path in _journal_names(fs, directory):
        pending.extend(r for r in _records(_read_bytes(fs, path), path) if r["seq"] > state.seq)
    for record in sorted(pending, key=lambda r: r["seq"]):
        if record["seq"] > state.seq:
            apply(state, record)
    return state


class JournalWriter:
    """Durable, ordered writes of journal records, the snapshot, and journal clean-up."""

    def __init__(self, results_dir: str | Path) -> None:
        self.results_dir = results_dir
        self.fs, base = resolve(results_dir)
        self.directory = f"{base}/{MANIFEST_DIR}"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.fs.create_dir(self.directory, recursive=True)
        self.segment: Any = None
        self.bytes_written = 0

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records: fsynced before returning on a local disk; elsewhere one file each."""
        payload = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        name = f"{self.directory}/{JOURNAL_PREFIX}{records[0]['seq']:012d}{JOURNAL_SUFFIX}"
        if not self.local:
            with self.fs.open_output_stream(name) as stream:
                stream.write(payload)
        else:
            if self.segment is None:
                # A segment of this name can only hold a torn, never acknowledged record.
                self.segment = open(name, "wb")  # noqa: SIM115 - kept open across appends
                self._fsync_directory()
            self.segment.write(payload)
            self.segment.flush()
            os.fsync(self.segment.fileno())
        self.bytes_written += len(payload)

    def snapshot(self, payload: bytes, seq: int) -> None:
        """Replace the snapshot, then drop the journal it covers (and a pre-journal state.json)."""

        def write(path: str, fs: pafs.FileSystem) -> None:
            if self.local:
                with open(path, "wb") as out:
                    out.write(payload)
                    out.flush()
                    os.fsync(out.fileno())
            else:
                with fs.open_output_stream(path) as stream:
                    stream.write(payload)

        atomic_write(self.results_dir, MANIFEST_DIR, SNAPSHOT_FILE, write)
        if self.local:
            self._fsync_directory()
        self.bytes_written += len(payload)
        self.close()
        for first, path in _journal_names(self.fs, self.directory):
            if first <= seq:
                self.fs.delete_file(path)
        legacy = f"{self.directory}/{LEGACY_FILE}"
        if self.fs.get_file_info(legacy).type != pafs.FileType.NotFound:
            self.fs.delete_file(legacy)

    def close(self) -> None:
        """Close the open segment."""
        if self.segment is not None:
            self.segment.close()
            self.segment = None


class ManifestStore:
    """The live manifest of one campaign: changes are applied in memory and made durable
    before `commit` returns. Thread-safe; concurrent commits share one write (group commit),
    which is what keeps an object store, where each write is a whole new object, usable."""

    def __init__(self, results_dir: str | Path) -> None:
        self.state = read_state(results_dir)
        self.writer = JournalWriter(results_dir)
        self.lock = threading.Condition()
        self.pending: list[dict[str, Any]] = []
        self.durable_seq = self.state.seq
        self.writing = False
        self.since_snapshot = 0
        self.broken: BaseException | None = None
        self.updates = 0

    @property
    def bytes_written(self) -> int:
        """Bytes the manifest wrote (journal and snapshots): its write cost."""
        return self.writer.bytes_written

    def commit(self, record: dict[str, Any], weight: int = 1) -> None:
        """Apply record (without its seq) and return once it is durable. weight: how many
        run changes it carries, for the snapshot rule."""
        with self.lock:
            self._check()
            record = {"seq": self.state.seq + 1, **record}
            apply(self.state, record)
            self.pending.append(record)
            self.since_snapshot += weight
            self.updates += 1
            mine = record["seq"]
            while self.durable_seq < mine:
                if self.writing:
                    self.lock.wait()
                    self._check()
                    continue
                self._write_pending()
            if self._snapshot_due():
                self._snapshot_locked()

    def _check(self) -> None:
        if self.broken is not None:
            raise RuntimeError(
                f"the manifest could not be written ({self.broken}); the campaign must restart "
                "from what is on disk") from self.broken

    def _write_pending(self) -> None:
        """Called with the lock held; writes everything pending with the lock released."""
        batch, self.pending = self.pending, []
        with self._lock_released_while_writing():
            self.writer.append(batch)
        self.durable_seq = batch[-1]["seq"]

    @contextmanager
    def _lock_released_while_writing(self) -> Iterator[None]:
        """Other threads may queue records while the disk is written; they wait for this
        write (`writing`) before their own, and a failed write leaves the journal broken."""
        self.writing = True
        self.lock.release()
        try:
            yield
        except BaseException as exc:
            self.broken = exc
            raise
        finally:
            self.lock.acquire()
            self.writing = False
            self.lock.notify_all()

    def _snapshot_due(self) -> bool:
        limit = max(MIN_RECORDS_BETWEEN_SNAPSHOTS,
                    int(RECORDS_PER_RUN_BEFORE_SNAPSHOT * len(self.state.runs)))
        return self.since_snapshot >= limit and not self.writing

    def _snapshot_locked(self) -> None:
        seq = self.state.seq
        payload = json.dumps({"format": FORMAT, "seq": seq, **self.state.as_dict()},
                             separators=(",", ":")).encode()
        with self._lock_released_while_writing():
            self.writer.snapshot(payload, seq)
        self.pending = [r for r in self.pending if r["seq"] > seq]
        self.durable_seq = max(self.durable_seq, seq)
        self.since_snapshot = 0

    def add_runs(self, entries: dict[str, dict[str, Any]]) -> None:
        """Add runs not yet known; known ones are left as they are."""
        new = {k: v for k, v in entries.items() if k not in self.state.runs}
        if new:
            self.commit({"add": new}, weight=len(new))

    def set(self, key: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Set fields of a known run; returns its entry."""
        if key not in self.state.runs:
            raise KeyError(f"unknown run {key!r}")
        self.commit({"run": key, "set": fields})
        return dict(self.state.runs[key])

    def view(self) -> dict[str, Any]:
        """A copy of the state that later commits do not change under the caller."""
        with self.lock:
            return {"campaign_name": self.state.campaign_name,
                    "runs": {k: dict(v) for k, v in self.state.runs.items()}}

    def set_campaign(self, name: str) -> None:
        """Record the campaign's name, if it changed."""
        if self.state.campaign_name != name:
            self.commit({"campaign": name})

    def close(self) -> None:
        """Fold the journal into the snapshot, so the next reader reads one file."""
        with self.lock:
            self._check()
            while self.writing:
                self.lock.wait()
            if self.pending:
                self._write_pending()
            self._snapshot_locked()
            self.writer.close()
