"""The results store alone: a file appears whole or not at all, hidden names are never read,
each attempt is read once, and damaged or foreign files are reported and read around."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lem_ray.records import RunKey
from lem_ray.results import store
from lem_ray.results.compact import compact, finished_attempts
from lem_ray.results.gpu_time import PHASES, gpu_seconds, save_ledger
from lem_ray.results.schema import empty_row
from lem_ray.results.store import (
    atomic_write,
    attempt_of,
    list_parquet,
    open_dataset,
    read_table,
    remove_stale_temp_files,
    resolve,
    write_rows,
    write_table,
)

TABLES = ("experiments", "requests", "timeseries")


def ids(experiment: str, cycle: int = 1, attempt: int = 1) -> dict:
    return {"campaign_name": "c", "experiment_id": experiment, "run_id": f"{experiment}-c{cycle}",
            "cycle": cycle, "attempt": attempt}


def write_attempt(out: Path, experiment: str, cycle: int = 1, attempt: int = 1) -> str:
    """One row in each table; the stem of its files."""
    stem = RunKey(experiment, cycle).stem(attempt)
    for table in TABLES:
        row = {**empty_row(table), **ids(experiment, cycle, attempt)}
        if table == "experiments":
            row["status"] = "ok"
        write_rows(out, table, stem, [row])
    return stem


def run_ids(table: pa.Table) -> list[str]:
    return sorted(table["run_id"].to_pylist())


def boom(path: str, fs) -> None:
    """Half a file, then the disk fills."""
    with fs.open_output_stream(path) as stream:
        stream.write(b"PAR1 half a file")
    raise OSError(28, "No space left on device")


def test_a_failing_write_leaves_neither_temp_nor_final(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path, "experiments", "x-c1-a1.parquet", boom)
    assert list((tmp_path / "experiments").iterdir()) == []

    def refuse(path: str, fs) -> None:
        raise ValueError("nothing written")

    with pytest.raises(ValueError):
        atomic_write(tmp_path, "", "campaign.json", refuse)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments"]


def test_a_failing_rewrite_keeps_the_previous_file_whole(tmp_path: Path) -> None:
    first = write_table(tmp_path, "summary", "summary.parquet", pa.table({"a": [1, 2]}))
    with pytest.raises(OSError):
        atomic_write(tmp_path, "summary", "summary.parquet", boom)
    assert [p.name for p in (tmp_path / "summary").iterdir()] == ["summary.parquet"]
    assert pq.read_table(first).to_pydict() == {"a": [1, 2]}


def test_a_write_lands_under_its_name_only(tmp_path: Path) -> None:
    path = atomic_write(tmp_path, "", "top.json",
                        lambda p, fs: fs.open_output_stream(p).close())
    assert path == f"{tmp_path}/top.json"
    assert [p.name for p in tmp_path.iterdir()] == ["top.json"]
    nested = write_table(tmp_path / "deep", "a/b", "t.parquet", pa.table({"x": [1]}))
    assert Path(nested) == tmp_path / "deep" / "a" / "b" / "t.parquet"
    assert [p.name for p in Path(nested).parent.iterdir()] == ["t.parquet"]


HIDDEN = (".hidden-c1-a1.parquet", "_hidden-c1-a1.parquet")


def hide_copies(out: Path, stem: str) -> None:
    """Copies of a good attempt's files under hidden names, holding another run's rows."""
    for table in TABLES:
        data = pq.read_table(out / table / f"{stem}.parquet")
        data = data.set_column(data.schema.get_field_index("run_id"), "run_id",
                               pa.array(["hidden-c1"]))
        for name in HIDDEN:
            pq.write_table(data, out / table / name)


def test_hidden_files_are_read_by_no_reader(tmp_path: Path) -> None:
    """A name starting with '.' or '_' is a file being written (or pyarrow's metadata): no
    reader, listing or compaction sees it, whatever the name after the first character."""
    out = tmp_path / "results"
    hide_copies(out, write_attempt(out, "seen"))
    fs, base = resolve(out)
    for table in TABLES:
        assert [i.base_name for i in list_parquet(fs, f"{base}/{table}")] == ["seen-c1-a1.parquet"]
        assert run_ids(read_table(out, table)) == ["seen-c1"]
        assert run_ids(open_dataset(out, table).to_table()) == ["seen-c1"]
    assert finished_attempts(out) == {("seen-c1", 1)}
    done = compact(out)
    assert {t: c.merged_files for t, c in done.items()} == {t: 1 for t in TABLES}
    for table in TABLES:
        left = sorted(p.name for p in (out / table).iterdir())
        assert left[:2] == sorted(HIDDEN) and left[2].startswith("compacted-") and len(left) == 3
        assert run_ids(read_table(out, table)) == ["seen-c1"]


def test_only_hidden_files_read_as_an_empty_table(tmp_path: Path) -> None:
    out = tmp_path / "results"
    stem = write_attempt(out, "seen")
    hide_copies(out, stem)
    for table in TABLES:
        (out / table / f"{stem}.parquet").unlink()
        assert read_table(out, table).num_rows == 0
        assert read_table(out, table).schema == store.TABLES[table]
        assert open_dataset(out, table) is None


def test_hidden_gpu_time_sessions_are_not_counted(tmp_path: Path) -> None:
    session = {
        "gpu_seconds": dict.fromkeys(PHASES, 1.0),
        "total_gpu_s": 4.0,
        "started_s": 0.0,
        "updated_s": 10.0,
    }
    folder = tmp_path / "gpu_time"
    folder.mkdir()
    for name in ("a.json", ".b.json"):
        (folder / name).write_text(json.dumps(session))
    counted = gpu_seconds(tmp_path)
    assert counted is not None and counted["sessions"] == 1 and counted["total_gpu_s"] == 4.0


def test_a_ledger_that_cannot_be_written_is_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gpu_time` a file (or a full disk): the campaign goes on, with one line saying so; the
    dispatcher saves the ledger in a `finally`, where an error would hide the real one."""
    (tmp_path / "gpu_time").write_text("not a folder")
    snapshot = {"session": "s1", "gpu_seconds": dict.fromkeys(PHASES, 0.0)}
    assert save_ledger(tmp_path, snapshot) is False
    err = capsys.readouterr().err
    assert "warning: GPU time not saved to" in err and len(err.strip().splitlines()) == 1
    good = tmp_path / "good"
    assert save_ledger(good, snapshot) is True
    assert json.loads((good / "gpu_time" / "s1.json").read_text())["session"] == "s1"


def test_stale_temp_files_go_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "results"
    stem = write_attempt(out, "kept")
    hide_copies(out, stem)
    for folder in (*TABLES, "manifest"):
        (out / folder).mkdir(exist_ok=True)
        (out / folder / f".{stem}.parquet.0123abcd.tmp").write_bytes(b"half")
    (out / "manifest" / "journal-1.jsonl").write_text("{}\n")
    (out / "summary").mkdir()
    (out / "summary" / ".summary.parquet.ab.tmp").write_bytes(b"not a campaign table")
    assert remove_stale_temp_files(out) == 4
    assert sorted(p.name for p in (out / "experiments").iterdir()) == sorted(
        [*HIDDEN, f"{stem}.parquet"])
    assert [p.name for p in (out / "manifest").iterdir()] == ["journal-1.jsonl"]
    assert [p.name for p in (out / "summary").iterdir()] == [".summary.parquet.ab.tmp"]
    shutil.rmtree(out / "manifest")
    assert remove_stale_temp_files(out) == 0
    shutil.rmtree(out / "experiments")
    (out / "timeseries" / ".late.tmp").write_bytes(b"half")
    assert remove_stale_temp_files(out) == 1, "a missing folder is skipped, not the end"


@pytest.mark.parametrize(("name", "key"), [
    ("0123abcd-c1-a1.parquet", ("0123abcd-c1", 1)),
    ("x-y-c12-a30.parquet", ("x-y-c12", 30)),
    ("compacted-20260101-0.parquet", None),
    ("x-c1-a1.parquet.tmp", None),
    ("x-c1.parquet", None),
    ("x-c01-a1.parquet", None),
])
def test_attempt_of_reads_the_writers_names_only(name: str, key: tuple | None) -> None:
    assert attempt_of(name) == key


def test_an_attempt_compacted_and_not_yet_deleted_is_read_once(tmp_path: Path) -> None:
    out = tmp_path / "results"
    stems = [write_attempt(out, "a"), write_attempt(out, "a", attempt=2), write_attempt(out, "b")]
    keep = {t: (out / t / f"{stems[0]}.parquet").read_bytes() for t in TABLES}
    compact(out)
    for table in TABLES:
        (out / table / f"{stems[0]}.parquet").write_bytes(keep[table])
        rows = read_table(out, table).select(["run_id", "attempt"]).to_pylist()
        assert sorted((r["run_id"], r["attempt"]) for r in rows) == [
            ("a-c1", 1), ("a-c1", 2), ("b-c1", 1)]


def test_a_results_location_is_a_path_or_a_uri(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.fs as pafs

    from lem_ray.errors import ConfigError

    fs, base = resolve(f"file://{tmp_path}/r/")
    assert isinstance(fs, pafs.LocalFileSystem) and base == f"{tmp_path}/r"
    monkeypatch.chdir(tmp_path)
    fs, base = resolve("rel/r")
    assert isinstance(fs, pafs.LocalFileSystem) and base == f"{tmp_path}/rel/r"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve("~/r")[1] == f"{tmp_path}/home/r"
    with pytest.raises(ConfigError, match=r"cannot open this location: .*s3://, gs://"):
        resolve("nope://bucket/r")


def test_an_object_store_write_is_published_whole_in_place(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An object appears only once its upload completes, so no temp name is used there (a
    local subtree stands in for the bucket)."""
    import pyarrow.fs as pafs

    bucket = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    monkeypatch.setattr(store, "resolve", lambda text: (bucket, "results"))
    seen: list[str] = []

    def write(path: str, fs) -> None:
        seen.append(path)
        with fs.open_output_stream(path) as stream:
            stream.write(b"{}")

    assert atomic_write("s3://b/results", "gpu_time", "s.json", write) == "results/gpu_time/s.json"
    assert seen == ["results/gpu_time/s.json"]
    assert (tmp_path / "results" / "gpu_time" / "s.json").read_bytes() == b"{}"


def test_files_that_are_not_this_table_are_reported_and_read_around(tmp_path: Path) -> None:
    out = tmp_path / "results"
    stem = write_attempt(out, "good")
    folder = out / "experiments"
    whole = (folder / f"{stem}.parquet").read_bytes()
    (folder / "truncated.parquet").write_bytes(whole[:100])
    pq.write_table(pa.table({"x": [1]}), folder / "other.parquet")
    pq.write_table(pa.table({"campaign_name": ["c"], "experiment_id": ["e"], "run_id": ["e-c1"],
                             "cycle": ["one"], "attempt": [1]}), folder / "retyped.parquet")
    skipped: list[tuple[str, str]] = []
    table = read_table(
        out, "experiments", on_skip=lambda p, why: skipped.append((Path(p).name, why))
    )
    assert run_ids(table) == ["good-c1"]
    reasons = dict(skipped)
    assert sorted(reasons) == ["other.parquet", "retyped.parquet", "truncated.parquet"]
    assert reasons["other.parquet"] == "not a lem-ray results file (no column 'campaign_name')"
    assert reasons["retyped.parquet"] == "column 'cycle' is string, expected int64"
    assert reasons["truncated.parquet"].startswith("not a readable Parquet file (")
    assert "None" not in reasons["truncated.parquet"] and len(reasons["truncated.parquet"]) > 30


def test_a_file_damaged_past_its_footer_is_left_out_alone(tmp_path: Path) -> None:
    """Its schema reads, its data does not: the others are read file by file without it."""
    out = tmp_path / "results"
    write_attempt(out, "good")
    rows = [{**empty_row("requests"), **ids("bad"), "request_index": i, "ttft_ms": i * 1.5}
            for i in range(2000)]
    path = Path(write_rows(out, "requests", RunKey("bad", 1).stem(1), rows))
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 2000] = bytes(2000)
    path.write_bytes(bytes(data))
    skipped: list[str] = []
    table = read_table(out, "requests", on_skip=lambda p, why: skipped.append(why))
    assert run_ids(table) == ["good-c1"]
    assert len(skipped) == 1 and skipped[0].startswith("unreadable (")


def test_a_row_with_a_missing_or_unknown_column_is_refused(tmp_path: Path) -> None:
    row = {**empty_row("requests"), **ids("x")}
    missing = {k: v for k, v in row.items() if k != "ttft_ms"}
    with pytest.raises(
        ValueError, match=r"requests row 0: unknown columns \[\], missing columns \['ttft_ms'\]"
    ):
        write_rows(tmp_path, "requests", "x-c1-a1", [missing])
    with pytest.raises(ValueError, match=r"unknown columns \['ttft'\], missing columns \[\]"):
        write_rows(tmp_path, "requests", "x-c1-a1", [row, {**row, "ttft": 1.0}])
    assert not (tmp_path / "requests").exists(), "nothing written"
    assert write_rows(tmp_path, "requests", "x-c1-a1", []) is None


def test_a_reader_lists_again_while_files_vanish_then_gives_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file deleted by a compaction between listing and reading: list again, backing off,
    for READ_RETRY_S, then the error."""
    out = tmp_path / "results"
    write_attempt(out, "a")
    real = store._read_once
    calls = []
    pauses: list[float] = []
    monkeypatch.setattr(store.time, "sleep", pauses.append)

    def vanishing(fails: int):
        def read(*args, **kwargs):
            calls.append(1)
            if len(calls) <= fails:
                raise FileNotFoundError("deleted meanwhile")
            return real(*args, **kwargs)
        return read

    monkeypatch.setattr(store, "_read_once", vanishing(8))
    assert run_ids(read_table(out, "experiments")) == ["a-c1"]
    assert len(calls) == 9 and pauses == [0.01 * 2 ** i for i in range(7)] + [1.0]
    calls.clear()
    monkeypatch.setattr(store, "_read_once", vanishing(10**6))
    monkeypatch.setattr(store, "READ_RETRY_S", 0.0)
    with pytest.raises(FileNotFoundError):
        read_table(out, "experiments")
    assert len(calls) == 1


def test_each_file_is_opened_once_and_damaged_ones_among_many_are_skipped_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The footer that is checked is the one read from: one open a file, over several groups
    of FILES_PER_READ, with foreign, truncated and damaged files among the good ones."""
    import fsspec
    import pyarrow.fs as pafs

    out = tmp_path / "results"
    for i in range(9):
        write_attempt(out, f"e{i}")
    folder = out / "requests"
    whole = next(folder.iterdir()).read_bytes()
    (folder / "e3-c9-a1.parquet").write_bytes(whole[:100])
    pq.write_table(pa.table({"x": [1]}), folder / "e5-c9-a1.parquet")
    rows = [{**empty_row("requests"), **ids("bad"), "request_index": i, "ttft_ms": i * 1.5}
            for i in range(2000)]
    damaged = Path(write_rows(out, "requests", RunKey("bad", 1).stem(1), rows))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 3:len(data) // 3 + 2000] = bytes(2000)
    damaged.write_bytes(bytes(data))
    opened: list[str] = []

    class Counting(pafs.FSSpecHandler):
        def open_input_file(self, path: str):  # type: ignore[no-untyped-def]
            opened.append(Path(path).name)
            return super().open_input_file(path)

    counting = pafs.PyFileSystem(Counting(fsspec.filesystem("file")))
    monkeypatch.setattr(store, "resolve", lambda text: (counting, str(Path(text).absolute())))
    monkeypatch.setattr(store, "FILES_PER_READ", 4)
    skipped: list[tuple[str, str]] = []
    table = read_table(out, "requests", on_skip=lambda p, why: skipped.append((Path(p).name, why)))
    assert run_ids(table) == [f"e{i}-c1" for i in range(9)]
    assert sorted(opened) == sorted(p.name for p in folder.iterdir()), "each file opened once"
    reasons = dict(skipped)
    assert len(skipped) == 3 and reasons["bad-c1-a1.parquet"].startswith("unreadable (")
    assert reasons["e3-c9-a1.parquet"].startswith("not a readable Parquet file (")
    assert reasons["e5-c9-a1.parquet"] == "not a lem-ray results file (no column 'campaign_name')"
