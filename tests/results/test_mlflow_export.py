"""`lem-ray export mlflow`: a results directory (written by the real writer) into a local
file-based MLflow store, twice: one MLflow run per counted row, with its config as parameters,
its figures as metrics and its GPUs' power as metric histories; the second export adds none."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from lem_ray.cli.main import main
from lem_ray.results.mlflow_export import ATTEMPT_TAG, POWER_METRIC
from tests.fakes.synthetic_results import write_synthetic

mlflow = pytest.importorskip("mlflow")


def counted_rows(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The latest attempt of each run, ok and not invalid, by `<run_id>-a<attempt>`."""
    latest: dict[str, dict[str, Any]] = {}
    for row in ds.dataset(results_dir / "experiments").to_table().to_pylist():
        if row["run_id"] not in latest or row["attempt"] > latest[row["run_id"]]["attempt"]:
            latest[row["run_id"]] = row
    return {f"{r['run_id']}-a{r['attempt']}": r for r in latest.values()
            if r["status"] == "ok" and r["valid"] is not False}


def export(results_dir: Path, uri: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["export", "mlflow", str(results_dir), "--tracking-uri", uri,
                                       "--experiment", "energy", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_export_twice_one_run_per_counted_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    results = tmp_path / "results"
    write_synthetic(results)
    uri = f"file:{tmp_path / 'mlruns'}"
    rows = counted_rows(results)
    everything = ds.dataset(results / "experiments").to_table().to_pylist()
    assert 0 < len(rows) < len({r["run_id"] for r in everything}), "some runs are not counted"

    # An earlier export cut off after its first run was created: that run is logged again.
    client = mlflow.MlflowClient(uri)
    cut_off = client.create_run(client.create_experiment("energy"), tags={ATTEMPT_TAG: min(rows)})

    first = export(results, uri)
    assert sorted(first["logged"]) == sorted(rows) and first["skipped"] == 0
    second = export(results, uri)
    assert second["logged"] == [] and second["skipped"] == len(rows)

    assert client.get_run(cut_off.info.run_id).info.lifecycle_stage == "deleted"
    experiment = client.get_experiment_by_name("energy")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert sorted(r.data.tags[ATTEMPT_TAG] for r in runs) == sorted(rows), "one run per row, once"
    samples = ds.dataset(results / "timeseries").to_table().to_pylist()
    histories = figures = 0
    for run in runs:
        row = rows[run.data.tags[ATTEMPT_TAG]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["lem_ray.experiment_id"] == row["experiment_id"]
        config = json.loads(row["config_json"])
        params = run.data.params
        assert (
            params["backend"] == config["backend"]
            and params["fp_precision"] == config["fp_precision"]
        )
        assert params["decoder.temperature"] == json.dumps(config["decoder"]["temperature"])
        section = config["backend"]
        for key, value in config[section].items():
            assert params[f"{section}.{key}"] == json.dumps(value)
        metrics = run.data.metrics
        for name in ("energy_j_per_output_token", "throughput_tok_s", "ttft_ms_p50", "avg_power_w"):
            if row[name] is None:
                assert name not in metrics, "a null figure is left out"
            else:
                assert metrics[name] == pytest.approx(row[name])
                figures += 1
        assert "cycle" not in metrics and "measure_start_epoch_s" not in metrics
        mine = [
            s for s in samples if s["run_id"] == row["run_id"] and s["attempt"] == row["attempt"]
        ]
        for gpu in sorted({s["gpu_uuid"] for s in mine}):
            history = client.get_metric_history(run.info.run_id, f"{POWER_METRIC}/{gpu}")
            expected = sorted((s for s in mine if s["gpu_uuid"] == gpu), key=lambda s: s["t_s"])
            assert [m.value for m in sorted(history, key=lambda m: m.step)] == \
                pytest.approx([s["power_w"] for s in expected])
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(
                range(len(expected))
            )
            histories += 1
    assert histories >= 2 and figures > len(rows), "figures and power histories were checked"


def test_without_mlflow_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = CliRunner().invoke(main, ["export", "mlflow", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == ("lem-ray: error: lem-ray export mlflow needs MLflow: "
                                     "pip install 'lem-ray[mlflow]'")
