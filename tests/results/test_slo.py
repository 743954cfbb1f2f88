"""SLOs and goodput: attainment, goodput and J per goodput token on hand-computed runs, and the
report's least-energy configuration meeting the SLO (or none)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from lem_ray.config.experiment import ExperimentConfig, SLOConfig
from lem_ray.records import RequestRecord, RunKey
from lem_ray.results.report import build_report
from lem_ray.results.schema import empty_row
from lem_ray.results.slo import best_under_slo, meets, slo_columns, tpot_ms
from lem_ray.results.store import write_rows
from tests.cli.support import lem_ray

MLPERF = SLOConfig(ttft_ms=2000.0, tpot_ms=100.0)


def record(ttft_ms: float | None, e2e_ms: float, output_tokens: int) -> RequestRecord:
    return RequestRecord(index=0, input_tokens=10, output_tokens=output_tokens, e2e_ms=e2e_ms,
                         ttft_ms=ttft_ms)


def test_attainment_goodput_and_energy_per_goodput_token_by_hand() -> None:
    records = [
        record(1500.0, 1500.0 + 99 * 90.0, 100),    # TTFT 1.5 s, TPOT 90 ms: meets
        record(2000.0, 2000.0 + 99 * 100.0, 100),   # both exactly at the limit: meets
        record(2500.0, 2500.0 + 99 * 50.0, 100),    # TTFT over
        record(500.0, 500.0 + 199 * 101.0, 200),    # TPOT over
        record(900.0, 900.0, 1),                    # one token: no TPOT to judge
    ]
    columns = slo_columns(MLPERF, records, duration_s=40.0, energy_j=8000.0)
    # good: 100 + 100 + 1 = 201 output tokens of 3 requests in 5
    assert columns == {
        "slo_ttft_ms": 2000.0, "slo_tpot_ms": 100.0, "slo_min_attainment": 0.9,
        "slo_attainment": pytest.approx(3 / 5), "goodput_tok_s": pytest.approx(201 / 40.0),
        "energy_j_per_goodput_token": pytest.approx(8000.0 / 201),
    }
    assert tpot_ms(records[0]) == pytest.approx(90.0) and tpot_ms(records[4]) is None
    assert tpot_ms(record(100.0, 150.0, 2)) == pytest.approx(50.0), "two tokens: one gap"
    assert slo_columns(MLPERF, records[:1], duration_s=0.0, energy_j=None)["goodput_tok_s"] is None


def test_one_limit_judges_only_itself() -> None:
    slow_tokens = record(100.0, 100.0 + 9 * 500.0, 10)
    assert meets(slow_tokens, SLOConfig(ttft_ms=200.0)) is True
    assert meets(slow_tokens, SLOConfig(tpot_ms=200.0)) is False


def test_unjudgeable_requests_leave_the_columns_null() -> None:
    """No TTFT (a backend timing only the call's end): a share of the others is not the run's."""
    columns = slo_columns(MLPERF, [record(100.0, 200.0, 2), record(None, 300.0, 2)], 1.0, 10.0)
    assert columns["slo_attainment"] is None and columns["goodput_tok_s"] is None
    assert columns["slo_ttft_ms"] == 2000.0
    assert slo_columns(SLOConfig(tpot_ms=50.0), [record(None, 300.0, 1)], 1.0, 10.0)[
        "slo_attainment"] == 1.0
    assert slo_columns(SLOConfig(tpot_ms=50.0), [record(None, 300.0, 2)], 1.0, 10.0)[
        "slo_attainment"] is None, "two tokens without a first-token time: no TPOT to judge"
    assert set(slo_columns(None, [], 1.0, None).values()) == {None}
    nothing_good = slo_columns(MLPERF, [record(3000.0, 3000.0, 1)], 2.0, 50.0)
    assert (
        nothing_good["goodput_tok_s"] == 0.0 and nothing_good["energy_j_per_goodput_token"] is None
    )


def test_slo_config() -> None:
    with pytest.raises(ValidationError, match="set ttft_ms, tpot_ms or both"):
        SLOConfig()
    with pytest.raises(ValidationError):
        SLOConfig(ttft_ms=-1.0)
    with pytest.raises(ValidationError):
        SLOConfig(ttft_ms=1.0, min_attainment=1.5)
    base = {"model_name": "m", "backend": "vllm"}
    with_slo = ExperimentConfig.model_validate({**base, "slo": {"ttft_ms": 2000, "tpot_ms": 100}})
    assert with_slo.slo == MLPERF
    assert with_slo.engine_key == ExperimentConfig.model_validate(base).engine_key, \
        "an SLO judges results: the loaded engine serves either"


def run_row(eid: str, cycle: int, backend: str, batch: int, jpt: float,
            attainment: float | None, min_attainment: float | None = 0.9) -> dict:
    return {**empty_row("experiments"), "campaign_name": "s", "experiment_id": eid,
            "run_id": f"{eid}-c{cycle}", "cycle": cycle, "attempt": 1, "status": "ok",
            "valid": True, "backend": backend, "model_name": "builtin:llama-8b",
            "batch_size": batch, "energy_j_per_output_token": jpt,
            "slo_attainment": attainment, "slo_min_attainment": min_attainment,
            "goodput_tok_s": None if attainment is None else 1000.0 * attainment,
            "config_json": json.dumps({"backend": backend, "vllm": {"max_num_seqs": batch}})}


# vLLM: 512 has the least J/token but misses in cycle 2; 128 meets in both, less than 32.
# pytorch: its one configuration never meets.
ROWS = [
    run_row("v32", 1, "vllm", 32, 0.165, 0.99), run_row("v32", 2, "vllm", 32, 0.167, 0.98),
    run_row("v128", 1, "vllm", 128, 0.095, 0.95), run_row("v128", 2, "vllm", 128, 0.097, 0.90),
    run_row("v512", 1, "vllm", 512, 0.070, 0.93), run_row("v512", 2, "vllm", 512, 0.072, 0.85),
    run_row("p8", 1, "pytorch", 8, 0.3, 0.5), run_row("p8", 2, "pytorch", 8, 0.31, 0.6),
]


def test_least_energy_configuration_meeting_the_slo() -> None:
    report = build_report(ROWS)
    answers = {a["backend"]: a for a in best_under_slo(report.groups, report.members)}
    vllm = answers["vllm"]
    assert (vllm["configurations"], vllm["meeting"]) == (3, 2)
    assert vllm["best"]["group"] == "v128"
    assert vllm["best"]["energy_j_per_output_token_mean"] == pytest.approx(0.096)
    assert vllm["best"]["slo_attainment_min"] == pytest.approx(0.90)
    assert vllm["best"]["goodput_tok_s_mean"] == pytest.approx(925.0)
    assert answers["pytorch"]["best"] is None and answers["pytorch"]["meeting"] == 0
    # grouped by batch size, 128 pools an SLO'd cycle with one that had none: it cannot meet it
    mixed = build_report([*ROWS, run_row("w128", 1, "vllm", 128, 0.01, None, None)],
                         group_by=["backend", "batch_size"])
    answers = {a["backend"]: a for a in best_under_slo(mixed.groups, mixed.members)}
    assert (
        answers["vllm"]["configurations"] == 3
        and answers["vllm"]["best"]["label"] == "vllm · batch 32"
    )
    no_slo = [run_row("x", 1, "vllm", 8, 0.1, None, None)]
    report = build_report(no_slo)
    assert best_under_slo(report.groups, report.members) == []


def test_report_cli_names_the_best_and_says_when_none_meets(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for row in ROWS:
        write_rows(
            results, "experiments", RunKey(row["experiment_id"], row["cycle"]).stem(1), [row]
        )
    out = lem_ray("report", str(results), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "SLO: builtin:llama-8b on vllm: least J/output token meeting its SLO (2 of 3" in text
    assert "vllm · batch 128 0.096 J/out tok, attainment 90% or more, goodput 925 tok/s" in text
    assert "SLO: builtin:llama-8b on pytorch: none of 1 configurations meets its SLO" in text
    payload = json.loads(lem_ray("report", str(results), "--json", cwd=tmp_path).stdout)
    assert [a["best"] and a["best"]["group"] for a in payload["slo_best"]] in (
        [None, "v128"], ["v128", None])
