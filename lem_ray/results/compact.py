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
"""

from __future__ import annotations

import fcntl
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lem_ray.results.schema import TABLES, reading_schema, upgrade
from lem_ray.results.store import (
    COMPACTED_PREFIX,
    RESULT_TABLES,
    atomic_write,
    attempt_keys,
    attempt_of,
    list_parquet,
    resolve,
)

LOCK_FILE = "manifest/compact.lock"
ROWS_PER_FILE = 2_000_000
# Rows per row group: small files hold a few rows each, and one row group per input file
# would make the merged file as slow to read as the files it replaces.
BATCH_ROWS = 65_536


@dataclass
class TableCompaction:
    merged_files: int = 0
    written: list[str] = field(default_factory=list)
    rows: int = 0
    removed_leftovers: int = 0


def _covered(fs: pafs.FileSystem, files: list[pafs.FileInfo], schema: pa.Schema) -> set[tuple[str, int]]:
    merged = [i.path for i in files if i.base_name.startswith(COMPACTED_PREFIX)]
    if not merged:
        return set()
    dataset = ds.dataset(merged, filesystem=fs, format="parquet", schema=schema)
    return attempt_keys(dataset.to_table(columns=["run_id", "attempt"]))


def _write_merged(results_dir: str | Path, table: str, inputs: list[str],
                  fs: pafs.FileSystem) -> tuple[list[str], int]:
    """Stream inputs into files of at most ROWS_PER_FILE rows; each appears whole."""
    schema = TABLES[table]
    old_shape = ds.dataset(inputs, filesystem=fs, format="parquet", schema=reading_schema(table))
    batches = (batch for raw in old_shape.to_batches(batch_size=BATCH_ROWS)
               for batch in upgrade(table, pa.Table.from_batches([raw])).to_batches())
    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    state = {"next": next(batches, None), "rows": 0}
    written = []
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
            state["rows"] += rows

        name = f"{COMPACTED_PREFIX}{stamp}-{len(written)}.parquet"
        written.append(atomic_write(results_dir, table, name, write))
    return written, state["rows"]


def compact_table(results_dir: str | Path, table: str,
                  finished: set[tuple[str, int]]) -> TableCompaction:
    """Merge this table's per-attempt files of the attempts in `finished`."""
    fs, base = resolve(results_dir)
    schema = TABLES[table]
    files = list_parquet(fs, f"{base}/{table}")
    covered = _covered(fs, files, schema)
    singles = [(i, attempt_of(i.base_name)) for i in files
               if not i.base_name.startswith(COMPACTED_PREFIX)]
    leftovers = [i.path for i, key in singles if key is not None and key in covered]
    inputs = [i.path for i, key in singles
              if key is not None and key in finished and key not in covered]
    result = TableCompaction(merged_files=len(inputs))
    for path in leftovers:
        fs.delete_file(path)
    result.removed_leftovers = len(leftovers)
    if inputs:
        result.written, result.rows = _write_merged(results_dir, table, inputs, fs)
        for path in inputs:
            fs.delete_file(path)
    return result


def finished_attempts(results_dir: str | Path) -> set[tuple[str, int]]:
    """Attempts whose experiments row is committed: all their files are written."""
    fs, base = resolve(results_dir)
    files = list_parquet(fs, f"{base}/experiments")
    keys = {key for key in (attempt_of(i.base_name) for i in files) if key is not None}
    return keys | _covered(fs, files, TABLES["experiments"])


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


def compact(results_dir: str | Path) -> dict[str, TableCompaction]:
    """Compact every table; the experiments table last, so its files keep marking which
    attempts are finished until the others are done."""
    with _exclusive(results_dir):
        finished = finished_attempts(results_dir)
        order = [t for t in RESULT_TABLES if t != "experiments"] + ["experiments"]
        return {table: compact_table(results_dir, table, finished) for table in order}
