"""Where results live and how they are written: one file per table per attempt, atomically."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from lem_ray.results.schema import TABLES


def attempt_stem(experiment_id: str, cycle: int, attempt: int) -> str:
    return f"{experiment_id}-c{cycle}-a{attempt}"


def write_rows(results_dir: Path, table: str, stem: str, rows: list[dict[str, Any]]) -> Path | None:
    """Write under a hidden temp name, then rename: readers never see a partial file.

    pyarrow.dataset skips names starting with '.', so the temp file is invisible to it.
    """
    if not rows:
        return None
    schema = TABLES[table]
    folder = results_dir / table
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{stem}.parquet"
    temp = folder / f".{stem}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), temp)
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    return final


def read_table(results_dir: Path, table: str) -> pa.Table:
    folder = Path(results_dir) / table
    schema = TABLES[table]
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return schema.empty_table()
    return ds.dataset(folder, format="parquet", schema=schema).to_table()


def previous_attempts(results_dir: Path) -> tuple[set[tuple[str, int]], dict[tuple[str, int], int]]:
    """(runs already ok, attempts recorded per run), so a rerun skips done work."""
    table = read_table(results_dir, "experiments").select(["experiment_id", "cycle", "status"])
    done: set[tuple[str, int]] = set()
    attempts: dict[tuple[str, int], int] = {}
    for row in table.to_pylist():
        key = (row["experiment_id"], row["cycle"])
        attempts[key] = attempts.get(key, 0) + 1
        if row["status"] == "ok":
            done.add(key)
    return done, attempts
