"""Where results live and how they are written: one file per table per attempt, atomically.

The results directory is a local (or NFS) path or a URI pyarrow.fs understands (s3://...,
gs://...). Locally a file is written under a hidden temp name and renamed; an object store
publishes an object only once its upload completes, so it is written in place. Either way a
reader never sees a partial file, and pyarrow.dataset skips hidden names.

`lem-ray compact` later merges the per-attempt files of finished attempts into a few
`compacted-*.parquet` files (results/compact.py). For a moment both copies of an attempt
exist; `read_table` takes each (run_id, attempt) from the compacted file only, and reads again
if a file it listed was deleted meanwhile, so its readers see no duplicate and no gap.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lem_ray.errors import ConfigError
from lem_ray.records import RunKey
from lem_ray.results.schema import ID_FIELDS, RENAMED, TABLES, reading_schema, upgrade

RESULT_TABLES = ("experiments", "requests", "timeseries")
COMPACTED_PREFIX = "compacted-"
# A reader that lists files while `compact` deletes some lists again; each retry sees a newer
# state, and compact deletes only what a compacted file already holds. It backs off, so a
# deletion still under way (60 files on a loaded host) is over before the next listing.
READ_RETRY_S = 30.0
ID_NAMES = tuple(name for name, _ in ID_FIELDS)
# Small files are read this many at a time and their rows made contiguous: a table of 50,000
# one-row chunks costs per chunk and per column, and took 15 GB to read before compaction.
FILES_PER_READ = 1000
# Files opened at once: pyarrow parses a footer and reads without the GIL, and on an object
# store each open waits for a round trip, so more threads than cores still pay.
READ_THREADS = min(32, (os.cpu_count() or 1) + 4)


def attempt_of(file_name: str) -> tuple[str, int] | None:
    """(run_id, attempt) of a per-attempt file's name (RunKey.stem + .parquet); None for any
    other file."""
    stem, suffix = os.path.splitext(file_name)
    if suffix != ".parquet":
        return None
    try:
        key, attempt = RunKey.parse_stem(stem)
    except ValueError:
        return None
    return key.run_id, attempt


def resolve(results_dir: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) of a results directory given as a path or a URI."""
    text = str(results_dir)
    if "://" in text:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ConfigError(f"cannot open this location: {_first_line(exc)} (local paths, "
                              "file://, s3://, gs://, hdfs:// are understood)", file=text) from None
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())


def exists(results_dir: str | Path, relative: str = "") -> bool:
    """Whether the path (local, or a remote URI) exists under the results directory."""
    fs, base = resolve(results_dir)
    target = f"{base}/{relative}" if relative else base
    return fs.get_file_info(target).type != pafs.FileType.NotFound


def atomic_write(
    results_dir: str | Path, folder: str, name: str, write: Callable[[str, pafs.FileSystem], None]
) -> str:
    """Call write(path, fs) so that `folder/name` (folder "" : the top) appears whole or not
    at all, and is on disk when this returns (the manifest may then say so)."""
    fs, base = resolve(results_dir)
    directory = f"{base}/{folder}" if folder else base
    fs.create_dir(directory, recursive=True)
    final = f"{directory}/{name}"
    if not isinstance(fs, pafs.LocalFileSystem):
        write(final, fs)
        return final
    temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        write(temp, fs)
        _fsync(temp)
        fs.move(temp, final)
        _fsync(directory)
    finally:
        if fs.get_file_info(temp).type != pafs.FileType.NotFound:
            fs.delete_file(temp)
    return final


def _fsync(path: str) -> None:
    """A file's bytes, or a directory's entries (a rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_table(results_dir: str | Path, folder: str, name: str, table: pa.Table) -> str:
    """Write a Parquet file atomically; returns its path."""
    return atomic_write(
        results_dir, folder, name, lambda path, fs: pq.write_table(table, path, filesystem=fs)
    )


def write_rows(
    results_dir: str | Path, table: str, stem: str, rows: list[dict[str, Any]]
) -> str | None:
    """Write rows as table's Parquet file, refusing unknown columns; None if no rows."""
    if not rows:
        return None
    schema = TABLES[table]
    check_columns(table, rows, schema.names)
    data = pa.Table.from_pylist(rows, schema=schema)
    return write_table(results_dir, table, f"{stem}.parquet", data)


def list_parquet(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    """Committed Parquet files of a table folder: hidden (temp) names are not committed."""
    return sorted(
        (i for i in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
         if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
         and not i.base_name.startswith((".", "_"))),
        key=lambda i: i.base_name,
    )


def attempt_keys(table: pa.Table) -> set[tuple[str, int]]:
    """The (run_id, attempt) pairs a table holds."""
    return set(zip(table["run_id"].to_pylist(), table["attempt"].to_pylist()))


def warn_skipped(path: str, reason: str) -> None:
    """The default for readers: one line per file left out, and go on."""
    print(f"lem-ray: warning: skipped {path}: {reason}", file=sys.stderr)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _castable(found: pa.DataType, expected: pa.DataType) -> bool:
    return found == expected or pa.types.is_null(found) or (
        pa.types.is_integer(found) and pa.types.is_integer(expected))


class _Shapes:
    """Verdicts on the file schemas met in one listing. Files of one writer share a schema, so
    each distinct schema is judged once, and a file costs one comparison (not one per column).
    Reading threads share it; two that meet a new schema at once both judge it, harmlessly."""

    def __init__(self, schema: pa.Schema, names: list[str] | None = None) -> None:
        self.schema = schema
        self.names = schema.names if names is None else names
        self.target = pa.schema([schema.field(name) for name in self.names])
        self.seen: list[tuple[pa.Schema, str | None, list[str]]] = []

    def judge(self, found: pa.Schema) -> tuple[str | None, list[str]]:
        """(why a file of this schema is not one of ours or None, which of names it holds)."""
        for schema, problem, present in self.seen:
            if found.equals(schema):
                return problem, present
        holds = set(found.names)
        verdict = (found, _schema_problem(found, self.schema),
                   [name for name in self.names if name in holds])
        self.seen.append(verdict)
        return verdict[1], verdict[2]


def _schema_problem(found: pa.Schema, schema: pa.Schema) -> str | None:
    expected = {field.name: field.type for field in schema}
    missing = [name for name in ID_NAMES if name in expected and name not in found.names]
    if missing:
        return f"not a lem-ray results file (no column {missing[0]!r})"
    for column in found:
        if column.name in expected and not _castable(column.type, expected[column.name]):
            return f"column {column.name!r} is {column.type}, expected {expected[column.name]}"
    return None


def _file_problem(fs: pafs.FileSystem, path: str, shapes: _Shapes) -> str | None:
    """Why a Parquet file is not one of ours (truncated, another file, other columns), or None.
    A file deleted meanwhile (by compact) raises FileNotFoundError: the reader lists again."""
    try:
        with fs.open_input_file(path) as f:
            found = pq.ParquetFile(f).schema_arrow
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        return f"not a readable Parquet file ({_first_line(exc)})"
    return shapes.judge(found)[0]


def readable_files(fs: pafs.FileSystem, folder: str, schema: pa.Schema,
                   on_skip: Callable[[str, str], None] = warn_skipped) -> list[pafs.FileInfo]:
    """Committed Parquet files that can be read as this table; the others are reported through
    on_skip and left where they are (a reader never changes a directory a campaign may be
    writing)."""
    good, shapes = [], _Shapes(schema)
    for info in list_parquet(fs, folder):
        problem = _file_problem(fs, info.path, shapes)
        if problem:
            on_skip(info.path, problem)
        else:
            good.append(info)
    return good


def _read_file(fs: pafs.FileSystem, path: str, shapes: _Shapes,
               big: bool) -> pa.Table | str:
    """The file's columns among shapes.names, its footer read once for the check and the read;
    or why it cannot be read as this table. FileNotFoundError: deleted meanwhile. A big file
    (compacted) is read column by column in parallel; a small one faster on this thread."""
    with fs.open_input_file(path) as f:
        try:
            parquet = pq.ParquetFile(f)
            problem, present = shapes.judge(parquet.schema_arrow)
        except (pa.ArrowException, OSError) as exc:
            return f"not a readable Parquet file ({_first_line(exc)})"
        if problem:
            return problem
        try:
            return parquet.read(columns=present, use_threads=big)
        except (pa.ArrowException, OSError) as exc:
            return f"unreadable ({_first_line(exc)})"


def _conform(data: pa.Table, target: pa.Schema) -> pa.Table:
    """Rows of one file shape in the table's shape: absent columns null, narrower types cast."""
    if data.schema.equals(target):
        return data
    have = set(data.column_names)
    return pa.table([data[f.name].cast(f.type) if f.name in have else pa.nulls(len(data), f.type)
                     for f in target], schema=target)


def _read_files(fs: pafs.FileSystem, paths: list[str], shapes: _Shapes,
                on_skip: Callable[[str, str], None], big: bool = False) -> pa.Table:
    """The readable files of paths as one table; the others go to on_skip."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        read = list(pool.map(lambda path: _read_file(fs, path, shapes, big), paths))
    by_shape: list[list[pa.Table]] = []
    for path, data in zip(paths, read):
        if isinstance(data, str):
            on_skip(path, data)
            continue
        same = next((g for g in by_shape if g[0].schema.equals(data.schema)), None)
        if same is None:
            by_shape.append([data])
        else:
            same.append(data)
    parts = [_conform(pa.concat_tables(group), shapes.target) for group in by_shape]
    return pa.concat_tables(parts) if parts else shapes.target.empty_table()


def _projection(table: str, columns: list[str] | None) -> list[str] | None:
    """What to read for `columns`: them, their old names, and what tells attempts apart."""
    if columns is None:
        return None
    old = [o for o, n in RENAMED[table].items() if n in columns]
    return list(dict.fromkeys([*columns, *old, "run_id", "attempt"]))


def _read_once(fs: pafs.FileSystem, folder: str, table: str,
               on_skip: Callable[[str, str], None], columns: list[str] | None) -> pa.Table:
    shapes = _Shapes(reading_schema(table), _projection(table, columns))
    files = list_parquet(fs, folder)
    merged = [i.path for i in files if i.base_name.startswith(COMPACTED_PREFIX)]
    parts, covered = [], set()
    if merged:
        parts.append(_read_files(fs, merged, shapes, on_skip, big=True))
        covered = attempt_keys(parts[0])
    singles = [i.path for i in files if not i.base_name.startswith(COMPACTED_PREFIX)
               and attempt_of(i.base_name) not in covered]
    for start in range(0, len(singles), FILES_PER_READ):
        group = singles[start:start + FILES_PER_READ]
        parts.append(_read_files(fs, group, shapes, on_skip).combine_chunks())
    found = upgrade(table, pa.concat_tables(parts)) if parts else TABLES[table].empty_table()
    return found if columns is None else found.select(columns)


def check_columns(table: str, rows: list[dict[str, Any]], names: list[str]) -> None:
    """Every row has exactly the table's columns: a misspelt or forgotten key is a bug of
    ours, refused here rather than written as a silent null column."""
    expected = set(names)
    for index, row in enumerate(rows):
        unknown, missing = sorted(row.keys() - expected), sorted(expected - row.keys())
        if unknown or missing:
            raise ValueError(
                f"{table} row {index}: unknown columns {unknown}, missing columns {missing}"
            )


def read_table(results_dir: str | Path, table: str,
               on_skip: Callable[[str, str], None] = warn_skipped,
               columns: list[str] | None = None) -> pa.Table:
    """Committed files only, each attempt once: a file still being written is hidden and
    skipped, an attempt both compacted and not yet deleted is taken from one file, and a file
    that cannot be read as this table is reported through on_skip and skipped. `columns`
    reads only those (in that order): `status` needs four of the experiments' 130."""
    fs, base = resolve(results_dir)
    deadline, pause_s = time.monotonic() + READ_RETRY_S, 0.01
    while True:
        try:
            return _read_once(fs, f"{base}/{table}", table, on_skip, columns)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause_s)
            pause_s = min(1.0, pause_s * 2)


def open_dataset(results_dir: str | Path, table: str,
                 on_skip: Callable[[str, str], None] = warn_skipped) -> ds.Dataset | None:
    """The table's readable committed files as one dataset (for filtered reads), or None."""
    fs, base = resolve(results_dir)
    files = readable_files(fs, f"{base}/{table}", TABLES[table], on_skip)
    if not files:
        return None
    return ds.dataset([i.path for i in files], filesystem=fs, format="parquet",
                      schema=TABLES[table])


def remove_stale_temp_files(results_dir: str | Path) -> int:
    """Temp files a killed driver left behind; only a campaign's own driver may call this."""
    fs, base = resolve(results_dir)
    removed = 0
    for folder in (*RESULT_TABLES, "manifest"):
        path = f"{base}/{folder}"
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            continue
        for info in fs.get_file_info(pafs.FileSelector(path)):
            if info.base_name.startswith(".") and info.base_name.endswith(".tmp"):
                fs.delete_file(info.path)
                removed += 1
    return removed
