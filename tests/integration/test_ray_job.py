"""`ray job submit -- lem-ray campaign` on a real head started with `ray start --head`."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml

from lem_ray.assets import QUICKSTART_CAMPAIGN
from lem_ray.results.lease import LEASE_FILE
from lem_ray.results.manifest import load_manifest
from tests.faults import wait_for
from tests.ray_head import Head, start_head

pytestmark = pytest.mark.slow

TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    yield from start_head(num_cpus=3, num_gpus=2)


def _small_quickstart(tmp_path: Path) -> Path:
    """The built-in quickstart, cut to two short runs through `_extends`."""
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump({
        "_extends": str(QUICKSTART_CAMPAIGN),
        "campaign_name": "jobs",
        "base": {"prompts": {"count": 4}, "max_output_tokens": 8, "min_output_tokens": 8},
        "grid": {"shared": {"fp_precision": ["float32"]}},
        "execution": {"cycles": 1},
    }))
    return path


def _job_status(head: Head, job_id: str) -> str:
    status = subprocess.run(
        [sys.executable, "-c", "import sys; from ray.job_submission import JobSubmissionClient; "
         "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)",
         head.dashboard_url, job_id], env=head.env, capture_output=True, text=True, timeout=120)
    return status.stdout.strip() or status.stderr[-2000:]


def _submit(head: Head, campaign: Path, out: Path, *resources: str) -> tuple[str, str]:
    """(submission id, job logs) of a submitted campaign, after checking it SUCCEEDED."""
    job_id = f"lemray-test-{secrets.token_hex(4)}"
    submitted = head.ray("job", "submit", "--address", head.dashboard_url, "--submission-id",
                         job_id, *resources, "--", "lem-ray", "campaign", str(campaign),
                         "--results-dir", str(out))
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert _job_status(head, job_id) == "SUCCEEDED"
    logs = head.ray("job", "logs", "--address", head.dashboard_url, job_id)
    assert logs.returncode == 0
    return job_id, logs.stdout


def test_campaign_through_ray_jobs(head: Head, tmp_path: Path) -> None:
    campaign, out = _small_quickstart(tmp_path), tmp_path / "results"
    _, logs = _submit(head, campaign, out, "--entrypoint-num-cpus", "1")
    assert "2 ok, 0 failed this time" in logs
    assert TOKEN_NOTICE not in logs, "auth mode is stated, so Ray prints no notice"
    assert "holds" not in logs, "a driver without GPUs gets no warning"

    rows = ds.dataset(out / "experiments").to_table().to_pylist()
    assert sorted(r["batch_size"] for r in rows) == [1, 8]
    assert all(r["status"] == "ok" and r["campaign_name"] == "jobs" for r in rows)
    assert all(len(r["gpu_ids"]) == 1 for r in rows), "each run got a (logical) GPU of its own"
    assert all(r["output_tokens"] == 4 * 8 for r in rows)

    _, logs = _submit(head, campaign, out, "--entrypoint-num-gpus", "1")
    assert "this driver holds 1 GPU(s)" in logs and "--entrypoint-num-cpus 1" in logs
    assert "2 of 2 runs were already done" in logs, "a second submission resumes"


def test_cluster_refuses_clients_without_its_token(head: Head) -> None:
    wrong = {**head.env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    listed = head.ray("job", "list", "--address", head.dashboard_url)
    assert listed.returncode == 0, listed.stderr[-2000:]
    refused = Head(head.temp_dir, head.gcs_address, head.dashboard_url, wrong).ray(
        "job", "list", "--address", head.dashboard_url)
    assert refused.returncode != 0


def test_ray_job_stop_is_ctrl_c(head: Head, tmp_path: Path) -> None:
    """`ray job stop` sends the driver SIGTERM: the run in progress is recorded interrupted
    (none left running) within Ray's 3 s before SIGKILL, and resubmitting finishes it."""
    campaign, out = _small_quickstart(tmp_path), tmp_path / "results"
    long = yaml.safe_load(campaign.read_text())
    long["base"] = {"prompts": {"count": 400}, "max_output_tokens": 16, "min_output_tokens": 16}
    long["grid"]["backend_overrides"] = {"pytorch": {"batch_size": [1]}}
    campaign.write_text(yaml.safe_dump(long))
    job_id = f"lemray-test-{secrets.token_hex(4)}"
    submitted = head.ray("job", "submit", "--address", head.dashboard_url, "--submission-id",
                         job_id, "--no-wait", "--", "lem-ray", "campaign", str(campaign),
                         "--results-dir", str(out))
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    wait_for(lambda: (_job_status(head, job_id) != "PENDING" and (out / "manifest").is_dir()
             and "running" in {e["state"] for e in load_manifest(out)["runs"].values()})
             or _job_status(head, job_id) in ("FAILED", "SUCCEEDED"), 300, "a run to start")
    assert _job_status(head, job_id) == "RUNNING", \
        head.ray("job", "logs", "--address", head.dashboard_url, job_id).stdout[-3000:]
    time.sleep(3)
    stopped = head.ray("job", "stop", "--address", head.dashboard_url, job_id)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    wait_for(lambda: _job_status(head, job_id) == "STOPPED", 120, "the job to stop")
    states = Counter(e["state"] for e in load_manifest(out)["runs"].values())
    assert states["running"] == 0 and states["interrupted"] >= 1, states
    assert not (out / LEASE_FILE).exists(), "the lease was released"
    _, logs = _submit(head, campaign, out)
    assert {e["state"] for e in load_manifest(out)["runs"].values()} == {"ok"}, logs[-2000:]
