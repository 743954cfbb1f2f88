"""The dataset is the truth: a write that fails fails its run (never ok, never left running),
rows of an attempt that did not end ok are never counted, and an ok run whose rows are gone is
lost, shown, and run again. Real Ray, the driver's real writer threads, real files."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import lem_ray.execution.driver.campaign as driver
import lem_ray.execution.driver.completion as completion
from lem_ray.cli.main import main
from lem_ray.cli.report_cmd import _power_samples
from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.planning.plan import plan_campaign
from lem_ray.records import RunKey
from lem_ray.results.manifest import load_manifest
from lem_ray.results.schema import empty_row
from lem_ray.results.store import write_rows
from tests.conftest import TINY_BASE

DISK_FULL = "could not store the run's rows: OSError: [Errno 28] No space left on device"
ROWS_PER_RUN = TINY_BASE["prompts"]["count"]


def campaign(name: str, batch_sizes: list[int]) -> dict[str, Any]:
    return {"campaign_name": name, "base": TINY_BASE,
            "grid": {"backends": ["pytorch"],
                     "backend_overrides": {"pytorch": {"batch_size": batch_sizes}}},
            "execution": {"cycles": 1}}


def run_ids(data: dict[str, Any]) -> dict[int, str]:
    """batch size -> run_id of cycle 1."""
    return {e.config.backend_options.concurrency: RunKey(e.experiment_id, 1).run_id
            for e in plan_campaign(data).experiments}


def rows(out: Path, table: str) -> list[dict[str, Any]]:
    """Every committed row, orphans included, as a reader of the raw files sees them."""
    folder = out / table
    return ds.dataset(folder, format="parquet").to_table().to_pylist() if folder.is_dir() else []


def full_disk(monkeypatch: pytest.MonkeyPatch, failing: Callable[[str, str], bool]) -> None:
    """Parquet writes of the driver fail as on a full disk where failing(table, file) says:
    the file is begun (a partial temp file, as a disk that fills mid-write leaves) and the
    write raises ENOSPC. Ray's worker processes are not touched; the writer threads are."""
    real = pq.write_table

    def write_table(table: pa.Table, where: str, *args: Any, **kwargs: Any) -> None:
        path = Path(where)
        if failing(path.parent.name, path.name):
            path.write_bytes(b"PAR1 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def cli_json(*args: str, exit_code: int = 0) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_a_full_disk_fails_the_run_and_the_campaign_exits_1(
    local_ray, tmp_path: Path, write_campaign, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batch 2: its experiments rows never fit (neither the ok row nor the failed one); batch
    3: its requests do not fit, its failed row does; batch 1 is unharmed."""
    data = campaign("full", [1, 2, 3])
    ids = run_ids(data)
    full_disk(monkeypatch, lambda table, name: (table == "experiments" and ids[2] in name)
              or (table == "requests" and ids[3] in name))
    out = tmp_path / "r"
    payload = cli_json("campaign", str(write_campaign(data)), "--results-dir", str(out),
                       exit_code=1)
    assert {k: payload["counts"][k] for k in ("ran", "ok", "failed")} == {"ran": 3, "ok": 1,
                                                                          "failed": 2}
    assert sorted((f["run_id"], f["reason"]) for f in payload["failures"]) == sorted(
        [(ids[2], DISK_FULL), (ids[3], DISK_FULL)])

    runs = load_manifest(out)["runs"]
    assert {k: (e["state"], e["error"]) for k, e in runs.items()} == {
        ids[1]: ("ok", None), ids[2]: ("failed", DISK_FULL), ids[3]: ("failed", DISK_FULL)}
    experiments = rows(out, "experiments")
    assert sorted((r["run_id"], r["status"], r["error"]) for r in experiments) == sorted(
        [(ids[1], "ok", None), (ids[3], "failed", DISK_FULL)])
    assert [r["node_id"] for r in experiments if r["status"] == "failed"] != [None]
    requests = rows(out, "requests")
    assert sorted((r["run_id"], r["attempt"]) for r in requests) == sorted(
        [(ids[1], 1)] * ROWS_PER_RUN + [(ids[2], 1)] * ROWS_PER_RUN), \
        "batch 2's requests were written before its experiments row failed: orphans"
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "no partial file left"
    assert cli("status", str(out)).exit_code == 0
    counted = cli_json("report", str(out))
    assert [(g["runs_ok"], g["runs_failed"]) for g in counted["groups"]] == [(1, 0), (0, 1)], \
        "batch 2 has no row: the report does not know it; batch 3 failed"


@pytest.mark.slow
def test_a_misspelt_column_fails_the_run_with_that_error(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug of ours in a row (a key the schema lacks) is refused by the real writer: the run
    fails with that error instead of staying `running` with nothing said."""
    real = completion.ok_rows

    def misspelt(*args: Any, **kwargs: Any) -> Any:
        made = real(*args, **kwargs)
        made.experiment["energy_jj"] = made.experiment["energy_j"]
        return made

    monkeypatch.setattr(completion, "ok_rows", misspelt)
    out = tmp_path / "r"
    data = campaign("misspelt", [1])
    result = run_campaign(data, results_dir=out)
    error = ("could not store the run's rows: ValueError: experiments row 0: unknown columns "
             "['energy_jj'], missing columns []")
    assert (result.counts["ok"], result.counts["failed"]) == (0, 1)
    assert [(f["run_id"], f["reason"]) for f in result.failures] == [(run_ids(data)[1], error)]
    assert [(e["state"], e["error"]) for e in load_manifest(out)["runs"].values()] == [
        ("failed", error)]
    assert [(r["status"], r["error"]) for r in rows(out, "experiments")] == [("failed", error)]
    assert len(rows(out, "requests")) == ROWS_PER_RUN, "written before the experiments row"


def lost_then_rerun(out: Path, data: dict[str, Any], lost: list[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """status shows `lost` runs, report says how many, the next campaign reruns them only."""
    shown = cli_json("status", str(out))
    assert shown["counts"]["lost"] == len(lost) and shown["left"] == sorted(lost)
    assert sorted(r["run_id"] for r in shown["runs"] if r["state"] == "lost") == sorted(lost)
    table = cli("status", str(out))
    assert f"{len(lost)} lost" in table.output and f"{len(lost)} runs lost" in table.output
    report = cli("report", str(out), "--json")
    if report.exit_code == 0:
        assert json.loads(report.stdout)["lost"] == sorted(lost)
        assert f"{len(lost)} runs ended ok but their rows" in cli("report", str(out)).output
    else:
        assert report.exit_code == 2 and f"{len(lost)} runs that ended ok are lost" in report.output
    assert {e["state"] for e in load_manifest(out)["runs"].values()} == {"ok"}, \
        "status and report change nothing"

    monkeypatch.undo()
    rerun = run_campaign(data, results_dir=out)
    planned = len(run_ids(data))
    assert {k: rerun.counts[k] for k in ("ran", "ok", "skipped_done")} == {
        "ran": len(lost), "ok": len(lost), "skipped_done": planned - len(lost)}
    runs = load_manifest(out)["runs"]
    assert {k: (e["state"], e["attempt"]) for k, e in runs.items()} == {
        k: ("ok", 2 if k in lost else 1) for k in runs}
    shown = cli_json("status", str(out))
    assert shown["counts"]["lost"] == 0 and shown["left"] == []
    counted = cli_json("report", str(out))
    assert counted["lost"] == [] and sum(g["runs_ok"] for g in counted["groups"]) == planned


@pytest.mark.slow
def test_a_deleted_ok_file_is_lost_and_rerun(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "r"
    data = campaign("deleted", [1, 2])
    ids = run_ids(data)
    monkeypatch.setattr(driver, "_compact_quietly", lambda results_dir: None)
    run_campaign(data, results_dir=out)
    (out / "experiments" / f"{ids[2]}-a1.parquet").unlink()
    lost_then_rerun(out, data, [ids[2]], monkeypatch)
    assert sorted((r["run_id"], r["attempt"]) for r in rows(out, "experiments")) == sorted(
        [(ids[1], 1), (ids[2], 2)])
    assert sorted((r["run_id"], r["attempt"]) for r in rows(out, "requests")) == sorted(
        [(ids[1], 1), (ids[2], 1), (ids[2], 2)] * ROWS_PER_RUN), \
        "the lost attempt's requests stay on disk; report counts none of them"


@pytest.mark.slow
def test_a_truncated_compacted_file_is_lost_and_rerun(
    local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The campaign compacts its results; the compacted experiments file is then cut in two.
    The rerun's own compaction moves it to quarantine/ and merges the new attempts."""
    out = tmp_path / "r"
    data = campaign("truncated", [1, 2])
    run_campaign(data, results_dir=out)
    [merged] = list((out / "experiments").iterdir())
    assert merged.name.startswith("compacted-")
    merged.write_bytes(merged.read_bytes()[: merged.stat().st_size // 2])
    lost_then_rerun(out, data, sorted(run_ids(data).values()), monkeypatch)
    assert [p.parent.name for p in (out / "quarantine").rglob("*.parquet")] == ["experiments"]
    assert sorted((r["run_id"], r["attempt"]) for r in rows(out, "experiments")) == sorted(
        (run_id, 2) for run_id in run_ids(data).values())


def test_power_samples_only_of_attempts_that_ended_ok(tmp_path: Path) -> None:
    """An attempt whose timeseries were written but whose experiments row says failed (its
    write failed after them) plots nothing, even when named."""
    for attempt, status in ((1, "ok"), (2, "failed")):
        ids = {"campaign_name": "p", "experiment_id": "e1", "run_id": "e1-c1", "cycle": 1,
               "attempt": attempt}
        write_rows(tmp_path, "timeseries", f"e1-c1-a{attempt}",
                   [{**empty_row("timeseries"), **ids, "gpu_uuid": "GPU-0", "t_s": 1.0,
                     "power_w": 100.0}])
        write_rows(tmp_path, "experiments", f"e1-c1-a{attempt}",
                   [{**empty_row("experiments"), **ids, "status": status}])
    runs = [{"run_id": "e1-c1", "attempt": a, "status": s} for a, s in ((1, "ok"), (2, "failed"))]
    assert list(_power_samples(str(tmp_path), runs)) == [("e1-c1", 1)]


def test_a_file_is_on_disk_before_it_is_committed_and_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows' bytes are fsynced under the temp name, and the folder after the rename: once
    write_rows returns (and the manifest may say ok), a power cut keeps the file."""
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real(fd))[1])
    path = write_rows(tmp_path, "experiments", "e1-c1-a1",
                      [{**empty_row("experiments"), "run_id": "e1-c1", "status": "ok"}])
    folder = os.path.realpath(tmp_path / "experiments")
    assert len(synced) == 2 and Path(synced[0]).parent == Path(folder)
    assert Path(synced[0]).name.startswith(".e1-c1-a1.parquet.") and synced[1] == folder
    assert os.path.realpath(path) == f"{folder}/e1-c1-a1.parquet"
