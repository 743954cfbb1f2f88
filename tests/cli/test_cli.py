"""The CLI contract: dry-run JSON, one-line errors with exit code 2, nothing created."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cli.support import lem_ray
from tests.conftest import TINY_BASE

CAMPAIGN = {
    "campaign_name": "cli",
    "base": TINY_BASE,
    "grid": {
        "backends": ["pytorch", "tensorrt"],
        "shared": {"fp_precision": ["float32", "bfloat16"]},
        "backend_overrides": {"pytorch": {"batch_size": [1, 2]}},
    },
    "execution": {"cycles": 2},
}


def test_dry_run_json(tmp_path: Path, write_campaign) -> None:
    path = write_campaign(CAMPAIGN)
    proc = lem_ray("campaign", str(path), "--dry-run", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert len(plan["experiments"]) == 5
    assert {e["backend"] for e in plan["experiments"]} == {"pytorch", "tensorrt"}
    assert all(
        len(e["experiment_id"]) == 12 and e["config"]["model_name"] for e in plan["experiments"]
    )
    assert plan["rejected"] == [{
        "backend": "tensorrt", "combination": {"fp_precision": "float32"},
        "reason": "fp_precision: float32 is not supported by tensorrt",
    }]
    assert len(plan["runs"]) == 10 and plan["counts"]["runs"] == 10
    assert [e["label"] for e in plan["experiments"]] == [
        "pytorch · batch 1 · fp32", "pytorch · batch 2 · fp32", "pytorch · batch 1 · bf16",
        "pytorch · batch 2 · bf16", "tensorrt · batch 8 · bf16"], \
        "a backend's options, absent from the other backend's experiments, set nothing apart"
    args = {e["backend"]: e["engine_args"] for e in plan["experiments"]}
    assert args["tensorrt"]["constructor"]["kwargs"]["build_config"]["max_batch_size"] == 8
    assert args["tensorrt"]["sampling"]["kwargs"]["top_k"] == 1
    assert args["pytorch"]["sampling"]["kwargs"]["num_beams"] == 1
    assert sorted(os.listdir(tmp_path)) == ["campaign.yaml"], "dry run writes nothing"


def test_default_campaign_dry_run(tmp_path: Path) -> None:
    proc = lem_ray("campaign", "--dry-run", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["campaign_name"] == "quickstart"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "file not found"),
        ("campaign_name: x\ngrid: {backends: [pytorch\n", "YAML syntax error: line"),
        (
            {**CAMPAIGN, "execution": {"cycels": 3}},
            "execution.cycels: unknown key 'cycels'; allowed keys: cycles",
        ),
        (
            {**CAMPAIGN, "execution": {"cycles": "three"}},
            "execution.cycles: Input should be a valid integer",
        ),
        (
            {**CAMPAIGN, "base": {**TINY_BASE, "max_output_tokens": 0}},
            "base.max_output_tokens: Input should be greater",
        ),
        ({"campaign_name": "empty"}, "grid: the campaign has no experiments to run"),
        (
            {
                **CAMPAIGN,
                "base": {**TINY_BASE, "prompts": {"source": "file", "path": "missing.jsonl"}},
            },
            "prompts.path: prompt file not found",
        ),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path: Path, write_campaign, content, expected: str) -> None:
    if content is None:
        path = tmp_path / "absent.yaml"
    elif isinstance(content, str):
        path = tmp_path / "broken.yaml"
        path.write_text(content)
    else:
        path = write_campaign(content)
    before = sorted(os.listdir(tmp_path))
    for extra in ([], ["--dry-run"]):
        proc = lem_ray("campaign", str(path), *extra, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"lem-ray: error: {path}: ") and expected in lines[0], lines[0]
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert sorted(os.listdir(tmp_path)) == before, "nothing created"


@pytest.mark.slow
def test_campaign_end_to_end_via_cli(tmp_path: Path, write_campaign) -> None:
    campaign = {
        "campaign_name": "e2e",
        "base": TINY_BASE,
        "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 3]}}},
        "execution": {"cycles": 1},
        "output": {"results_dir": "out/e2e"},
    }
    path = write_campaign(campaign)
    proc = lem_ray("campaign", str(path), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["counts"]["ok"] == 2 and result["counts"]["failed"] == 0
    assert Path(result["results_dir"]) == Path("out/e2e")
    assert {s["batch_size"] for s in result["summary"]} == {1, 3}
    assert all(s["throughput_tok_s"] > 0 for s in result["summary"])
    owner = json.loads((tmp_path / "out/e2e/campaign.json").read_text())
    assert owner["campaign_name"] == "e2e" and len(owner["grid_fingerprint"]) == 16

    other = lem_ray(
        "campaign",
        str(write_campaign({**campaign, "campaign_name": "beta"}, "b.yaml")),
        cwd=tmp_path,
    )
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "out/e2e: belongs to campaign 'e2e', not 'beta'" in other.stderr

    grown = {**campaign, "grid": {"backends": ["pytorch"],
                                  "backend_overrides": {"pytorch": {"batch_size": [1, 3, 5]}}}}
    rerun = lem_ray("campaign", str(write_campaign(grown, "grown.yaml")), "--json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout)["counts"] == {
        "planned": 3, "skipped_done": 2, "ran": 1, "failed": 0, "ok": 1, "retried": 0}, \
        "the same campaign with a changed grid adds its new experiment"
    grown_owner = json.loads((tmp_path / "out/e2e/campaign.json").read_text())
    assert grown_owner["grid_fingerprint"] != owner["grid_fingerprint"]

    status = lem_ray("status", "out/e2e", cwd=tmp_path)
    assert status.returncode == 0 and "3 ok" in status.stdout and "0 pending" in status.stdout

    unconfirmed = lem_ray("campaign", str(path), "--fresh", cwd=tmp_path)
    assert unconfirmed.returncode == 2 and "confirm with --yes" in unconfirmed.stderr
    fresh = lem_ray("campaign", str(path), "--fresh", "--yes", "--json", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert json.loads(fresh.stdout)["counts"]["ran"] == 2
    moved = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("e2e.old-")]
    assert len(moved) == 1 and (tmp_path / "out" / moved[0] / "experiments").is_dir()


def test_bracketed_text_is_printed_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """Errors, paths and config values reach the terminal whole: rich would read
    `lem-ray[vllm]` as a markup tag and drop it."""
    from lem_ray.cli.common import console
    from lem_ray.cli.render import LiveProgress, print_summary
    from lem_ray.execution.driver.campaign import CampaignResult
    from lem_ray.execution.driver.completion import Progress
    from lem_ray.results.rows import RunRows

    error = ("BackendUnavailable: the vllm backend needs vLLM; install it with: "
             "pip install 'lem-ray[vllm]'")
    row = {"experiment_id": "e[1]", "cycle": 1, "attempt": 1, "backend": "vllm",
           "fp_precision": "[bold]x", "batch_size": 4, "status": "failed", "error": error}
    with LiveProgress(console(stderr=True), total=2, labels={"e[1]": "[bold]x · batch 4"}) as live:
        live(Progress(total=2, done=0, running=1), RunRows({**row, "status": "ok", "error": None,
                                                            "throughput_tok_s": 1.0,
                                                            "energy_j_per_output_token": None}))
        live(Progress(total=2, done=1, running=1), RunRows(row, retryable=True))
        live(Progress(total=2, done=2, failed=1), RunRows(row))
    failure = {"status": "failed", "experiment_id": "e[1]", "cycle": 1, "attempt": 1,
               "label": "[bold]x · batch 4", "reason": error}
    print_summary(CampaignResult("c[x]", "out/[red]r", {"ok": 0, "failed": 1, "skipped_done": 0,
                                                        "planned": 1}, failures=[failure]),
                  console())
    out, err = capsys.readouterr()
    assert err.count("lem-ray[vllm]") == 2, "the retry line and the failed line"
    assert "ok     e[1] c1 a1 [bold]x · batch 4" in err
    assert "failed e[1] c1 a1 [bold]x · batch 4" in err
    assert "failed e[1] c1 a1 [bold]x · batch 4: BackendUnavailable" in out, "as its live line"
    assert "lem-ray[vllm]" in out and "c[x]:" in out and "Results: out/[red]r" in out


def test_ctrl_c_before_any_run_exits_130() -> None:
    """Ctrl-C while Ray starts is an interruption (130, as during the runs), not a refusal."""
    import click

    from lem_ray.cli.common import OneLineGroup

    group = OneLineGroup("lem-ray")

    @group.command()
    def start() -> None:
        raise KeyboardInterrupt

    @group.command()
    def refuse() -> None:
        raise click.Abort

    for name, code in (("start", 130), ("refuse", 1)):
        with pytest.raises(SystemExit) as exited:
            group.main([name], prog_name="lem-ray")
        assert exited.value.code == code


def test_live_lines_name_runs_by_what_sets_them_apart(capsys: pytest.CaptureFixture[str]) -> None:
    """Eager and fast-path runs of one batch size: their lines read apart, not by id only."""
    from lem_ray.cli.common import console
    from lem_ray.cli.render import LiveProgress
    from lem_ray.execution.driver.completion import Progress
    from lem_ray.planning.plan import plan_campaign
    from lem_ray.results.rows import RunRows

    experiments = [
        {"pytorch": {"batch_size": 2}},
        {"pytorch": {"batch_size": 2, "torch_compile": "reduce-overhead",
                     "cache_implementation": "static"}}]
    plan = plan_campaign({"campaign_name": "paths", "base": {**TINY_BASE, "backend": "pytorch"},
                          "experiments": experiments})
    labels = plan.labels()
    eager, fast = (labels[e.experiment_id] for e in plan.experiments)
    assert "torch_compile=null" in eager and "torch_compile=reduce-overhead" in fast
    row = {"experiment_id": plan.experiments[1].experiment_id, "cycle": 1, "attempt": 1,
           "backend": "pytorch", "fp_precision": "float32", "batch_size": 2, "status": "ok",
           "error": None, "throughput_tok_s": 5.0, "energy_j_per_output_token": None}
    with LiveProgress(console(stderr=True), total=1, labels=labels) as live:
        live(Progress(total=1, done=1), RunRows(row))
    err = " ".join(capsys.readouterr().err.split())
    assert f"{row['experiment_id']} c1 a1 {fast}: 5 tok/s" in err


# Batch 1 three ways: eager decode, eager over a static cache, and the compiled fast path.
THREE_WAYS = {
    "campaign_name": "threeways",
    "base": {**TINY_BASE, "backend": "pytorch"},
    "experiments": [
        {"pytorch": {"batch_size": 1}},
        {"pytorch": {"batch_size": 1, "cache_implementation": "static"}},
        {"pytorch": {"batch_size": 1, "cache_implementation": "static",
                     "torch_compile": "reduce-overhead"}},
    ],
    "execution": {"cycles": 1},
    "output": {"results_dir": "out"},
}
THREE_LABELS = ("cache_implementation=dynamic · torch_compile=null",
                "cache_implementation=static · torch_compile=null",
                "cache_implementation=static · torch_compile=reduce-overhead")


def first_cells(table: str) -> list[str]:
    """The text of each row's first cell in a rich table, its folded lines joined by spaces."""
    cells: list[str] = []
    for line in table.splitlines():
        if line.startswith(("┡", "├")):
            cells.append("")
        elif line.startswith("│") and cells:
            cells[-1] = f"{cells[-1]} {line.split('│')[1].strip()}".strip()
    return cells


def test_dry_run_names_each_experiment_by_what_sets_it_apart(tmp_path: Path,
                                                             write_campaign) -> None:
    """Eager, static-cache and compiled batch-1 experiments: three rows that read apart, each
    label above its id, and the same labels in the JSON plan."""
    path = write_campaign(THREE_WAYS)
    table = lem_ray("campaign", str(path), "--dry-run", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    plan = json.loads(lem_ray("campaign", str(path), "--dry-run", "--json", cwd=tmp_path).stdout)
    assert [e["label"] for e in plan["experiments"]] == list(THREE_LABELS)
    assert first_cells(table.stdout) == [f"{e['label']} {e['experiment_id']}"
                                         for e in plan["experiments"]]


@pytest.mark.slow
def test_live_lines_end_table_and_report_use_one_label(tmp_path: Path, write_campaign) -> None:
    """The campaign's live lines, its end-of-campaign table, the report (whose text table
    prints its groups' `label`) and its HTML name each experiment with the dry run's label."""
    path = write_campaign(THREE_WAYS)
    proc = lem_ray("campaign", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(lem_ray("campaign", str(path), "--dry-run", "--json", cwd=tmp_path).stdout)
    named = {f"{e['label']} {e['experiment_id']}" for e in plan["experiments"]}
    for e in plan["experiments"]:
        assert f"{e['experiment_id']} c1 a1 {e['label']}: " in proc.stderr, "its live line"
    assert set(first_cells(proc.stdout)) == named, "the end-of-campaign table"
    report = lem_ray("report", "out", "--json", cwd=tmp_path)
    assert {g["group"]: g["label"] for g in json.loads(report.stdout)["groups"]} == {
        e["experiment_id"]: e["label"] for e in plan["experiments"]}
    assert lem_ray("report", "out", "--html", "r.html", cwd=tmp_path).returncode == 0
    assert all(label in (tmp_path / "r.html").read_text() for label in THREE_LABELS)
