"""Merge the per-attempt files of finished attempts into a few large files per table.

A 50,000-run campaign leaves 150,000 small Parquet files; reading them costs a file open and a
footer parse each. Compaction folds them into `compacted-<time>-<id>-<n>.parquet` files of at
most ROWS_PER_FILE rows, in three steps per table, each safe to interrupt:

1. write the merged file under a hidden name and rename it into place (an object store
   publishes it whole), so it appears complete or not at all;
2. only then delete the per-attempt files it holds;
3. `store.read_table` takes an attempt found in a compacted file from there only.

Between 1 and 2 an attempt exists twice, and the reader's rule hides the second copy; a reader
that listed a file deleted in 2 lists again. An interrupted compaction leaves per-attempt files
already held by a compacted file: the next compaction deletes them without merging them twice.

An attempt is finished once its experiments row is committed (that row is written last), so
compaction is safe while a campaign runs: it never touches the files of an attempt in progress.
Why this scheme and not a manifest of files: docs/scale.md.

A file the reader skips (truncated, not Parquet, other columns, rows that cannot be read) is
neither merged nor deleted: it is moved to `quarantine/<table>/` with a warning naming it, so
it stops costing every reader a warning and the user can look at it (docs/results.md).
"""

from __future__ import annotations

import fcntl
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lem_ray.results.schema import TABLES, reading_schema, upgrade
from lem_ray.results.store import (
    COMPACTED_PREFIX,
    RESULT_TABLES,
    _first_line,
    _read_files,
    _Shapes,
    atomic_write,
    attempt_keys,
    attempt_of,
    list_parquet,
    readable_files,
    resolve,
)

LOCK_FILE = "manifest/compact.lock"
QUARANTINE = "quarantine"
ROWS_PER_FILE = 2_000_000
# Rows per row group: small files hold a few rows each, and one row group per input file
# would make the merged file as slow to read as the files it replaces.
BATCH_ROWS = 65_536


@dataclass
class TableCompaction:
    """What compacting one table did."""

    merged_files: int = 0
    written: list[str] = field(default_factory=list)
    rows: int = 0
    removed_leftovers: int = 0
    quarantined: list[str] = field(default_factory=list)
    """Where the files the reader skips went, relative to the results directory."""


class CompactionFailed(Exception):
    """An I/O error stopped a compaction. What it deleted, a committed compacted file holds;
    the next compaction goes on from there."""


class _MovedAside(Exception):
    """Inputs whose rows could not be read were quarantined: the table is listed again."""


def warn_quarantined(path: str, moved_to: str, reason: str) -> None:
    """The default: one line per file moved aside, naming it and why."""
    print(f"lem-ray: warning: moved {path} to {moved_to}: {reason}", file=sys.stderr)


def quarantine(fs: pafs.FileSystem, base: str, table: str, path: str) -> str:
    """Move a file to `quarantine/<table>/` under its own name (numbered if that is taken);
    return where it went, relative to the results directory."""
    folder = f"{QUARANTINE}/{table}"
    fs.create_dir(f"{base}/{folder}", recursive=True)
    name = path.rsplit("/", 1)[-1]
    target, number = f"{folder}/{name}", 0
    while fs.get_file_info(f"{base}/{target}").type != pafs.FileType.NotFound:
        number += 1
        target = f"{folder}/{name.removesuffix('.parquet')}.{number}.parquet"
    fs.move(path, f"{base}/{target}")
    return target


def _covered(fs: pafs.FileSystem, files: list[pafs.FileInfo],
             on_unreadable: Callable[[str, str], None]) -> set[tuple[str, int]]:
    """Attempts held by the compacted files among files; one whose ids cannot be read holds
    none, and goes to on_unreadable."""
    keys: set[tuple[str, int]] = set()
    for info in files:
        if not info.base_name.startswith(COMPACTED_PREFIX):
            continue
        try:
            keys |= attempt_keys(pq.read_table(info.path, columns=["run_id", "attempt"],
                                               filesystem=fs))
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            on_unreadable(info.path, f"unreadable ({_first_line(exc)})")
    return keys


def _write_merged(results_dir: str | Path, table: str, inputs: list[str],
                  fs: pafs.FileSystem, result: TableCompaction) -> None:
    """Stream inputs into files of at most ROWS_PER_FILE rows; each appears whole, and is
    counted in result once it has."""
    schema = TABLES[table]
    old_shape = ds.dataset(inputs, filesystem=fs, format="parquet", schema=reading_schema(table))
    batches = (batch for raw in old_shape.to_batches(batch_size=BATCH_ROWS)
               for batch in upgrade(table, pa.Table.from_batches([raw])).to_batches())
    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    state: dict[str, Any] = {"next": next(batches, None), "rows": 0}
    while state["next"] is not None:

        def write(path: str, target_fs: pafs.FileSystem) -> None:
            rows, group = 0, []
            with pq.ParquetWriter(path, schema, filesystem=target_fs) as writer:
                while state["next"] is not None and rows < ROWS_PER_FILE:
                    group.append(state["next"])
                    rows += state["next"].num_rows
                    state["next"] = next(batches, None)
                    if sum(b.num_rows for b in group) >= BATCH_ROWS:
                        writer.write_table(pa.Table.from_batches(group, schema), BATCH_ROWS)
                        group = []
                if group:
                    writer.write_table(pa.Table.from_batches(group, schema), BATCH_ROWS)
            state["rows"] = rows

        name = f"{COMPACTED_PREFIX}{stamp}-{len(result.written)}.parquet"
        result.written.append(atomic_write(results_dir, table, name, write))
        result.rows += state["rows"]


def _compact_listing(results_dir: str | Path, table: str, finished: set[tuple[str, int]],
                     aside: Callable[[str, str], None], result: TableCompaction) -> None:
    """One pass over the table as listed now. A per-attempt file is deleted only once a
    committed compacted file holds its rows."""
    fs, base = resolve(results_dir)
    schema = reading_schema(table)
    files = readable_files(fs, f"{base}/{table}", schema, aside)
    covered = _covered(fs, files, aside)
    singles = [(i, attempt_of(i.base_name)) for i in files
               if not i.base_name.startswith(COMPACTED_PREFIX)]
    leftovers = [i.path for i, key in singles if key is not None and key in covered]
    inputs = [i.path for i, key in singles
              if key is not None and key in finished and key not in covered]
    for path in leftovers:
        fs.delete_file(path)
    result.removed_leftovers += len(leftovers)
    if not inputs:
        return
    try:
        _write_merged(results_dir, table, inputs, fs, result)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError):
        # A file whose footer reads but whose rows do not; the reader's own test finds it.
        damaged: list[tuple[str, str]] = []
        for path in inputs:
            _read_files(fs, [path], _Shapes(schema), lambda bad, why: damaged.append((bad, why)))
        if not damaged:
            raise
        for path, why in damaged:
            aside(path, why)
        raise _MovedAside from None
    result.merged_files += len(inputs)
    for path in inputs:
        fs.delete_file(path)


def compact_table(results_dir: str | Path, table: str, finished: set[tuple[str, int]],
                  on_move: Callable[[str, str, str], None] = warn_quarantined) -> TableCompaction:
    """Merge this table's per-attempt files of the attempts in `finished`, and move the files
    the reader skips to quarantine (on_move(path, moved_to, why) for each): merged they would
    break every reader, deleted they could not be looked at."""
    fs, base = resolve(results_dir)
    result = TableCompaction()

    def aside(path: str, why: str) -> None:
        result.quarantined.append(quarantine(fs, base, table, path))
        on_move(path, result.quarantined[-1], why)

    while True:
        try:
            _compact_listing(results_dir, table, finished, aside, result)
            return result
        except _MovedAside:
            # Listed again: a compacted file committed before the damaged one was met holds
            # its inputs now, and they are leftovers, not merged twice.
            continue


def finished_attempts(results_dir: str | Path) -> set[tuple[str, int]]:
    """Attempts whose experiments row is committed: all their files are written. A compacted
    file that cannot be read counts for none (the experiments table's compaction moves it)."""
    fs, base = resolve(results_dir)
    files = list_parquet(fs, f"{base}/experiments")
    keys = {key for key in (attempt_of(i.base_name) for i in files) if key is not None}
    return keys | _covered(fs, files, lambda path, why: None)


class CompactionBusy(Exception):
    """Another compaction of the same results directory is running."""


@contextmanager
def _exclusive(results_dir: str | Path) -> Iterator[None]:
    """Two compactions at once would merge the same files twice. On a local or NFS path a
    lock file keeps them apart; an object store has no lock, so there only one may be started
    at a time (the end of a campaign, or `lem-ray compact` once the campaign is over)."""
    fs, base = resolve(results_dir)
    if not isinstance(fs, pafs.LocalFileSystem):
        yield
        return
    Path(base, LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{base}/{LOCK_FILE}", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompactionBusy(f"{results_dir}: another compaction is running") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def compact(results_dir: str | Path,
            on_move: Callable[[str, str, str], None] = warn_quarantined
            ) -> dict[str, TableCompaction]:
    """Compact every table; the experiments table last, so its files keep marking which
    attempts are finished until the others are done. An I/O error is CompactionFailed, one
    line."""
    try:
        with _exclusive(results_dir):
            finished = finished_attempts(results_dir)
            order = [t for t in RESULT_TABLES if t != "experiments"] + ["experiments"]
            return {table: compact_table(results_dir, table, finished, on_move)
                    for table in order}
    except (pa.ArrowException, OSError) as exc:
        raise CompactionFailed(f"{results_dir}: compaction stopped: {_first_line(exc)}") from exc
