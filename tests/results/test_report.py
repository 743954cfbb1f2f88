"""`lem-ray report`: statistics checked by hand on a synthetic results directory with energy,
the files it writes (summary Parquet, CSV, self-contained HTML), bad input, and a real CPU
campaign read back with the report, DuckDB and polars."""

from __future__ import annotations

import base64
import csv
import json
import math
import os
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from lem_ray.results.bootstrap import bootstrap_ci
from lem_ray.results.report import METRICS, SUMMARY, build_report, pareto_mask
from lem_ray.results.schema import empty_row
from lem_ray.results.store import write_rows
from tests.cli.support import lem_ray
from tests.conftest import TINY_BASE, isolated_ray
from tests.fakes.synthetic_results import (
    SYNTHETIC,
    T0_S,
    WINDOW_S,
    metrics,
    request_energies,
    write_synthetic,
)


def expected_stats(values: list[float]) -> dict[str, Any]:
    """Mean and sample std by hand; the interval is bootstrap_ci's on exactly these values (its
    statistics are tested on their own below), so what is checked here is which runs count."""
    data = np.array(values, dtype=float)
    ci = bootstrap_ci(values)
    return {"mean": data.mean() if data.size else None, "n": data.size,
            "std": data.std(ddof=1) if data.size >= 2 else None,
            "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None}


def test_bootstrap_interval_covers_a_known_mean() -> None:
    """Over many seeded samples of a known distribution, the 95% interval holds the true mean
    about 95% of the time (the percentile bootstrap runs a little short at n=10)."""
    rng = np.random.default_rng(2024)
    trials = 400
    covered = sum(low <= 5.0 <= high for low, high in
                  (bootstrap_ci(rng.normal(5.0, 2.0, size=10)) for _ in range(trials)))
    assert 0.86 <= covered / trials <= 0.97


def test_bootstrap_interval_width() -> None:
    """Width shrinks as 1/sqrt(n), and matches the normal interval 2 x 1.96 x sd / sqrt(n) for
    a large sample; a higher level is wider; the interval depends on the values only."""
    rng = np.random.default_rng(7)
    def mean_width(n: int, level: float = 0.95) -> float:
        widths = [high - low for low, high in
                  (bootstrap_ci(rng.normal(0.0, 1.0, size=n), level=level) for _ in range(40))]
        return float(np.mean(widths))
    w5, w20, w80 = mean_width(5), mean_width(20), mean_width(80)
    assert w5 > w20 > w80
    assert w80 / w20 == pytest.approx(0.5, rel=0.15)
    assert w80 == pytest.approx(2 * 1.96 / math.sqrt(80), rel=0.1)
    assert mean_width(80, level=0.5) == pytest.approx(2 * 0.674 / math.sqrt(80), rel=0.15)
    values = [3.0, 1.0, 2.0, 5.0]
    assert bootstrap_ci(values) == bootstrap_ci(values[::-1]), "depends on the values only"
    assert bootstrap_ci([1.0]) is None and bootstrap_ci([]) is None
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    low, high = bootstrap_ci(values)
    assert min(values) < low < float(np.mean(values)) < high < max(values)


def counted_values(experiments: list[str], metric: str) -> list[float]:
    """Latest attempt, ok and not invalid, non-null: the runs the report must count."""
    values = []
    for eid in experiments:
        _, _, batch, _, _, runs = SYNTHETIC[eid]
        latest = {c: (a, s, v, j) for c, a, s, v, j in sorted(runs)}
        for cycle, (_, status, valid, jpt) in sorted(latest.items()):
            if status == "ok" and valid is not False:
                value = metrics(batch, cycle, jpt).get(metric)
                if value is not None:
                    values.append(value)
    return values


def assert_stats(group: dict[str, Any], metric: str, values: list[float]) -> None:
    want = expected_stats(values)
    assert group[f"{metric}_n"] == want["n"], metric
    for stat in ("mean", "std", "ci_low", "ci_high"):
        got = group[f"{metric}_{stat}"]
        if want[stat] is None:
            assert got is None, (metric, stat)
        else:
            assert got == pytest.approx(want[stat], rel=1e-12), (metric, stat)


def report_json(results_dir: Path, *args: str) -> dict[str, Any]:
    proc = lem_ray("report", str(results_dir), "--json", *args, cwd=results_dir.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_statistics_per_experiment(synthetic: Path) -> None:
    result = report_json(synthetic)
    groups = {g["group"]: g for g in result["groups"]}
    assert list(groups) == ["cccc", "aaaa", "bbbb", "eeee", "dddd"], (
        "backend, model, precision, batch"
    )
    for eid, group in groups.items():
        assert group["experiment_ids"] == [eid]
        for metric in METRICS:
            assert_stats(group, metric, counted_values([eid], metric))
    assert groups["aaaa"]["energy_j_per_output_token_mean"] == pytest.approx(0.52), (
        "attempt 2 replaced 9.9"
    )
    assert [groups["aaaa"][k] for k in ("runs_ok", "runs_invalid", "runs_failed")] == [3, 0, 0]
    assert [groups["bbbb"][k] for k in ("runs_ok", "runs_invalid", "runs_failed")] == [1, 1, 1]
    assert groups["bbbb"]["energy_j_per_output_token_n"] == 1
    assert groups["bbbb"]["energy_j_per_output_token_ci_low"] is None
    assert groups["cccc"]["energy_j_per_output_token_n"] == 2, (
        "valid=None run: no energy, still counted"
    )
    assert groups["cccc"]["throughput_tok_s_n"] == 3
    assert [groups["eeee"][k] for k in ("runs_ok", "runs_failed", "throughput_tok_s_n")] == [
        0,
        1,
        0,
    ]
    assert groups["dddd"]["backend"] == "vllm" and groups["dddd"]["batch_size"] == 64
    assert groups["dddd"]["energy_source"] == "nvml_counter"
    per_request = [e for cycle in (1, 2, 3) for e in request_energies(cycle)]
    for p in (50, 90, 99):
        assert groups["dddd"][f"request_energy_j_p{p}"] == pytest.approx(
            np.percentile(per_request, p)
        )
        assert groups["dddd"][f"request_energy_j_per_output_token_p{p}"] == pytest.approx(
            np.percentile(per_request, p) / 10)
    assert groups["dddd"]["request_energy_attribution"] == "step"
    assert groups["aaaa"]["request_energy_j_p50"] is None, "no requests written for it"
    assert sorted(
        (e["run_id"], e["attempt"], e["status"], e["reason"]) for e in result["excluded"]
    ) == [
        ("bbbb-c2", 1, "invalid", "throttled"),
        ("bbbb-c3", 1, "failed", "RuntimeError: CUDA out of memory"),
        ("eeee-c1", 2, "failed", "RuntimeError: CUDA out of memory"),
    ]


def test_group_by_config_path_and_column(synthetic: Path) -> None:
    by_temp = report_json(synthetic, "--group-by", "decoder.temperature,fp_precision")
    groups = {g["group"]: g for g in by_temp["groups"]}
    assert set(groups) == {"decoder.temperature=0.7, fp_precision=bfloat16",
                           "decoder.temperature=0.7, fp_precision=float16",
                           "decoder.temperature=1.0, fp_precision=float16",
                           "decoder.temperature=1.0, fp_precision=float32"}
    pooled = groups["decoder.temperature=1.0, fp_precision=float16"]
    assert pooled["experiment_ids"] == ["aaaa", "bbbb"] and pooled["batch_size"] is None
    assert json.loads(pooled["group_json"]) == {
        "decoder.temperature": 1.0,
        "fp_precision": "float16",
    }
    for metric in METRICS:
        assert_stats(pooled, metric, counted_values(["aaaa", "bbbb"], metric))

    by_backend = {g["group"]: g for g in report_json(synthetic, "--group-by", "backend")["groups"]}
    assert set(by_backend) == {"backend=pytorch", "backend=vllm"}
    assert_stats(by_backend["backend=pytorch"], "energy_j_per_output_token",
                 counted_values(["aaaa", "bbbb", "cccc", "eeee"], "energy_j_per_output_token"))
    by_path = {
        g["group"] for g in report_json(synthetic, "--group-by", "pytorch.batch_size")["groups"]
    }
    assert by_path == {"pytorch.batch_size=1", "pytorch.batch_size=2", "pytorch.batch_size=8",
                       "pytorch.batch_size=null"}, "a vLLM run has no pytorch section"


def test_summary_parquet_and_csv(synthetic: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "out" / "summary.csv"
    result = report_json(synthetic, "--csv", str(csv_path))
    parquet = synthetic / "summary" / "summary.parquet"
    assert result["files"] == {"summary": str(parquet.absolute()), "csv": str(csv_path)}
    assert os.listdir(synthetic / "summary") == ["summary.parquet"], "no temp file left"
    table = pq.read_table(parquet)
    assert table.schema.equals(SUMMARY)
    assert table.to_pylist() == result["groups"]
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["group"] for r in rows] == [g["group"] for g in result["groups"]]
    assert list(rows[0]) == SUMMARY.names
    a = next(r for r in rows if r["group"] == "aaaa")
    want = expected_stats(counted_values(["aaaa"], "throughput_tok_s"))
    assert float(a["throughput_tok_s_mean"]) == pytest.approx(want["mean"])
    assert float(a["throughput_tok_s_ci_high"]) == pytest.approx(want["ci_high"])
    assert int(a["throughput_tok_s_n"]) == 3 and a["experiment_ids"] == "aaaa"
    b = next(r for r in rows if r["group"] == "bbbb")
    assert b["energy_j_per_output_token_ci_low"] == "" and b["energy_j_per_output_token_n"] == "1"


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.rows = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.rows += tag == "tr"
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")


def test_html_is_self_contained(synthetic: Path, tmp_path: Path) -> None:
    html_path = tmp_path / "report.html"
    report_json(synthetic, "--html", str(html_path), "--latency", "e2e")
    text = html_path.read_text()
    page = PageParser()
    page.feed(text)
    assert page.tags.count("table") == 3, "energy, throughput and latency, failed/invalid runs"
    assert page.rows == 2 * (1 + 5) + (1 + 3)
    assert len(page.images) == 5
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in text and "https://" not in text
    assert not {"script", "link", "iframe"} & set(page.tags)
    assert "no CI (n&lt;2) n=1" in text and "end-to-end latency p50" in text
    assert "Energy not measured" not in text


def test_power_runs_option(synthetic: Path, tmp_path: Path) -> None:
    html_path = tmp_path / "report.html"
    report_json(synthetic, "--html", str(html_path), "--power-runs", "dddd-c1,bbbb-c2")
    assert html_path.read_text().count("data:image/png;base64,") == 5


def test_table_on_stdout(synthetic: Path) -> None:
    proc = lem_ray("report", str(synthetic), cwd=synthetic.parent)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "energy: 5 groups by experiment_id" in out and "throughput and latency: 5 groups" in out
    assert "0.52 ± 0.02" in out and "[0.5, 0.54]" in out and "no CI (n<2)" in out
    assert "invalid bbbb-c2 attempt 1 (bbbb): throttled" in out
    assert "failed  eeee-c1 attempt 2 (eeee): RuntimeError: CUDA out of memory" in out
    assert f"summary: {(synthetic / 'summary' / 'summary.parquet').absolute()}" in out


def test_uncommitted_files_are_ignored(synthetic: Path) -> None:
    before = report_json(synthetic)["groups"]
    (synthetic / "experiments" / ".ffff-c1-a1.parquet.0123.tmp").write_bytes(b"PAR1 half-written")
    assert report_json(synthetic)["groups"] == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["{missing}"], "{missing}: no such directory"),
        (["{empty}"], "{empty}: no experiments"),
        (["{results}", "--group-by", "bogus"], "--group-by: unknown key 'bogus'"),
        (
            ["{results}", "--group-by", "decoder"],
            "--group-by: 'decoder' is a section of the config",
        ),
        (["{results}", "--group-by", ","], "--group-by: name at least one key"),
        (
            ["{results}", "--html", "{tmp}/r.html", "--power-runs", "zzzz-c1"],
            "--power-runs: unknown run_id 'zzzz-c1'",
        ),
    ],
)
def test_bad_input_one_line_exit_2(
    synthetic: Path, tmp_path: Path, args: list[str], expected: str
) -> None:
    (tmp_path / "empty").mkdir()
    names = {"missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty"),
             "results": str(synthetic), "tmp": str(tmp_path)}
    proc = lem_ray("report", *[a.format(**names) for a in args], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"lem-ray: error: {expected.format(**names)}"), proc.stderr
    assert not (synthetic / "summary").exists() and not (tmp_path / "r.html").exists()


def test_pareto_mask() -> None:
    xs, ys = [1.0, 2.0, 3.0, 2.0, 1.0], [5.0, 3.0, 1.0, 4.0, 6.0]
    assert pareto_mask(xs, ys) == [True, True, True, False, False]
    assert pareto_mask(xs, ys, minimise_x=False) == [False, False, True, False, False]
    assert pareto_mask([1.0, 1.0], [2.0, 2.0]) == [True, True], "ties dominate neither"


@pytest.fixture(scope="module")
def cpu_campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 experiments (batch 1 and 2) x 3 cycles of the tiny model on a local Ray, on CPU."""
    from lem_ray.execution.driver.campaign import run_campaign

    out = tmp_path_factory.mktemp("campaign") / "results"
    with isolated_ray():
        result = run_campaign(
            {
                "campaign_name": "report",
                "base": TINY_BASE,
                "grid": {
                    "backends": ["pytorch"],
                    "backend_overrides": {"pytorch": {"batch_size": [1, 2]}},
                },
                "execution": {
                    "cycles": 3,
                    "structure": "interleaved",
                    "validity": {"max_cycle_cv": 0.5},
                },
            },
            results_dir=out,
        )
    assert result.counts["ok"] == 6
    return out


@pytest.mark.slow
def test_report_on_cpu_campaign(cpu_campaign: Path, tmp_path: Path) -> None:
    html_path = tmp_path / "report.html"
    result = report_json(cpu_campaign, "--html", str(html_path))
    assert len(result["groups"]) == 2 and result["excluded"] == []
    assert sorted(g["batch_size"] for g in result["groups"]) == [1, 2]
    for g in result["groups"]:
        assert g["runs_ok"] == 3 and g["device"] == "cpu" and g["energy_source"] is None
        assert g["max_cycle_cv"] == 0.5, "the campaign's validity.max_cycle_cv"
        assert g["throughput_tok_s_n"] == 3 and g["itl_ms_p50_n"] == 3
        assert (
            g["throughput_tok_s_ci_low"]
            <= g["throughput_tok_s_mean"]
            <= g["throughput_tok_s_ci_high"]
        )
        assert g["throughput_tok_s_std"] > 0
        for metric in (
            "energy_j_per_output_token",
            "energy_adjusted_j_per_output_token",
            "avg_power_w",
        ):
            assert g[f"{metric}_n"] == 0 and g[f"{metric}_mean"] is None
    text = html_path.read_text()
    assert "Energy not measured" in text and text.count("data:image/png;base64,") == 5
    assert "http://" not in text and "https://" not in text

    by_size = report_json(cpu_campaign, "--group-by", "pytorch.batch_size")["groups"]
    assert [g["group"] for g in by_size] == ["pytorch.batch_size=1", "pytorch.batch_size=2"]
    pooled = report_json(cpu_campaign, "--group-by", "fp_precision")["groups"]
    assert [(g["group"], g["runs_ok"], g["ttft_ms_p50_n"]) for g in pooled] == [
        ("fp_precision=float32", 6, 6)
    ]


@pytest.mark.slow
def test_measure_window_recorded(cpu_campaign: Path) -> None:
    exps = pq.read_table(cpu_campaign / "experiments").to_pylist()
    for e in exps:
        assert e["measure_end_epoch_s"] - e["measure_start_epoch_s"] == pytest.approx(
            e["energy_window_s"]
        )
        assert (
            e["started_at"].timestamp() < e["measure_start_epoch_s"] < e["finished_at"].timestamp()
        )


@pytest.mark.slow
def test_join_with_duckdb_and_polars(cpu_campaign: Path) -> None:
    import duckdb
    import polars as pl

    ids = "campaign_name, experiment_id, run_id, cycle, attempt"
    exps, reqs = cpu_campaign / "experiments" / "*.parquet", cpu_campaign / "requests" / "*.parquet"
    per_run = duckdb.sql(
        f"SELECT e.run_id, e.output_tokens, count(*) AS n, sum(r.output_tokens) AS tokens "
        f"FROM read_parquet('{exps}') e JOIN read_parquet('{reqs}') r USING ({ids}) "
        f"WHERE e.status = 'ok' GROUP BY ALL ORDER BY e.run_id"
    ).fetchall()
    assert len(per_run) == 6
    assert all(
        n == TINY_BASE["prompts"]["count"] and tokens == out for _, out, n, tokens in per_run
    )

    joined = pl.read_parquet(exps).join(
        pl.read_parquet(reqs), on=[c.strip() for c in ids.split(",")]
    )
    assert joined.height == 6 * TINY_BASE["prompts"]["count"]
    assert (
        joined.group_by("run_id").len().get_column("len").to_list()
        == [TINY_BASE["prompts"]["count"]] * 6
    )


def test_cycle_cv_and_labels(synthetic: Path, tmp_path: Path) -> None:
    """Each group's cycle-to-cycle CV of J/output token and throughput over its counted runs,
    marked above --max-cycle-cv in the JSON, the table and the HTML; groups named by what
    differs between them."""
    data = report_json(synthetic, "--max-cycle-cv", "0.06")
    groups = {g["group"]: g for g in data["groups"]}
    energy = counted_values(["aaaa"], "energy_j_per_output_token")
    throughput = counted_values(["aaaa"], "throughput_tok_s")
    aaaa = groups["aaaa"]
    assert aaaa["energy_j_per_output_token_cycle_cv"] == pytest.approx(
        np.std(energy, ddof=1) / np.mean(energy))
    assert aaaa["throughput_tok_s_cycle_cv"] == pytest.approx(
        np.std(throughput, ddof=1) / np.mean(throughput))
    assert aaaa["throughput_tok_s_cycle_cv"] > 0.06 and aaaa["cycle_cv_above"] is True
    assert groups["dddd"]["energy_j_per_output_token_cycle_cv"] < 0.06
    assert groups["dddd"]["cycle_cv_above"] is False
    assert groups["bbbb"]["energy_j_per_output_token_cycle_cv"] is None, "one counted run"
    assert aaaa["label"] == "pytorch · batch 1 · 1 GPU · fp16 · decoder.temperature=1.0"
    assert groups["dddd"]["label"] == "vllm · batch 64 · 2 GPUs · fp16 · decoder.temperature=0.7"
    strict = report_json(synthetic)
    assert {g["group"] for g in strict["groups"] if g["cycle_cv_above"]} == {"aaaa", "dddd"}

    table = lem_ray("report", str(synthetic), "--max-cycle-cv", "0.06", cwd=synthetic.parent)
    assert "T 6.1% > 6%" in table.stdout and "above it: pytorch · batch 1" in table.stdout
    page = tmp_path / "r.html"
    assert lem_ray("report", str(synthetic), "--max-cycle-cv", "0.06", "--html", str(page),
                   cwd=synthetic.parent).returncode == 0
    html = page.read_text()
    assert html.count('class="num cv-above"') == 2, "energy and throughput tables"
    assert "vllm · batch 64 · 2 GPUs" in html


def html_plot_calls(results_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    *args: str) -> dict[str, list]:
    """Run `report --html` in this process, recording what each plot is asked to draw."""
    from click.testing import CliRunner

    from lem_ray.cli.main import main
    from lem_ray.results import plots

    calls: dict[str, list] = {"pareto": [], "points": [], "batch": [], "power": []}
    png = b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(plots, "pareto_png", lambda groups, x, y, min_x, min_y:
                        calls["points"].append(plots.point_labels(groups))
                        or calls["pareto"].append((x, y, min_x, min_y)) or png)
    monkeypatch.setattr(plots, "batch_size_png", lambda *args: calls["batch"].append(args) or png)
    monkeypatch.setattr(
        plots,
        "power_png",
        lambda runs: (
            calls["power"].append(
                [(r.title.split(":")[0], len(r.samples), r.measure_window_s) for r in runs]
            )
            or png
        ),
    )
    result = CliRunner().invoke(
        main, ["report", str(results_dir), "--html", str(tmp_path / "r.html"), *args]
    )
    assert result.exit_code == 0, result.output
    return calls


@pytest.fixture(scope="module")
def fast_path_campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eager decode over a static cache and the fast path (torch_compile over it: lem-ray's
    compiled loop, run eagerly on the CPU) at batch 1 and 2, 2 cycles each, on CPU."""
    from lem_ray.execution.driver.campaign import run_campaign

    out = tmp_path_factory.mktemp("fastpath") / "results"
    with isolated_ray():
        result = run_campaign({
            "campaign_name": "fastpath",
            "base": {**TINY_BASE, "pytorch": {"cache_implementation": "static"}},
            "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {
                "batch_size": [1, 2], "torch_compile": [None, "reduce-overhead"]}}},
            "execution": {"cycles": 2},
        }, results_dir=out)
    assert result.counts["ok"] == 8
    return out


@pytest.mark.slow
def test_fast_path_and_eager_are_told_apart(fast_path_campaign: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """At one batch size, eager decode and the fast path are two groups in the tables (the
    report's and the end-of-campaign one), the HTML and on the Pareto plots, and two lines on
    the batch-size plot, named by what differs."""
    eager, fast = "torch_compile=null", "torch_compile=reduce-overhead"
    labels = [f"batch {b} · {mode}" for b in (1, 2) for mode in (eager, fast)]
    assert sorted(g["label"] for g in report_json(fast_path_campaign)["groups"]) == labels

    table = lem_ray("report", str(fast_path_campaign), cwd=fast_path_campaign.parent)
    assert table.returncode == 0 and "…" not in table.stdout, "no label cut short"
    assert "ITL p99 ms" in table.stdout, "the last column still fits"
    page = tmp_path / "r.html"
    assert lem_ray("report", str(fast_path_campaign), "--html", str(page),
                   cwd=fast_path_campaign.parent).returncode == 0
    assert all(label in page.read_text() for label in labels)

    calls = html_plot_calls(fast_path_campaign, tmp_path, monkeypatch)
    assert [sorted(points) for points in calls["points"]] == [labels] * 3
    [(groups, series)] = calls["batch"]
    lines: dict[str, list[tuple[int, int]]] = {}
    for g, name in zip(groups, series):
        lines.setdefault(name, []).append((g["batch_size"], g["runs_ok"]))
    assert lines == {"torch_compile=null": [(1, 2), (2, 2)],
                     "torch_compile=reduce-overhead": [(1, 2), (2, 2)]}

    eager_runs = [r for r in pq.read_table(fast_path_campaign / "experiments").to_pylist()
                  if json.loads(r["config_json"])["pytorch"]["torch_compile"] is None]
    from lem_ray.results.report import batch_series

    _, one_line = batch_series(eager_runs)
    assert set(one_line) == {"builtin:tiny-llama · pytorch · 1 GPU · fp32"}

    from lem_ray.cli.common import console
    from lem_ray.cli.render import print_summary
    from lem_ray.execution.driver.campaign import CampaignResult
    from lem_ray.results.summary import summarize

    summary, _ = summarize(fast_path_campaign)
    assert sorted(s["label"] for s in summary) == labels
    capsys.readouterr()
    print_summary(CampaignResult("fastpath", str(fast_path_campaign), {
        "ok": 8, "failed": 0, "skipped_done": 0, "planned": 8}, summary), console())
    out = capsys.readouterr().out
    assert out.count(fast) == out.count(eager) == 2 and "…" not in out


def test_pareto_plots_minimise_energy_and_latency_maximise_throughput(
        synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = html_plot_calls(synthetic, tmp_path, monkeypatch, "--latency", "e2e")
    assert calls["pareto"] == [
        ("e2e_ms_p50", "energy_j_per_output_token", True, True),
        ("throughput_tok_s", "energy_j_per_output_token", False, True),
        ("e2e_ms_p50", "throughput_tok_s", True, False),
    ]


def test_power_plot_shows_the_chosen_runs(synthetic: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = html_plot_calls(synthetic, tmp_path, monkeypatch, "--power-runs", "dddd-c1,bbbb-c2")[
        "power"
    ]
    window = (T0_S + 100 * (10 * 3 + 1) + 3, T0_S + 100 * (10 * 3 + 1) + 3 + WINDOW_S)
    # dddd-c1: 2 GPUs x 260 samples (-3 s to +23 s of its window); bbbb-c2 has no samples written
    assert chosen == [
        [
            ("dddd-c1 attempt 1", 2 * 260, window),
            ("bbbb-c2 attempt 1", 0, pytest.approx((T0_S + 100 * 12 + 3, T0_S + 100 * 12 + 23))),
        ]
    ]
    default = html_plot_calls(synthetic, tmp_path, monkeypatch)["power"]
    assert [title for title, _, _ in default[0]] == [
        "cccc-c1 attempt 1", "aaaa-c1 attempt 1", "bbbb-c1 attempt 1", "dddd-c1 attempt 1"]


def test_power_plot_draws_the_steady_state_windows_edges() -> None:
    """A run under traffic gets its steady-state window (from the row's steady_* columns)
    drawn on its power panel; a run without one is drawn as before."""
    from lem_ray.cli.report_cmd import _steady_window_s
    from lem_ray.results import plots

    row = {"steady_start_epoch_s": T0_S + 2.0, "steady_duration_s": 11.5}
    assert _steady_window_s(row) == (T0_S + 2.0, T0_S + 13.5)
    assert _steady_window_s({"steady_start_epoch_s": None, "steady_duration_s": None}) is None
    samples = [{"gpu_uuid": "GPU-1", "t_s": T0_S + i / 10, "power_w": 300.0 + i % 7}
               for i in range(160)]
    plain = plots.PowerRun("r", samples, (T0_S, T0_S + 15.0))
    steady = plots.PowerRun("r", samples, (T0_S, T0_S + 15.0), _steady_window_s(row))
    assert plots.power_png([steady]) != plots.power_png([plain])
    assert plots.power_png([plain]) == plots.power_png([plots.PowerRun("r", samples,
                                                                       (T0_S, T0_S + 15.0))])


def test_bootstrap_interval_is_numpys_percentile_bit_for_bit() -> None:
    """The fast path (resampling drawn once per size, percentile without numpy's overhead)
    gives exactly the interval of the plain computation, at every size and level."""
    from lem_ray.results.bootstrap import bootstrap_ci

    rng = np.random.default_rng(7)
    for size in range(2, 12):
        for level in (0.5, 0.9, 0.95, 0.99):
            values = rng.normal(size=size) * 10.0 ** rng.integers(-3, 4)
            data = np.sort(values)
            means = data[np.random.default_rng(0).integers(0, size, size=(1000, size))].mean(axis=1)
            tail = 100 * (1 - level) / 2
            assert bootstrap_ci(values, level=level) == tuple(
                float(x) for x in np.percentile(means, [tail, 100 - tail]))


def test_report_lists_at_most_50_groups_and_keeps_all_in_the_files(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lem_ray.cli.main import main

    for i in range(60):
        eid = f"{i:012x}"
        write_rows(tmp_path, "experiments", f"{eid}-c1-a1", [{
            **empty_row("experiments"), "campaign_name": "c", "experiment_id": eid,
            "run_id": f"{eid}-c1", "cycle": 1, "attempt": 1, "status": "ok",
            "throughput_tok_s": 100.0 + i}])
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "the first 50 of 60 groups listed" in result.output
    assert "00000000003b" not in result.output
    assert pq.read_table(tmp_path / "summary" / "summary.parquet").num_rows == 60


def test_cycle_cv_says_when_cycles_ran_on_engines_loaded_apart() -> None:
    """engines: distinct engine_id among a group's counted runs; the CV text names them when
    more than one (their spread then includes the engines' own differences)."""
    from lem_ray.results.report import build_report, cycle_cv_text

    def run(experiment: str, cycle: int, engine: str | None, tok_s: float) -> dict:
        return {"experiment_id": experiment, "run_id": f"{experiment}-{cycle}", "cycle": cycle,
                "attempt": 1, "status": "ok", "valid": True, "validity_flags": [],
                "engine_id": engine, "throughput_tok_s": tok_s,
                "energy_j_per_output_token": 100.0 / tok_s}

    rows = [run("one", 1, "e1", 700.0), run("one", 2, "e1", 705.0), run("one", 3, "e1", 698.0),
            run("apart", 1, "e2", 640.0), run("apart", 2, "e3", 745.0),
            run("apart", 3, "e2", 650.0),
            run("old", 1, None, 500.0), run("old", 2, None, 510.0)]
    groups = {g["group"]: g for g in build_report(rows).groups}
    assert groups["one"]["engines"] == 1 and "engines" not in cycle_cv_text(groups["one"])
    assert groups["apart"]["engines"] == 2
    assert cycle_cv_text(groups["apart"]).endswith("> 5% · 2 engines")
    assert groups["old"]["engines"] is None, "rows from before engine_id"
    assert "engines" not in cycle_cv_text(groups["old"])
    pooled = {
        g["group"]: g
        for g in build_report(
            [r for r in rows if r["experiment_id"] != "apart"]
            + [
                {**r, "experiment_id": "two", "engine_id": "e9"}
                for r in rows
                if r["experiment_id"] == "one"
            ],
            group_by=("attempt",),
        ).groups
    }
    assert pooled["attempt=1"]["engines"] == 1, "two experiments pooled, each on one engine"
    assert "N engines: the cycles ran on N engines loaded apart" in report_text(rows)
    assert "N engines" not in report_text([r for r in rows if r["experiment_id"] != "apart"])


def report_text(rows: list[dict]) -> str:
    """What `lem-ray report` prints for a report of these rows."""
    import io

    from rich.console import Console

    from lem_ray.cli import report_cmd
    from lem_ray.results.report import build_report

    out = io.StringIO()
    report_cmd._print(build_report(rows), Console(file=out, width=200), {})
    return out.getvalue()


def test_host_energy_and_methods_gap_per_group() -> None:
    """GPU+host J/token comes only from runs alone on their node (the row leaves it null
    otherwise); flagged rows are counted whether or not they count; old request rows without
    energy_attribution were split by token share."""
    def run(cycle: int, **row: Any) -> dict[str, Any]:
        return {**empty_row("experiments"), "campaign_name": "c", "experiment_id": "e",
                "run_id": f"e-c{cycle}", "cycle": cycle, "attempt": 1, "status": "ok",
                "valid": True, "validity_flags": [], **row}

    rows = [run(1, energy_j_per_output_token=1.0, energy_with_host_j_per_output_token=1.5,
                host_shared_by_runs=0),
            run(2, energy_j_per_output_token=1.1, energy_with_host_j_per_output_token=None,
                host_shared_by_runs=2),
            run(3, valid=False, validity_flags=["energy_methods_disagree"])]
    requests = [{"run_id": "e-c1", "attempt": 1, "energy_j": 2.0, "output_tokens": 4,
                 "energy_attribution": None},
                {"run_id": "e-c3", "attempt": 1, "energy_j": 99.0, "output_tokens": 1,
                 "energy_attribution": "step"}]
    group = build_report(rows, requests=requests).groups[0]
    assert group["energy_with_host_j_per_output_token_n"] == 1
    assert group["energy_with_host_j_per_output_token_mean"] == 1.5
    assert group["host_shared_runs"] == 1 and group["runs_invalid"] == 1
    assert group["energy_methods_disagree_runs"] == 1
    assert group["request_energy_attribution"] == "token_share", (
        "the invalid run's requests left out"
    )
    assert (
        group["request_energy_j_p99"] == 2.0
        and group["request_energy_j_per_output_token_p50"] == 0.5
    )


def cv_run(cycle: int, tok_s: float | None, j_per_tok: float | None,
           limit: float | None = None, finished_s: float = 0.0) -> dict:
    return {"experiment_id": "x", "run_id": f"x-c{cycle}", "cycle": cycle, "attempt": 1,
            "status": "ok", "valid": True, "validity_flags": [], "throughput_tok_s": tok_s,
            "energy_j_per_output_token": j_per_tok, "max_cycle_cv": limit,
            "finished_at": datetime.fromtimestamp(T0_S + finished_s, timezone.utc)}


@pytest.mark.parametrize("metric", ["throughput", "energy"])
def test_a_cycle_cv_equal_to_the_limit_is_not_above_it(metric: str) -> None:
    """'above' is strictly above: a CV exactly at max_cycle_cv passes, one a float's width
    under the CV is exceeded; either metric alone marks the group."""
    from lem_ray.results.report import build_report, cycle_cv, cycle_cv_text

    values = (700.0, 750.0, 720.0)
    rows = [cv_run(c, v, None) if metric == "throughput" else cv_run(c, None, v)
            for c, v in enumerate(values, 1)]
    cv = cycle_cv(values)
    at = build_report(rows, max_cycle_cv=cv).groups[0]
    assert at["cycle_cv_above"] is False and ">" not in cycle_cv_text(at)
    under = build_report(rows, max_cycle_cv=math.nextafter(cv, 0.0)).groups[0]
    assert under["cycle_cv_above"] is True and ">" in cycle_cv_text(under)
    assert under["max_cycle_cv"] == math.nextafter(cv, 0.0)


def test_report_applies_the_campaigns_max_cycle_cv_unless_given() -> None:
    """The limit the campaign's runs recorded (the most recently finished run's, when a
    campaign ran again with another), else 0.05; an explicit limit wins over both."""
    from lem_ray.results.report import DEFAULT_MAX_CYCLE_CV, build_report

    spread = [cv_run(1, 700.0, None), cv_run(2, 760.0, None)]  # CV 5.8%
    recorded = [{**r, "max_cycle_cv": 0.1} for r in spread]
    assert build_report(spread).groups[0]["max_cycle_cv"] == DEFAULT_MAX_CYCLE_CV
    assert build_report(spread).groups[0]["cycle_cv_above"] is True
    assert build_report(recorded).groups[0]["max_cycle_cv"] == 0.1
    assert build_report(recorded).groups[0]["cycle_cv_above"] is False
    assert build_report(recorded, max_cycle_cv=0.05).groups[0]["cycle_cv_above"] is True
    rerun = [
        cv_run(1, 700.0, None, 0.01, finished_s=10.0),
        cv_run(2, 760.0, None, 0.2, finished_s=20.0),
        cv_run(3, 730.0, None, 0.03, finished_s=5.0),
        {
            **cv_run(3, None, None, 0.04, finished_s=30.0),
            "status": "failed",
            "attempt": 0,
            "max_cycle_cv": None,
        },
    ]
    assert build_report(rerun).groups[0]["max_cycle_cv"] == 0.2


def test_report_command_reads_the_limit_from_the_rows(tmp_path: Path) -> None:
    """`lem-ray report` without --max-cycle-cv applies the limit the runs recorded."""
    out = tmp_path / "results"
    write_synthetic(out, recorded_max_cycle_cv=0.06)
    groups = {g["group"]: g for g in report_json(out)["groups"]}
    assert {g["max_cycle_cv"] for g in groups.values()} == {0.06}
    assert {k for k, g in groups.items() if g["cycle_cv_above"]} == {"aaaa"}
    explicit = report_json(out, "--max-cycle-cv", "0.05")["groups"]
    assert {g["group"] for g in explicit if g["cycle_cv_above"]} == {"aaaa", "dddd"}
    table = lem_ray("report", str(out), cwd=out.parent)
    assert "limit 6%" in table.stdout and "T 6.1% > 6%" in table.stdout


def test_summary_counts_only_the_valid_latest_cycles(synthetic: Path) -> None:
    """cycles_ok: the latest attempt of each cycle, ok and not invalid (valid None counts);
    an experiment with none is left out of the table, its runs listed with their reason."""
    from lem_ray.results.summary import summarize

    summary, excluded = summarize(synthetic)
    by_id = {s["experiment_id"]: s for s in summary}
    assert {k: s["cycles_ok"] for k, s in by_id.items()} == {
        "aaaa": 3, "bbbb": 1, "cccc": 3, "dddd": 3}
    assert by_id["aaaa"]["energy_j_per_output_token"] == pytest.approx(
        np.mean(counted_values(["aaaa"], "energy_j_per_output_token")))
    assert by_id["bbbb"]["throughput_tok_s"] == pytest.approx(
        metrics(8, 1, 0.2)["throughput_tok_s"]
    )
    assert by_id["dddd"]["backend"] == "vllm" and by_id["dddd"]["batch_size"] == 64
    assert by_id["dddd"]["label"] == "vllm · batch 64 · 2 GPUs · fp16 · decoder.temperature=0.7"
    assert sorted((e["run_id"], e["attempt"], e["status"]) for e in excluded) == [
        ("bbbb-c2", 1, "invalid"), ("bbbb-c3", 1, "failed"), ("eeee-c1", 2, "failed")]
