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
from lem_ray.records import RunKey
from lem_ray.results import compact as compact_module, store
from lem_ray.results.compact import CompactionBusy, compact
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
    monkeypatch.setattr(
        store, "list_parquet", lambda fs, folder: next(listings, None) or real(fs, folder)
    )
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
                try:
                    seen = keys(tmp_path, table)
                except OSError as exc:
                    problems.append(f"{table}: {exc!r}")
                    return
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


def truncate(path: Path) -> None:
    """A copy or a write cut short: the file's first half."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def garble_pages(path: Path) -> None:
    """Damage past the footer: the footer reads, the rows do not."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[4:len(data) - 8 - footer] = b"\xab" * (len(data) - 12 - footer)
    path.write_bytes(bytes(data))


def skipped(out: Path, table: str) -> list[str]:
    seen: list[str] = []
    read_table(out, table, on_skip=lambda path, why: seen.append(path))
    return seen


def test_foreign_files_named_like_attempts_are_moved_aside_not_merged(tmp_path: Path,
                                                                     capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    campaign(tmp_path, 3)
    write_attempt(tmp_path, "00000000000a", 1, 1)
    write_attempt(tmp_path, "00000000000b", 1, 1)
    foreign = tmp_path / "requests" / "00000000000a-c1-a1.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    text = tmp_path / "requests" / "00000000000b-c1-a1.parquet"
    text.write_text("not parquet\n")
    originals = {foreign.name: foreign.read_bytes(), text.name: text.read_bytes()}
    hidden = [tmp_path / "requests" / ".notes.parquet", tmp_path / "requests" / "_meta.parquet"]
    for path in hidden:
        path.write_text("hidden\n")
    capsys.readouterr()
    done = compact(tmp_path)
    assert done["requests"].merged_files == 4 and done["requests"].rows == 12
    assert done["requests"].quarantined == [f"quarantine/requests/{foreign.name}",
                                            f"quarantine/requests/{text.name}"]
    assert done["experiments"].merged_files == 6 and done["experiments"].quarantined == []
    moved = {p.name: p.read_bytes() for p in (tmp_path / "quarantine" / "requests").iterdir()}
    assert moved == originals, "moved whole, under their own names"
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"lem-ray: warning: moved {foreign} to quarantine/requests/{foreign.name}: "
        "not a lem-ray results file (no column 'campaign_name')",
        f"lem-ray: warning: moved {text} to quarantine/requests/{text.name}: not a readable "
        "Parquet file (Parquet magic bytes not found in footer. Either the file is corrupted "
        "or this is not a parquet file.)"]
    assert [p.name for p in hidden if p.exists()] == [".notes.parquet", "_meta.parquet"]
    assert sum(keys(tmp_path, "requests").values()) == 12 and skipped(tmp_path, "requests") == []
    assert sum(keys(tmp_path, "experiments").values()) == 6

    text.write_text("again\n")  # the same name once more: numbered, nothing replaced
    again = compact(tmp_path)
    assert again["requests"].quarantined == ["quarantine/requests/00000000000b-c1-a1.1.parquet"]
    assert (tmp_path / "quarantine" / "requests" / text.name).read_bytes() == originals[text.name]
    report = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert report.exit_code == 0, report.output
    assert "quarantine" not in report.output and "skipped" not in report.output


def test_truncated_attempt_file_is_moved_aside_and_the_rest_merged(tmp_path: Path) -> None:
    campaign(tmp_path, 3)
    damaged = tmp_path / "requests" / "000000000001-c1-a1.parquet"
    truncate(damaged)
    result = CliRunner().invoke(main, ["compact", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"lem-ray: warning: moved {damaged} to quarantine/requests/{damaged.name}: " \
           "not a readable Parquet file (Parquet magic bytes not found" in result.output
    assert "requests: 3 files merged into 1 (9 rows), 1 moved to quarantine/requests/" \
        in result.output
    assert [p.name for p in (tmp_path / "quarantine" / "requests").iterdir()] == [damaged.name]
    assert len(names(tmp_path, "requests")) == 1 and sum(keys(tmp_path, "requests").values()) == 9
    assert sum(keys(tmp_path, "timeseries").values()) == 8
    assert sum(keys(tmp_path, "experiments").values()) == 4


def test_rows_that_cannot_be_read_are_moved_aside_and_nothing_merged_twice(
        tmp_path: Path, monkeypatch) -> None:
    """The footer reads but the rows do not: met while merging the last file, after merged
    files holding the attempts before it are committed (one attempt per merged file here)."""
    monkeypatch.setattr(compact_module, "ROWS_PER_FILE", 3)
    campaign(tmp_path, 12)
    expected = keys(tmp_path, "requests")
    damaged = tmp_path / "requests" / "00000000000b-c1-a1.parquet"
    garble_pages(damaged)
    fs, _ = store.resolve(tmp_path)
    assert len(store.readable_files(fs, str(tmp_path / "requests"),
                                    store.TABLES["requests"])) == 16, "the footer test passes it"
    done = compact(tmp_path)["requests"]
    assert done.quarantined == [f"quarantine/requests/{damaged.name}"]
    assert done.rows == 45 and len(done.written) == 15
    assert done.merged_files + done.removed_leftovers == 15
    assert names(tmp_path, "requests") == sorted(Path(p).name for p in done.written)
    del expected[("00000000000b-c1", 1)]
    assert keys(tmp_path, "requests") == expected and set(expected.values()) == {3}


def test_unreadable_compacted_files_are_moved_aside(tmp_path: Path) -> None:
    campaign(tmp_path, 3)
    compact(tmp_path)
    [experiments] = (tmp_path / "experiments").iterdir()
    [requests] = (tmp_path / "requests").iterdir()
    truncate(experiments)
    garble_pages(requests)
    write_attempt(tmp_path, "000000000003", 1, 2)
    done = compact(tmp_path)
    assert done["experiments"].quarantined == [f"quarantine/experiments/{experiments.name}"]
    assert done["requests"].quarantined == [f"quarantine/requests/{requests.name}"]
    assert done["timeseries"].quarantined == []
    assert [d.merged_files for d in done.values()] == [1, 1, 1]
    assert keys(tmp_path, "requests") == {("000000000003-c1", 2): 3}
    assert keys(tmp_path, "experiments") == {("000000000003-c1", 2): 1}
    assert sum(keys(tmp_path, "timeseries").values()) == 10
    assert sorted(p.name for p in (tmp_path / "quarantine").rglob("*.parquet")) == sorted(
        [experiments.name, requests.name])


def test_compact_errors_are_one_line_and_delete_nothing(tmp_path: Path) -> None:
    campaign(tmp_path, 3)
    truncate(tmp_path / "requests" / "000000000001-c1-a1.parquet")
    (tmp_path / "quarantine").mkdir()
    (tmp_path / "quarantine" / "requests").write_text("a file where the folder goes\n")
    before = {t: names(tmp_path, t) for t in store.RESULT_TABLES}
    result = CliRunner().invoke(main, ["compact", str(tmp_path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"lem-ray: error: {tmp_path}: compaction stopped: ")
    assert {t: names(tmp_path, t) for t in store.RESULT_TABLES} == before
    (tmp_path / "quarantine" / "requests").unlink()
    lock = tmp_path / compact_module.LOCK_FILE
    lock.parent.mkdir(exist_ok=True)
    lock.unlink(missing_ok=True)
    lock.mkdir()
    result = CliRunner().invoke(main, ["compact", str(tmp_path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert f"{tmp_path}: compaction stopped: " in result.output
    assert {t: names(tmp_path, t) for t in store.RESULT_TABLES} == before
    result = CliRunner().invoke(main, ["compact", "nope://bucket/results"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("lem-ray: error: nope://bucket/results: cannot open")


@pytest.mark.slow
def test_a_campaign_whose_runs_succeed_never_fails_on_its_closing_compaction(
        local_ray, tmp_path: Path, caplog, capsys) -> None:
    """Damaged files met at the end of a campaign are moved aside; an I/O error of the
    compaction is a warning, the campaign's result stands and nothing is deleted."""
    from lem_ray.execution.driver.campaign import run_campaign
    from tests.conftest import TINY_BASE

    out = tmp_path / "results"
    write_attempt(out, "ffffffffffff", 1, 1)  # a copy cut short, named like a finished attempt
    for table in ("experiments", "requests"):
        truncate(out / table / "ffffffffffff-c1-a1.parquet")
    (out / "quarantine").mkdir()
    (out / "quarantine" / "requests").write_text("a file where the folder goes\n")
    spec = {"campaign_name": "closing", "base": TINY_BASE,
            "experiments": [{"backend": "pytorch"}], "execution": {"cycles": 2}}
    result = run_campaign(spec, results_dir=out)
    assert result.counts == {"planned": 2, "skipped_done": 0, "ran": 2, "failed": 0, "ok": 2,
                             "retried": 0}
    [warning] = [r.getMessage() for r in caplog.records if "closing compaction" in r.getMessage()]
    assert warning.startswith(f"lem-ray: warning: the closing compaction failed ({out}: "
                              "compaction stopped: ")
    assert warning.endswith(f"`lem-ray compact {out}` tries again")
    assert len(names(out, "experiments")) == 3 and len(names(out, "requests")) == 3, \
        "nothing merged, nothing deleted"

    (out / "quarantine" / "requests").unlink()
    capsys.readouterr()
    result = run_campaign({**spec, "execution": {"cycles": 3}}, results_dir=out)
    assert result.counts["ran"] == 1 and result.counts["ok"] == 1
    moved = [line for line in capsys.readouterr().err.splitlines() if " moved " in line]
    assert moved == [f"lem-ray: warning: moved {out / t / 'ffffffffffff-c1-a1.parquet'} to "
                     f"quarantine/{t}/ffffffffffff-c1-a1.parquet: not a readable Parquet file "
                     "(Parquet magic bytes not found in footer. Either the file is corrupted or "
                     "this is not a parquet file.)" for t in ("requests", "experiments")]
    assert sorted(p.relative_to(out / "quarantine").as_posix()
                  for p in (out / "quarantine").rglob("*.parquet")) == [
        "experiments/ffffffffffff-c1-a1.parquet", "requests/ffffffffffff-c1-a1.parquet"]
    assert [n[:10] for n in names(out, "experiments")] == ["compacted-"]
    assert skipped(out, "experiments") == [] and skipped(out, "requests") == []
    rows = read_table(out, "experiments").to_pylist()
    assert sorted((r["campaign_name"], r["cycle"], r["status"]) for r in rows) == [
        ("closing", 1, "ok"), ("closing", 2, "ok"), ("closing", 3, "ok")]
    assert sum(keys(out, "requests").values()) == 3 * TINY_BASE["prompts"]["count"]
