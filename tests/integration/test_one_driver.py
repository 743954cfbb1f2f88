"""One driver per results directory, stopped cleanly, on state checked before Ray (issue 22):
two drivers on one directory, a lease held elsewhere, SIGTERM (`ray job stop`) before and
during the runs, and a damaged manifest rebuilt from the dataset. Real CLI processes and
real Ray where the campaign runs (`slow`); the refusals start no Ray."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.records import RunKey
from lem_ray.results.lease import LEASE_FILE, LOCK_FILE
from lem_ray.results.manifest import load_manifest
from lem_ray.results.ownership import Owner, claim
from lem_ray.results.repair import rebuilt_runs
from lem_ray.results.store import read_table
from tests.cli.support import invoke, refused
from tests.conftest import TINY_BASE, ray_env
from tests.fakes.leases import held_by
from tests.faults import running_workers, wait_for

LONG = {**TINY_BASE, "max_output_tokens": 16, "min_output_tokens": 16,
        "prompts": {"source": "synthetic", "count": 300, "input_len": {"mean": 16, "std": 4}}}


def campaign_file(tmp_path: Path, name: str, base: dict[str, Any], batch_sizes: list[int],
                  cycles: int = 1) -> tuple[Path, Path]:
    out = tmp_path / "results"
    data = {"campaign_name": name, "base": base,
            "grid": {"backends": ["pytorch"],
                     "backend_overrides": {"pytorch": {"batch_size": batch_sizes}}},
            "execution": {"cycles": cycles}, "output": {"results_dir": str(out)}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lem_ray.cli", *args]


def ok_rows(out: Path) -> Counter:
    rows = read_table(out, "experiments").to_pylist()
    return Counter((r["experiment_id"], r["cycle"], r["status"], r["attempt"]) for r in rows)


# --- refused before Ray -----------------------------------------------------------------------


def test_a_lease_held_elsewhere_refuses_the_campaign_having_run_nothing(tmp_path: Path) -> None:
    path, out = campaign_file(tmp_path, "held", TINY_BASE, [1])
    held_by(out)
    before = sorted(p.name for p in out.iterdir())
    line = refused(invoke("campaign", str(path), cwd=tmp_path),
                   "another lem-ray driver is running here (host gpu-node-7, pid 4242, since ")
    assert str(out) in line
    assert sorted(p.name for p in out.iterdir()) == sorted({*before, LOCK_FILE})
    assert json.loads((out / LEASE_FILE).read_text())["token"] == "f" * 32
    assert invoke("campaign", str(path), "--dry-run", cwd=tmp_path).exit_code == 0, \
        "a dry run takes no lease"


def test_sigterm_before_ray_is_an_interruption_in_one_line(tmp_path: Path) -> None:
    """SIGTERM while the driver waits for the lease's lock (after planning, before Ray)."""
    path, out = campaign_file(tmp_path, "early", TINY_BASE, [1])
    out.mkdir()
    lock = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    driver = subprocess.Popen(cli("campaign", str(path)), env=ray_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(f.path == str(out / LOCK_FILE)
                             for f in psutil.Process(driver.pid).open_files()), 120,
                 "the driver to wait for the lease")
        driver.send_signal(signal.SIGTERM)
        stdout, stderr = driver.communicate(timeout=60)
    finally:
        os.close(lock)
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 130, stderr[-3000:]
    assert [line for line in stderr.splitlines() if line.strip()] == ["lem-ray: interrupted"]
    assert stdout == "" and not (out / LEASE_FILE).exists()


# --- damaged state ----------------------------------------------------------------------------


def owned_results(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    claim(out, Owner("hostile", "0" * 16))
    (out / "manifest").mkdir()
    return out


@pytest.mark.parametrize("content", [b'{"format": 2, "seq": 4, "campaign_na',
                                     b'{"hello": "world"}'])
def test_a_damaged_snapshot_is_one_line_naming_the_way_out(tmp_path: Path, content: bytes) -> None:
    out = owned_results(tmp_path)
    (out / "manifest" / "snapshot.json").write_bytes(content)
    refused(invoke("status", str(out), cwd=tmp_path),
            "snapshot.json: not a lem-ray manifest snapshot; the campaign's own command "
            "(lem-ray campaign FILE) rebuilds it from the dataset")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"campaign_name": "hostile", "base": TINY_BASE,
                                    "experiments": [{"backend": "pytorch"}]}))
    refused(invoke("campaign", str(path), "--results-dir", str(out), "--dry-run", cwd=tmp_path),
            "snapshot.json: not a lem-ray manifest snapshot; `lem-ray campaign` without "
            "--dry-run rebuilds it from the dataset")


def test_a_damaged_manifest_nobody_owns_is_refused_before_ray(tmp_path: Path) -> None:
    """No campaign.json: which campaign's runs the manifest held is unknown; no rebuild."""
    out = tmp_path / "results"
    (out / "manifest").mkdir(parents=True)
    (out / "manifest" / "snapshot.json").write_bytes(b'{"campaign_name": "x", "ru')
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"campaign_name": "hostile", "base": TINY_BASE,
                                    "experiments": [{"backend": "pytorch"}]}))
    started_s = time.monotonic()
    refused(invoke("campaign", str(path), "--results-dir", str(out), cwd=tmp_path),
            "it cannot be rebuilt: restore it, or --fresh to move the directory aside")
    assert time.monotonic() - started_s < 30, "refused before Ray, not by the manifest actor"


def test_rebuilt_entries_follow_the_rows_latest_attempt() -> None:
    def row(experiment: str, attempt: int, status: str, error: str | None = None) -> dict:
        return {"experiment_id": experiment, "cycle": 1, "attempt": attempt, "status": status,
                "error": error, "node_id": "n1", "gpu_ids": ["0"]}

    rows = [row("e1", 2, "ok"), row("e1", 1, "failed", "worker died: x"),
            row("e2", 1, "failed", "ValueError: bad"), row("e4", 1, "ok")]
    entries = rebuilt_runs([RunKey("e1", 1), RunKey("e2", 1), RunKey("e3", 1)], rows)
    assert {k: (e["state"], e["attempt"], e["error"]) for k, e in entries.items()} == {
        "e1-c1": ("ok", 2, None), "e2-c1": ("failed", 1, "ValueError: bad"),
        "e3-c1": ("pending", 0, None), "e4-c1": ("ok", 1, None)}
    assert entries["e1-c1"]["node_id"] == "n1" and entries["e3-c1"]["node_id"] is None


# --- on Ray -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_drivers_on_one_directory_one_runs_the_other_is_refused(tmp_path: Path) -> None:
    path, out = campaign_file(tmp_path, "twice", TINY_BASE, [1, 2], cycles=2)
    env = ray_env()
    drivers = [subprocess.Popen(cli("campaign", str(path), "--json"), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    ended = {d.pid: d.communicate(timeout=600) for d in drivers}
    codes = sorted((d.returncode, d.pid) for d in drivers)
    assert [code for code, _ in codes] == [0, 2], {d.pid: ended[d.pid][1][-2000:] for d in drivers}
    (_, winner), (_, loser) = codes
    lines = ended[loser][1].splitlines()
    assert len(lines) == 1 and lines[0].startswith("lem-ray: error: "), lines
    assert f"another lem-ray driver is running here (host {socket.gethostname()}, " \
           f"pid {winner}, since " in lines[0]
    assert ended[loser][0] == ""
    assert json.loads(ended[winner][0])["counts"]["ok"] == 4
    rows = ok_rows(out)
    assert sum(rows.values()) == 4 and set(rows.values()) == {1}
    assert {(status, attempt) for _, _, status, attempt in rows} == {("ok", 1)}
    assert not (out / LEASE_FILE).exists(), "the lease is released at the end"


@pytest.mark.slow
def test_sigterm_is_ctrl_c_runs_interrupted_exit_130_then_resumed(tmp_path: Path) -> None:
    """`ray job stop` sends SIGTERM: the run in progress is recorded interrupted, not left
    running, the lease is released, and the same command again finishes the campaign."""
    path, out = campaign_file(tmp_path, "sigterm", LONG, [1, 2])
    env = ray_env()
    driver = subprocess.Popen(cli("campaign", str(path)), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    wait_for(lambda: running_workers(), 300, "a run in progress")
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-3000:]
    assert "interrupted: 1 runs in progress were stopped and marked interrupted" in stderr
    assert "Traceback" not in stderr
    states = Counter(e["state"] for e in load_manifest(out)["runs"].values())
    assert states == Counter({"interrupted": 1, "pending": 1})
    assert not (out / "experiments").exists() or read_table(out, "experiments").num_rows == 0
    assert not (out / LEASE_FILE).exists()
    rerun = subprocess.run(cli("campaign", str(path)), env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = ok_rows(out)
    assert sum(rows.values()) == 2 and {(s, a) for _, _, s, a in rows} == {("ok", 2), ("ok", 1)}
    assert {e["state"] for e in load_manifest(out)["runs"].values()} == {"ok"}


@pytest.mark.slow
def test_a_damaged_manifest_is_rebuilt_from_the_dataset(local_ray, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Truncated, then replaced by other JSON: each time the campaign rebuilds the manifest
    from the rows (the runs a grown grid added are to run), warns, and reruns nothing done."""
    path, out = campaign_file(tmp_path, "rebuild", TINY_BASE, [1, 2], cycles=2)
    assert run_campaign(path).counts["ok"] == 4
    first = {r["run_id"]: r["started_at"] for r in read_table(out, "experiments").to_pylist()}
    campaign_file(tmp_path, "rebuild", TINY_BASE, [1, 2, 3], cycles=2)
    snapshot = out / "manifest" / "snapshot.json"
    truncated = snapshot.read_bytes()[:40]
    snapshot.write_bytes(truncated)
    for content, counts in ((None, "4 ok, 0 failed, 2 to run"),
                            (b'{"hello": "world"}', "6 ok, 0 failed, 0 to run")):
        if content is not None:
            snapshot.write_bytes(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lem_ray"):
            result = invoke("campaign", str(path), cwd=tmp_path)
        assert result.exit_code == 0, result.output
        warnings = [r.getMessage() for r in caplog.records if "rebuilt" in r.getMessage()]
        assert len(warnings) == 1, caplog.text
        assert warnings[0].startswith(f"lem-ray: warning: {snapshot}: not a lem-ray manifest "
                                      f"snapshot; the manifest was rebuilt from the dataset: "
                                      f"{counts}; the damaged files were moved to "
                                      f"{out / 'manifest'}/damaged-"), warnings[0]
        aside = Path(warnings[0].rsplit(" ", 1)[1].rstrip("/"))
        assert (aside / "snapshot.json").read_bytes() == (content or truncated)
        rows = read_table(out, "experiments").to_pylist()
        assert len(rows) == 6 and {(r["status"], r["attempt"]) for r in rows} == {("ok", 1)}
        assert all(first[r["run_id"]] == r["started_at"] for r in rows if r["run_id"] in first)
        assert Counter(e["state"] for e in load_manifest(out)["runs"].values()) == {"ok": 6}
    assert len(list((out / "manifest").glob("damaged-*"))) == 2


@pytest.mark.slow
def test_a_lease_taken_over_mid_campaign_stops_the_driver_in_one_line(tmp_path: Path) -> None:
    """Another driver took the lease (this one could not renew it in time): this one stops its
    runs as Ctrl-C would, leaves the other's lease alone, and says so in one line."""
    path, out = campaign_file(tmp_path, "lost", LONG, [1, 2])
    driver = subprocess.Popen(cli("campaign", str(path)), env=ray_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    wait_for(lambda: running_workers(), 300, "a run in progress")
    held_by(out)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("lem-ray: error: "), stderr[-3000:]
    assert f"{out / LEASE_FILE} was taken over (host gpu-node-7, pid 4242" in errors[0]
    assert "Traceback" not in stderr
    assert json.loads((out / LEASE_FILE).read_text())["token"] == "f" * 32
    states = Counter(e["state"] for e in load_manifest(out)["runs"].values())
    assert states["running"] == 0 and states["interrupted"] == 1, states
