"""Compaction: the same rows before and after, no duplicate or gap for a reader at any moment,
interrupted compactions repaired, attempts in progress left alone."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from lem_ray.cli.main import main
from lem_ray.results import compact as compact_module
from lem_ray.results import store
from lem_ray.results.compact import CompactionBusy, compact
from lem_ray.records import RunKey
from lem_ray.results.schema import empty_row
from lem_ray.results.store import read_table, write_rows


def write_attempt(out: Path, exp: str, cycle: int, attempt: int, finished: bool = True) -> None:
    ids = {"campaign_name": "c", "experiment_id": exp, "run_id": f"{exp}-c{cycle}",
           "cycle": cycle, "attempt": attempt}
    stem = RunKey(exp, cycle).stem(attempt)
    write_rows(out, "requests", stem,
               [{**empty_row("requests"), **ids, "request_index": i} for i in range(3)])
    write_rows(out, "timeseries", stem,
               [{**empty_row("timeseries"), **ids, "gpu_uuid": "GPU-0"} for _ in range(2)])
    if finished:
        write_rows(out, "experiments", stem, [{**empty_row("experiments"), **ids,
                                               "status": "ok" if attempt == 2 else "failed"}])


def campaign(out: Path, runs: int) -> None:
    for i in range(runs):
        write_attempt(out, f"{i:012x}", 1, 1)
        if i % 3 == 0:
            write_attempt(out, f"{i:012x}", 1, 2)


def keys(out: Path, table: str) -> Counter:
    rows = read_table(out, table).select(["run_id", "attempt"]).to_pylist()
    return Counter((r["run_id"], r["attempt"]) for r in rows)


def names(out: Path, table: str) -> list[str]:
    return sorted(p.name for p in (out / table).iterdir())


def test_compaction_keeps_every_row_and_leaves_attempts_in_progress(tmp_path: Path) -> None:
    campaign(tmp_path, 12)
    write_attempt(tmp_path, "ffffffffffff", 1, 1, finished=False)
    before = {t: keys(tmp_path, t) for t in store.RESULT_TABLES}
    done = compact(tmp_path)
    assert {t: keys(tmp_path, t) for t in store.RESULT_TABLES} == before
    assert done["experiments"].merged_files == 16 and done["experiments"].rows == 16
    assert done["requests"].merged_files == 16, "the attempt in progress is not merged"
    assert names(tmp_path, "requests")[0].startswith("compacted-")
    assert names(tmp_path, "requests")[1:] == ["ffffffffffff-c1-a1.parquet"]
    assert len(names(tmp_path, "experiments")) == 1
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]
    write_attempt(tmp_path, "ffffffffffff", 1, 1)  # that attempt ends; a second compaction
    compact(tmp_path)
    assert len(names(tmp_path, "requests")) == 2 and keys(tmp_path, "requests")[
        ("ffffffffffff-c1", 1)] == 3


def test_reader_sees_one_copy_between_rename_and_delete(tmp_path: Path, monkeypatch) -> None:
    campaign(tmp_path, 6)
    before = keys(tmp_path, "requests")
    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "requests", kept)
    compact(tmp_path)
    for path in kept.iterdir():  # the per-attempt files back: the moment before the deletes
        shutil.copy(path, tmp_path / "requests" / path.name)
    assert keys(tmp_path, "requests") == before
    again = compact(tmp_path)
    assert again["requests"].removed_leftovers == 8 and again["requests"].merged_files == 0
    assert len(names(tmp_path, "requests")) == 1 and keys(tmp_path, "requests") == before


def test_reader_lists_again_when_a_listed_file_was_deleted(tmp_path: Path, monkeypatch) -> None:
    campaign(tmp_path, 4)
    before = keys(tmp_path, "experiments")
    stale = store.list_parquet(*store.resolve(tmp_path)[:1], f"{tmp_path.absolute()}/experiments")
    compact(tmp_path)
    listings = iter([stale])
    real = store.list_parquet
    monkeypatch.setattr(store, "list_parquet", lambda fs, folder: next(listings, None) or real(fs, folder))
    assert keys(tmp_path, "experiments") == before


def test_concurrent_reader_during_compaction_sees_no_duplicate_and_no_gap(tmp_path: Path) -> None:
    campaign(tmp_path, 60)
    expected = {t: keys(tmp_path, t) for t in store.RESULT_TABLES}
    problems: list[str] = []
    stop = threading.Event()
    reads = Counter()

    def reader() -> None:
        while not stop.is_set():
            for table in store.RESULT_TABLES:
                seen = keys(tmp_path, table)
                reads[table] += 1
                if seen != expected[table]:
                    problems.append(f"{table}: {sum(seen.values())} rows, "
                                    f"{sum(expected[table].values())} expected")

    thread = threading.Thread(target=reader)
    thread.start()
    compact(tmp_path)
    stop.set()
    thread.join()
    assert problems == [] and min(reads.values()) > 0


def test_one_compaction_at_a_time_and_the_cli(tmp_path: Path, monkeypatch) -> None:
    campaign(tmp_path, 3)
    busy = threading.Event()
    release = threading.Event()
    real = compact_module.finished_attempts

    def slow(results_dir):
        busy.set()
        release.wait(10)
        return real(results_dir)

    monkeypatch.setattr(compact_module, "finished_attempts", slow)
    first = threading.Thread(target=compact, args=(tmp_path,))
    first.start()
    busy.wait(10)
    with pytest.raises(CompactionBusy):
        compact(tmp_path)
    refused = CliRunner().invoke(main, ["compact", str(tmp_path)])
    assert refused.exit_code == 2 and "another compaction is running" in refused.output
    release.set()
    first.join()
    assert len(names(tmp_path, "experiments")) == 1
    monkeypatch.setattr(compact_module, "finished_attempts", real)
    result = CliRunner().invoke(main, ["compact", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no experiments table" in result.output
    result = CliRunner().invoke(main, ["compact", str(tmp_path)])
    assert result.exit_code == 0 and "experiments: 0 files merged" in result.output


def test_files_written_before_a_column_rename_keep_their_values(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    campaign(tmp_path, 1)
    old = pa.table({"campaign_name": ["c"], "experiment_id": ["000000000000"],
                    "run_id": ["000000000000-c1"], "cycle": [1], "attempt": [1],
                    "gpu_uuid": ["GPU-0"], "memory_used_mb": [123.0]})
    pq.write_table(old, tmp_path / "timeseries" / "000000000000-c1-a1.parquet")
    compact(tmp_path)
    rows = read_table(tmp_path, "timeseries").to_pylist()
    assert [r["memory_used_mib"] for r in rows if r["attempt"] == 1] == [123.0]
