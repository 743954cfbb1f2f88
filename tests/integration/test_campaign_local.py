"""A real campaign on a local Ray instance: tables, metrics, failures and reruns."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.results.manifest import load_manifest
from tests.conftest import TINY_BASE

pytestmark = pytest.mark.slow


CAMPAIGN = {
    "campaign_name": "local",
    "base": TINY_BASE,
    "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 3]}}},
    "experiments": [
        {"backend": "pytorch", "model_name": "/nonexistent/model", "load_format": "auto"}
    ],
    "execution": {"cycles": 2, "structure": "interleaved"},
}


def test_campaign_tables_and_rerun(local_ray, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = run_campaign(CAMPAIGN, results_dir=out)
    assert result.counts == {"planned": 6, "skipped_done": 0, "ran": 6, "failed": 2, "ok": 4,
                             "retried": 0}

    exps = ds.dataset(out / "experiments").to_table().to_pylist()
    assert len(exps) == 6
    ok = [e for e in exps if e["status"] == "ok"]
    failed = [e for e in exps if e["status"] == "failed"]
    assert {(e["batch_size"], e["cycle"]) for e in ok} == {(1, 1), (1, 2), (3, 1), (3, 2)}
    for e in failed:
        assert e["model_name"] == "/nonexistent/model"
        assert e["error"].startswith(("OSError", "HFValidationError", "RepositoryNotFoundError"))
    for e in ok:
        assert e["campaign_name"] == "local" and e["attempt"] == 1
        assert e["run_id"] == f"{e['experiment_id']}-c{e['cycle']}"
        assert e["num_requests"] == 6 and e["output_tokens"] == 6 * 8
        assert e["throughput_tok_s"] == pytest.approx(e["output_tokens"] / e["duration_s"])
        assert e["ttft_ms_p50"] > 0 and e["itl_ms_p50"] > 0
        assert e["warmup_requests"] == -(-2 // e["batch_size"]) * e["batch_size"], "full steps"
        assert e["device"] == "cpu" and e["gpu_uuids"] == []
        assert e["energy_j"] is None and e["energy_j_per_output_token"] is None
        assert e["energy_source"] is None and "ran on CPU" in e["energy_unavailable_reason"]
        assert e["valid"] is None and e["validity_flags"] == ["no_energy"]
        assert e["energy_prefill_j"] is None and e["prefill_passes"] is None, (
            "no prefill pass without energy"
        )
        assert e["baseline_power_w"] is None and e["energy_adjusted_j"] is None
        assert json.loads(e["config_json"])["pytorch"]["batch_size"] == e["batch_size"]
        assert e["node_id"] and e["node_ip"]

    requests = ds.dataset(out / "requests").to_table().to_pylist()
    assert len(requests) == 4 * 6
    for run in ok:
        mine = [r for r in requests if r["run_id"] == run["run_id"] and r["attempt"] == 1]
        assert sorted(r["request_index"] for r in mine) == list(range(6))
        assert sum(r["output_tokens"] for r in mine) == run["output_tokens"]
        assert all(r["e2e_ms"] >= r["ttft_ms"] > 0 and r["energy_j"] is None for r in mine)

    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "no temp files left"
    assert [p.name[:10] for p in (out / "experiments").iterdir()] == ["compacted-"], \
        "a campaign with nothing left compacts its results"

    manifest = load_manifest(out)["runs"]
    assert sorted(e["state"] for e in manifest.values()) == ["failed"] * 2 + ["ok"] * 4
    assert all(
        e["error"].startswith("OSError") for e in manifest.values() if e["state"] == "failed"
    )

    rerun = run_campaign(CAMPAIGN, results_dir=out)
    assert rerun.counts["skipped_done"] == 6 and rerun.counts["ran"] == 0, "failed runs stay failed"
    rerun = run_campaign(CAMPAIGN, results_dir=out, retry_failed=True)
    assert rerun.counts == {"planned": 6, "skipped_done": 4, "ran": 2, "failed": 2, "ok": 0,
                            "retried": 0}
    attempts = sorted(e["attempt"] for e in ds.dataset(out / "experiments").to_table().to_pylist()
                      if e["status"] == "failed")
    assert attempts == [1, 1, 2, 2], (
        "--retry-failed reruns failed runs as new attempts, ok ones not"
    )
    assert len(rerun.summary) == 2 and all(s["cycles_ok"] == 2 for s in rerun.summary)
    assert len(rerun.failures) == 2, "the latest attempt of each failed run"
    assert all(f["attempt"] == 2 and f["reason"].startswith("OSError") for f in rerun.failures)
    assert {f["label"] for f in rerun.failures} == {
        "/nonexistent/model · batch 1 · load_format=auto"}, (
        "a failed run is named as its live line named it")
