"""A real campaign on NVIDIA GPUs: energy from the counter, baseline, prefill, time series."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from lem_ray.execution.driver.campaign import run_campaign
from tests.conftest import TINY_BASE

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_gpu_campaign_measures_energy(tmp_path: Path) -> None:
    campaign = {
        "campaign_name": "gpu",
        "base": {**TINY_BASE, "fp_precision": "bfloat16", "max_output_tokens": 64,
                 "min_output_tokens": 64, "prompts": {"source": "synthetic", "count": 64}},
        "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 8]}}},
        "execution": {"cycles": 4, "baseline": {"duration_s": 3},
                      "validity": {"min_window_s": 2}},
    }
    result = run_campaign(campaign, results_dir=tmp_path / "r")
    assert result.counts["ok"] == 8, result.failures
    rows = ds.dataset(tmp_path / "r" / "experiments").to_table().to_pylist()
    for e in rows:
        assert e["device"] == "cuda" and e["gpu_uuids"][0].startswith("GPU-")
        assert e["energy_source"] == "nvml_counter" and e["energy_unavailable_reason"] is None
        assert e["energy_j"] > 0 and e["energy_integrated_j"] > 0
        assert e["energy_j_per_output_token"] == pytest.approx(e["energy_j"] / e["output_tokens"])
        assert 20 < e["baseline_power_w"] < 700 and e["baseline_method"].startswith("idle_mean")
        assert e["energy_adjusted_j"] == pytest.approx(
            e["energy_j"] - e["baseline_power_w"] * e["energy_window_s"])
        assert 0 < e["energy_prefill_j"] < e["energy_j"] and e["prefill_passes"] >= 1
        assert e["energy_decode_j"] == pytest.approx(e["energy_j"] - e["energy_prefill_j"])
        assert e["valid"] is (e["validity_flags"] == []), "valid means exactly: no flag"
        # nothing on this campaign's own GPU can raise these: a dedicated GPU, no MIG, energy
        # measured
        assert not {"no_energy", "mig", "other_process", "power_above_limit"} & set(
            e["validity_flags"]
        )
        assert e["power_limit_w"] > 0 and e["driver_version"]
        assert json.loads(e["energy_by_gpu_json"]).keys() == {e["gpu_uuids"][0]}
    clean = [e for e in rows if e["batch_size"] == 1]
    assert any(e["valid"] is True for e in clean), [e["validity_flags"] for e in clean]
    by_gpu: dict[str, list[float]] = {}
    for e in rows:
        by_gpu.setdefault(e["gpu_uuids"][0], []).append(e["baseline_age_s"])
    assert any(len(ages) > 1 for ages in by_gpu.values()), "more runs than GPUs"
    for ages in by_gpu.values():
        ages.sort()
        assert ages[0] < 2 and all(a > 2 for a in ages[1:]), "measured once per GPU, then reused"
    series = ds.dataset(tmp_path / "r" / "timeseries").to_table()
    assert series.num_rows > 10 and min(series.column("power_w").to_pylist()) > 0
    requests = ds.dataset(tmp_path / "r" / "requests").to_table().to_pylist()
    for e in rows:
        mine = [r["energy_j"] for r in requests if r["run_id"] == e["run_id"]]
        assert sum(mine) == pytest.approx(e["energy_j"])
