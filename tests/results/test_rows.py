"""The typed column records change nothing written: the schemas generated from them equal the
schemas as they were written out by hand (tests/data/schema_before_columns.tsv, taken before
the records), and the rows of a known run are the rows the old code built
(tests/data/rows_known.json). A record that misses or misspells a column fails where it is made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import lem_ray
from lem_ray.execution.driver.writes import store_rows
from lem_ray.results import column_docs, rows
from lem_ray.results.columns import Outcome, Request, Sample
from lem_ray.results.schema import TABLES, empty_row, row
from lem_ray.results.store import read_table
from tests.fakes import run_result as known

DATA = Path(__file__).parents[1] / "data"


def test_generated_schemas_equal_the_schemas_before_the_records() -> None:
    written = [f"{table}\t{f.name}\t{f.type}" for table, schema in TABLES.items() for f in schema]
    assert written == (DATA / "schema_before_columns.tsv").read_text().splitlines()


def _plain(made: rows.RunRows) -> dict[str, Any]:
    """As the fixture holds them: JSON, timestamps as str()."""
    return json.loads(json.dumps({"experiment": made.experiment, "requests": made.requests,
                                  "timeseries": made.timeseries, "retryable": made.retryable},
                                 sort_keys=True, default=str))


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lem_ray, "__version__", "0.0.0+test")
    monkeypatch.setattr(rows, "_now", lambda: known.FINISHED_AT)


def test_rows_of_a_known_run_are_unchanged(frozen: None) -> None:
    made = rows.ok_rows(known.IDS, known.config(), known.execution(), known.identity(),
                        known.result(), known.telemetry(), known.conditions(), known.STARTED_AT,
                        known.RUNTIME_ENV_JSON)
    expected = json.loads((DATA / "rows_known.json").read_text())["ok"]
    # The old code handed the sampler's rows on as they came: a GPU's without the host's
    # columns and the host's without the GPU's, which the writer refused (a bug, below).
    expected["timeseries"] = [{**empty_row("timeseries"), **r} for r in expected["timeseries"]]
    assert _plain(made) == expected
    for table, written in (("experiments", [made.experiment]), ("requests", made.requests),
                           ("timeseries", made.timeseries)):
        assert [list(r) for r in written] == [TABLES[table].names] * len(written)


def test_rows_of_a_run_with_gpu_and_host_samples_are_written(frozen: None,
                                                             tmp_path: Path) -> None:
    """Through the real writer, which refuses a row without every column of its table."""
    made = rows.ok_rows(known.IDS, known.config(), known.execution(), known.identity(),
                        known.result(), known.telemetry(), known.conditions(), known.STARTED_AT,
                        known.RUNTIME_ENV_JSON)
    store_rows(str(tmp_path), made)
    series = read_table(tmp_path, "timeseries").to_pylist()
    assert len(series) == len(known.telemetry().timeseries)
    assert {(r["gpu_uuid"], r["power_w"] is None, r["cpu_power_w"] is None) for r in series} == {
        ("GPU-a", False, True), ("GPU-b", False, True), (None, True, False)}


def test_failed_rows_of_a_known_run_are_unchanged(frozen: None) -> None:
    made = rows.failed_rows(known.IDS, known.config(), "RuntimeError: boom", known.STARTED_AT,
                            known.identity(), known.RUNTIME_ENV_JSON, retryable=True)
    assert _plain(made) == json.loads((DATA / "rows_known.json").read_text())["failed"]


def test_a_misspelt_or_missing_column_fails_where_the_row_is_made() -> None:
    with pytest.raises(TypeError, match="energy_jj"):
        Request(**{**_request(), "energy_jj": 1.0})
    with pytest.raises(TypeError, match="error"):
        Outcome(status="ok")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="t_ss"):
        Sample(gpu_uuid="GPU-a", t_ss=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="Sample is no column group of experiments"):
        row("experiments", Sample(t_s=1.0))


def test_a_sampler_field_it_does_not_know_fails_the_run_rows(frozen: None) -> None:
    telemetry = known.telemetry()
    telemetry.environment["GPU-a"]["power_limt_w"] = 700.0
    with pytest.raises(TypeError, match="power_limt_w"):
        rows.ok_rows(known.IDS, known.config(), known.execution(), known.identity(),
                     known.result(), telemetry, known.conditions(), known.STARTED_AT, None)


def _request() -> dict[str, Any]:
    return {"request_index": 0, "input_tokens": 1, "output_tokens": 1, "ttft_ms": None,
            "itl_ms_mean": None, "itl_ms_p50": None, "itl_ms_max": None, "e2e_ms": 1.0,
            "start_s": 0.0, "energy_j": None, "energy_attribution": None}


def test_docs_column_tables_are_those_of_the_records(tmp_path: Path) -> None:
    """docs/results.md says what the records say; `column_docs` puts it right when not."""
    docs = Path(__file__).parents[2] / "docs" / "results.md"
    text = docs.read_text(encoding="utf-8")
    assert column_docs.rewritten(text) == text, \
        "docs/results.md is out of date: run python -m lem_ray.results.column_docs"
    stale = tmp_path / "results.md"
    stale.write_text(text.replace("| `energy_j` | float | J |", "| `energy_j` | float | kJ |", 1))
    assert column_docs.main([str(stale), "--check"]) == 1
    assert column_docs.main([str(stale)]) == 0 and stale.read_text(encoding="utf-8") == text
