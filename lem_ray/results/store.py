"""Where results live and how they are written: one file per table per attempt, atomically.

The results directory is a local (or NFS) path or a URI pyarrow.fs understands (s3://...,
gs://...). Locally a file is written under a hidden temp name and renamed; an object store
publishes an object only once its upload completes, so it is written in place. Either way a
reader never sees a partial file, and pyarrow.dataset skips hidden names.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lem_ray.results.schema import TABLES

RESULT_TABLES = ("experiments", "requests", "timeseries")


def resolve(results_dir: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) of a results directory given as a path or a URI."""
    text = str(results_dir)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())


def exists(results_dir: str | Path, relative: str = "") -> bool:
    fs, base = resolve(results_dir)
    target = f"{base}/{relative}" if relative else base
    return fs.get_file_info(target).type != pafs.FileType.NotFound


def atomic_write(
    results_dir: str | Path, folder: str, name: str, write: Callable[[str, pafs.FileSystem], None]
) -> str:
    """Call write(path, fs) so that `folder/name` appears whole or not at all."""
    fs, base = resolve(results_dir)
    directory = f"{base}/{folder}"
    fs.create_dir(directory, recursive=True)
    final = f"{directory}/{name}"
    if not isinstance(fs, pafs.LocalFileSystem):
        write(final, fs)
        return final
    temp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        write(temp, fs)
        fs.move(temp, final)
    finally:
        if fs.get_file_info(temp).type != pafs.FileType.NotFound:
            fs.delete_file(temp)
    return final


def write_table(results_dir: str | Path, folder: str, name: str, table: pa.Table) -> str:
    return atomic_write(
        results_dir, folder, name, lambda path, fs: pq.write_table(table, path, filesystem=fs)
    )


def write_rows(
    results_dir: str | Path, table: str, stem: str, rows: list[dict[str, Any]]
) -> str | None:
    if not rows:
        return None
    data = pa.Table.from_pylist(rows, schema=TABLES[table])
    return write_table(results_dir, table, f"{stem}.parquet", data)


def read_table(results_dir: str | Path, table: str) -> pa.Table:
    """Committed files only: a file still being written is hidden and skipped."""
    fs, base = resolve(results_dir)
    schema = TABLES[table]
    folder = f"{base}/{table}"
    if fs.get_file_info(folder).type == pafs.FileType.NotFound:
        return schema.empty_table()
    dataset = ds.dataset(folder, filesystem=fs, format="parquet", schema=schema)
    if not dataset.files:
        return schema.empty_table()
    return dataset.to_table()


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
