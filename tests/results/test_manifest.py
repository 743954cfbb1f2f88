"""Reconciliation of the manifest with the committed experiments rows: what a new driver (or a
restarted manifest actor) believes about each run after a crash."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lem_ray.errors import ConfigError
from lem_ray.execution.driver.manifest_actor import ManifestActor
from lem_ray.records import RunKey
from lem_ray.results.journal import ManifestCorrupt, ManifestStore, _records
from lem_ray.results.manifest import (
    UNFINISHED,
    load_manifest,
    new_entry,
    reconcile,
    reconciled,
)
from lem_ray.results.schema import empty_row
from lem_ray.results.store import read_table, write_rows


def commit(results_dir: Path, experiment_id: str, cycle: int, attempt: int, status: str,
           error: str | None = None) -> None:
    key = RunKey(experiment_id, cycle)
    row = {"campaign_name": "m", "experiment_id": experiment_id, "run_id": key.run_id,
           "cycle": cycle, "attempt": attempt, "status": status, "error": error}
    write_rows(results_dir, "experiments", key.stem(attempt), [{**empty_row("experiments"), **row}])


def test_committed_ok_row_the_manifest_missed_marks_the_run_ok(tmp_path: Path) -> None:
    """The driver died between writing a run's ok row and telling the manifest."""
    out = tmp_path / "r"
    before = ManifestStore(out)
    before.set_campaign("m")
    before.add_runs(
        {
            "e1-c1": {
                **new_entry("e1", 1),
                "state": "running",
                "attempt": 2,
                "error": "worker died",
            },
            "e1-c2": {**new_entry("e1", 2), "state": "running", "attempt": 1},
            "e2-c1": {**new_entry("e2", 1), "state": "ok", "attempt": 1},
        }
    )
    before.close()
    commit(out, "e1", 1, 1, "failed", "worker died: killed")
    commit(out, "e1", 1, 2, "ok")
    commit(out, "e1", 2, 1, "failed", "worker died: killed")
    commit(out, "e2", 1, 1, "ok")
    commit(out, "e3", 1, 3, "ok")  # a run the manifest has never heard of

    ManifestActor.__ray_actor_class__(str(out), "m").close()  # what a new driver's actor does first
    after = load_manifest(out)["runs"]
    assert (after["e1-c1"]["state"], after["e1-c1"]["attempt"], after["e1-c1"]["error"]) == (
        "ok",
        2,
        None,
    )
    assert (after["e1-c2"]["state"], after["e1-c2"]["attempt"]) == ("running", 1), \
        "a failed row alone decides nothing: the run is still owed an attempt"
    assert (after["e2-c1"]["state"], after["e2-c1"]["attempt"]) == ("ok", 1)
    assert (after["e3-c1"]["state"], after["e3-c1"]["attempt"], after["e3-c1"]["cycle"]) == (
        "ok",
        3,
        1,
    )


def test_reconcile_records_missed_attempts_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "r"
    commit(out, "e1", 1, 3, "failed", "worker died")
    commit(out, "e1", 1, 2, "failed", "worker died")
    commit(out, "e1", 2, 1, "ok")
    runs = {"e1-c1": {**new_entry("e1", 1), "state": "pending", "attempt": 1},
            "e1-c2": {**new_entry("e1", 2), "state": "ok", "attempt": 1}}
    added, changes = reconcile(runs, read_table(out, "experiments"))
    assert added == {} and changes == {"e1-c1": {"attempt": 3}}
    assert reconcile({}, read_table(tmp_path / "empty", "experiments")) == ({}, {})


def test_new_entry_is_owed_its_first_attempt() -> None:
    entry = new_entry("e1", 2)
    assert {k: v for k, v in entry.items() if k != "updated_at"} == {
        "experiment_id": "e1", "cycle": 2, "state": "pending", "attempt": 0, "node_id": None,
        "gpu_ids": [], "error": None}, "the first attempt a driver makes is attempt 1"


def test_journal_lines_damaged_torn_and_after_a_snapshot(tmp_path: Path) -> None:
    """A damaged line followed by good ones is an error, never a silent stop; a damaged last
    line (a torn write that ended on a newline) is dropped; a snapshot beats an older state.json
    left beside it (the driver died while converting)."""
    good = [json.dumps({"seq": n, "run": "e0-c1", "set": {"attempt": n}}).encode() for n in (1, 2)]
    with pytest.raises(ManifestCorrupt, match="line 2"):
        _records(b"\n".join([good[0], b"{garbage", good[1], b""]), "seg")
    assert _records(b"\n".join([good[0], b"{garb", b""]), "seg") == [json.loads(good[0])]
    assert _records(b"\n".join([*good, b'{"seq": 3']), "seg") == [json.loads(g) for g in good]
    for not_a_record in (b'[1, 2]', b'{"run": "e0-c1"}', b'{"seq": "1"}'):
        with pytest.raises(ManifestCorrupt, match="line 1 is not a journal record"):
            _records(not_a_record + b"\n" + good[1] + b"\n", "seg")

    live = ManifestStore(tmp_path)
    live.set_campaign("new")
    live.add_runs({"e0-c1": new_entry("e0", 1)})
    live.set("e0-c1", {"state": "ok"})
    live.close()
    stale = {"campaign_name": "old", "runs": {"e0-c1": new_entry("e0", 1)}}
    (tmp_path / "manifest" / "state.json").write_text(json.dumps(stale))
    assert load_manifest(tmp_path)["campaign_name"] == "new"
    assert load_manifest(tmp_path)["runs"]["e0-c1"]["state"] == "ok"


@pytest.mark.parametrize(("snapshot", "problem"), [
    ({"campaign_name": 7, "runs": {}}, "campaign_name is 7"),
    ({"campaign_name": "c", "runs": []}, "runs is not an object"),
    ({"campaign_name": "c", "runs": {"e0-c1": "ok"}}, "run 'e0-c1' is not an object"),
    ({"campaign_name": "c", "runs": {"e0-c1": {**new_entry("e0", 1), "state": "done"}}},
     "run 'e0-c1': unknown state 'done'"),
])
def test_manifest_of_another_shape_is_refused(tmp_path: Path, snapshot: dict, problem: str) -> None:
    """Read as it is, such a manifest would send a resume wrong or crash it later."""
    (tmp_path / "manifest").mkdir()
    (tmp_path / "manifest" / "snapshot.json").write_text(json.dumps({**snapshot, "seq": 1}))
    with pytest.raises(ConfigError, match=f"not a lem-ray manifest: {re.escape(problem)}"):
        load_manifest(tmp_path)
    assert load_manifest(tmp_path / "none") == {"campaign_name": None, "runs": {}}


def test_an_ok_run_without_its_ok_row_is_lost_and_one_that_has_it_again_is_ok(
    tmp_path: Path,
) -> None:
    """The dataset is the truth both ways: the manifest's ok needs the latest attempt's ok row."""
    out = tmp_path / "r"
    commit(out, "e1", 1, 1, "ok")
    commit(out, "e2", 1, 1, "ok")
    commit(out, "e2", 1, 2, "failed", "RuntimeError: boom")
    commit(out, "e4", 1, 1, "ok")
    commit(out, "e5", 1, 1, "ok")
    runs = {"e1-c1": {**new_entry("e1", 1), "state": "ok", "attempt": 1},
            "e2-c1": {**new_entry("e2", 1), "state": "ok", "attempt": 1},
            "e3-c1": {**new_entry("e3", 1), "state": "ok", "attempt": 2},
            "e4-c1": {**new_entry("e4", 1), "state": "lost", "attempt": 1, "error": "lost: ..."},
            "e5-c1": {**new_entry("e5", 1), "state": "running", "attempt": 2}}
    added, changes = reconcile(runs, read_table(out, "experiments"))
    assert added == {}
    assert {k: {f: v for f, v in c.items() if f != "updated_at"} for k, c in changes.items()} == {
        "e2-c1": {"attempt": 2, "state": "lost",
                  "error": "lost: the ok row of attempt 2 is missing or unreadable in the "
                           "experiments table"},
        "e3-c1": {"state": "lost",
                  "error": "lost: the ok row of attempt 2 is missing or unreadable in the "
                           "experiments table"},
        "e4-c1": {"state": "ok", "error": None},
    }, "e1 keeps its row; e5's rerun (attempt 2) is not undone by attempt 1's ok row"
    commit(out, "e6", 1, 1, "ok")
    shown = reconciled({"campaign_name": "m", "runs": runs}, read_table(out, "experiments"))
    assert {k: e["state"] for k, e in shown.items()} == {
        "e1-c1": "ok", "e2-c1": "lost", "e3-c1": "lost", "e4-c1": "ok", "e5-c1": "running",
        "e6-c1": "ok"}, "what status shows"
    assert runs["e2-c1"]["state"] == "ok", "reconciled changes nothing"


def test_lost_runs_are_recorded_by_the_actor_replayed_and_owed_an_attempt(tmp_path: Path) -> None:
    """The actor records lost runs when it starts, and again when a later driver registers
    with an actor left alive; the journal and the snapshot both read `lost` back."""
    out = tmp_path / "r"
    commit(out, "e1", 1, 1, "ok")
    commit(out, "e1", 2, 1, "ok")
    store = ManifestStore(out)
    store.set_campaign("m")
    store.add_runs({key: {**new_entry("e1", c), "state": "ok", "attempt": 1}
                    for key, c in (("e1-c1", 1), ("e1-c2", 2))})
    store.close()
    (out / "experiments" / "e1-c1-a1.parquet").unlink()
    actor = ManifestActor.__ray_actor_class__(str(out), "m")
    assert load_manifest(out)["runs"]["e1-c1"]["state"] == "lost", "from the journal"
    assert actor.register([RunKey("e1", 1), RunKey("e1", 2)])["e1-c2"]["state"] == "ok"
    (out / "experiments" / "e1-c2-a1.parquet").unlink()
    runs = actor.register([RunKey("e1", 1), RunKey("e1", 2)])
    assert (runs["e1-c2"]["state"], runs["e1-c2"]["attempt"]) == ("lost", 1)
    actor.close()
    after = load_manifest(out)["runs"]
    assert [after[k]["state"] for k in ("e1-c1", "e1-c2")] == ["lost", "lost"], "from the snapshot"
    assert after["e1-c1"]["error"].startswith("lost: the ok row of attempt 1")
    assert "lost" in UNFINISHED
