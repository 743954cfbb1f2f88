"""The journaled manifest: durable before acknowledged, recovery from snapshot + journal,
torn last lines, the pre-journal state.json, and an object store (no appends)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from click.testing import CliRunner
from fsspec.implementations.memory import MemoryFileSystem

from lem_ray.cli.main import main
from lem_ray.results import journal, store
from lem_ray.results.journal import ManifestCorrupt, ManifestStore, read_state
from lem_ray.results.manifest import load_manifest, new_entry
from lem_ray.results.schema import empty_row


def entries(n: int) -> dict[str, dict]:
    return {f"e{i}-c1": new_entry(f"e{i}", 1) for i in range(n)}


def files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "manifest").iterdir())


def test_every_acknowledged_change_is_on_disk_without_close(tmp_path: Path) -> None:
    live = ManifestStore(tmp_path)
    live.set_campaign("c")
    live.add_runs(entries(3))
    live.set("e1-c1", {"state": "running", "attempt": 1})
    live.set("e1-c1", {"state": "ok", "node_id": "n1"})
    seen = load_manifest(tmp_path)
    assert seen["campaign_name"] == "c" and len(seen["runs"]) == 3
    assert seen["runs"]["e1-c1"] | {"updated_at": 0} == new_entry("e1", 1) | {
        "state": "ok", "attempt": 1, "node_id": "n1", "updated_at": 0}
    assert files(tmp_path) == ["journal-000000000001.jsonl"]


def test_close_folds_the_journal_into_one_snapshot(tmp_path: Path) -> None:
    live = ManifestStore(tmp_path)
    live.add_runs(entries(2))
    live.set("e0-c1", {"state": "failed", "error": "boom"})
    live.close()
    assert files(tmp_path) == ["snapshot.json"]
    again = ManifestStore(tmp_path)
    assert again.state.runs["e0-c1"]["error"] == "boom" and again.state.seq == 2
    again.set("e1-c1", {"state": "ok"})
    assert read_state(tmp_path).runs["e1-c1"]["state"] == "ok"


def test_torn_last_line_is_ignored_and_never_appended_to(tmp_path: Path) -> None:
    live = ManifestStore(tmp_path)
    live.add_runs(entries(2))
    live.set("e0-c1", {"state": "running"})
    live.writer.close()
    segment = tmp_path / "manifest" / "journal-000000000001.jsonl"
    with segment.open("ab") as f:
        f.write(b'{"seq":3,"run":"e0-c1","set":{"sta')  # the driver died mid-append
    assert read_state(tmp_path).runs["e0-c1"]["state"] == "running"
    restarted = ManifestStore(tmp_path)
    restarted.set("e0-c1", {"state": "ok"})
    restarted.set("e1-c1", {"state": "ok"})
    state = read_state(tmp_path)
    assert state.seq == 4 and {e["state"] for e in state.runs.values()} == {"ok"}
    assert b"sta\n" not in segment.read_bytes() and b'"sta{' not in segment.read_bytes()


def test_damaged_line_inside_the_journal_is_an_error(tmp_path: Path) -> None:
    live = ManifestStore(tmp_path)
    live.add_runs(entries(1))
    live.set("e0-c1", {"state": "ok"})
    segment = tmp_path / "manifest" / "journal-000000000001.jsonl"
    lines = segment.read_bytes().split(b"\n")
    segment.write_bytes(b"\n".join([b"garbage", *lines[1:]]))
    with pytest.raises(ManifestCorrupt, match="line 1"):
        read_state(tmp_path)


def test_results_written_before_the_journal_still_load_and_convert(tmp_path: Path) -> None:
    old = {"campaign_name": "old", "runs": entries(2)}
    old["runs"]["e0-c1"]["state"] = "ok"
    (tmp_path / "manifest").mkdir()
    (tmp_path / "manifest" / "state.json").write_text(json.dumps(old, indent=1))
    assert load_manifest(tmp_path) == old
    live = ManifestStore(tmp_path)
    live.set("e1-c1", {"state": "ok"})
    assert load_manifest(tmp_path)["runs"]["e1-c1"]["state"] == "ok"
    live.close()
    assert files(tmp_path) == ["snapshot.json"]
    assert {e["state"] for e in load_manifest(tmp_path)["runs"].values()} == {"ok"}


def test_status_reads_both_formats_without_ray(tmp_path: Path) -> None:
    old = {"campaign_name": "old", "runs": entries(2)}
    (tmp_path / "old" / "manifest").mkdir(parents=True)
    (tmp_path / "old" / "manifest" / "state.json").write_text(json.dumps(old))
    live = ManifestStore(tmp_path / "new")
    live.set_campaign("new")
    live.add_runs(entries(2))
    live.set("e0-c1", {"state": "ok"})
    for name, pending in (("old", 2), ("new", 1)):
        result = CliRunner().invoke(main, ["status", str(tmp_path / name), "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["campaign_name"] == name and report["counts"]["pending"] == pending


def test_snapshot_once_journal_is_as_large_as_the_state(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journal, "MIN_RECORDS_BETWEEN_SNAPSHOTS", 10)
    live = ManifestStore(tmp_path)
    live.add_runs(entries(20))  # 20 changes: a snapshot
    assert files(tmp_path) == ["snapshot.json"]
    for i in range(19):
        live.set(f"e{i}-c1", {"state": "ok"})
    assert "snapshot.json" in files(tmp_path) and len(files(tmp_path)) == 2
    live.set("e19-c1", {"state": "ok"})  # the 20th change since: the journal is folded
    assert files(tmp_path) == ["snapshot.json"]
    assert {e["state"] for e in read_state(tmp_path).runs.values()} == {"ok"}


def test_concurrent_commits_share_writes_and_all_are_durable(tmp_path: Path, monkeypatch) -> None:
    live = ManifestStore(tmp_path)
    live.add_runs(entries(16))
    batches: list[int] = []
    append = live.writer.append

    def slow_append(records: list[dict]) -> None:
        batches.append(len(records))
        time.sleep(0.05)
        append(records)

    monkeypatch.setattr(live.writer, "append", slow_append)
    threads = [threading.Thread(target=live.set, args=(f"e{i}-c1", {"state": "ok"}))
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(batches) == 16 and max(batches) > 1
    state = read_state(tmp_path)
    assert state.seq == 17 and {e["state"] for e in state.runs.values()} == {"ok"}


def test_a_failed_write_is_never_acknowledged_and_stops_the_store(
    tmp_path: Path, monkeypatch
) -> None:
    live = ManifestStore(tmp_path)
    live.add_runs(entries(2))

    def full_disk(records: list[dict]) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(live.writer, "append", full_disk)
    with pytest.raises(OSError):
        live.set("e0-c1", {"state": "ok"})
    with pytest.raises(RuntimeError, match="could not be written"):
        live.set("e1-c1", {"state": "ok"})
    assert read_state(tmp_path).runs["e0-c1"]["state"] == "pending"


def test_object_store_gets_one_object_per_batch(tmp_path: Path, monkeypatch) -> None:
    memory = MemoryFileSystem()
    memory.store.clear()
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(memory))
    monkeypatch.setattr(store, "resolve", lambda results_dir: (fs, "/bucket/results"))
    monkeypatch.setattr(journal, "resolve", lambda results_dir: (fs, "/bucket/results"))
    live = ManifestStore("s3://bucket/results")
    assert not live.writer.local
    live.add_runs(entries(2))
    live.set("e0-c1", {"state": "ok"})
    live.set("e1-c1", {"state": "failed"})
    names = sorted(p.rsplit("/", 1)[1] for p in memory.find("/bucket/results/manifest"))
    assert names == [f"journal-{n:012d}.jsonl" for n in (1, 2, 3)]
    assert read_state("s3://bucket/results").runs["e1-c1"]["state"] == "failed"
    live.close()
    names = sorted(p.rsplit("/", 1)[1] for p in memory.find("/bucket/results/manifest"))
    assert names == ["snapshot.json"]
    assert read_state("s3://bucket/results").seq == 3


def test_status_of_a_large_campaign_lists_the_runs_not_ok_first(tmp_path: Path) -> None:
    live = ManifestStore(tmp_path)
    live.set_campaign("big")
    live.add_runs(entries(60))
    for i in range(55):
        live.set(f"e{i}-c1", {"state": "ok", "attempt": 1})
    live.set("e57-c1", {"state": "failed", "error": "boom"})
    ids = [{"campaign_name": "big", "experiment_id": f"e{i}", "run_id": f"e{i}-c1", "cycle": 1,
            "attempt": 1} for i in range(55)]
    store.write_rows(tmp_path, "experiments", "compacted-ok",
                     [{**empty_row("experiments"), **i, "status": "ok"} for i in ids])
    listed = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert "50 of 60 runs listed" in listed.output and "boom" in listed.output
    assert listed.output.count("│ pending ") == 4 and listed.output.count("│ ok ") == 45
    every = CliRunner().invoke(main, ["status", str(tmp_path), "--all"])
    assert "runs listed" not in every.output and every.output.count("│ ok ") == 55
