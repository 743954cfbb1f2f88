"""Hostile input, one case per finding of issue 13: every refusal is one line on stderr with
exit code 2, never a traceback, nothing created; damaged results are read around, not crashed on.

In-process through click's CliRunner: none of these starts Ray."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from lem_ray.cli.main import main
from lem_ray.config.limits import MAX_INPUT_WORDS
from lem_ray.config.prompts import LengthDistribution
from lem_ray.planning.prompts import synthetic_lengths
from lem_ray.results.ownership import Owner, claim
from tests.cli.support import VALID, dry_run, invoke, refused, with_
from tests.fakes.synthetic_results import write_legacy_manifest


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        (
            "base.prompts.input_len.mean",
            float("inf"),
            "base.prompts.input_len.mean: Input should be a finite number",
        ),
        (
            "execution.validity.temperature_max_c",
            float("nan"),
            "execution.validity.temperature_max_c: Input should be a finite number",
        ),
        (
            "execution.config_gap_s",
            float("inf"),
            "execution.config_gap_s: Input should be a finite number",
        ),
        (
            "execution.telemetry.sample_interval_ms",
            float("nan"),
            "execution.telemetry.sample_interval_ms: Input should be a finite",
        ),
        (
            "base.prompts.input_len",
            {"distribution": "lognormal", "mean": 1e300, "std": 1e300},
            "base.prompts.input_len.mean: Input should be less than or equal to 1048576",
        ),
        ("execution.cycles", True, "execution.cycles: Input should be a valid integer (got True)"),
        (
            "base.max_output_tokens",
            "8",
            "base.max_output_tokens: Input should be a valid integer (got '8')",
        ),
        (
            "base.decoder.do_sample",
            1,
            "base.decoder.do_sample: Input should be a valid boolean (got 1)",
        ),
        ("execution.cycles", 1_000_000_000, "execution.cycles: 2 experiments x 1000000000 cycles"),
        (
            "base.prompts.count",
            1_000_000_000_000,
            "base.prompts.count: Input should be less than or equal to 100000",
        ),
        (
            "base.model_name",
            "builtin:nope",
            "base.model_name: unknown builtin model 'builtin:nope'; builtin models: "
            "builtin:llama-1b, builtin:llama-8b, builtin:tiny-llama",
        ),
        ("grid.shared", {"foo.bar.baz": [1]}, "grid.shared.foo.bar.baz: unknown key 'foo'"),
        (
            "grid.backend_overrides",
            {"pytorch": {"batch_size": []}},
            "grid.backend_overrides.pytorch.batch_size: axis has no values",
        ),
        ("grid.shared", {"fp_precision": []}, "grid.shared.fp_precision: axis has no values"),
        (
            "grid.shared",
            {"decoder.top_k": list(range(200)), "random_seed": list(range(200))},
            "grid: 80000 combinations; a campaign may have at most 10000",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, dotted: str, value: Any,
                                               expected: str) -> None:
    started = time.monotonic()
    refused(dry_run(tmp_path, with_(VALID, dotted, value)), expected)
    assert time.monotonic() - started < 30, "refused at once, not after minutes of planning"


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        ('{"arrival_s": 0, "input_tokens": 4, "output_tokens": 2}\n' * 3,
         "vllm.traffic.trace: 3 requests in the trace for 2 prompts; set prompts.count to 3"),
        ('{"arrival_s": 1, "input_tokens": 4, "output_tokens": 2}\n'
         '{"arrival_s": 0, "input_tokens": 4, "output_tokens": 2}\n',
         "trace.jsonl: arrival_s must be finite, >= 0 and non-decreasing"),
        (None, "vllm.traffic.trace: cannot read"),
    ],
)
def test_a_bad_trace_is_refused_before_anything_runs(tmp_path: Path, trace: str | None,
                                                     expected: str) -> None:
    path = tmp_path / "trace.jsonl"
    if trace is not None:
        path.write_text(trace)
    campaign = {"campaign_name": "t", "base": {
        "model_name": "builtin:tiny-llama", "backend": "vllm",
        "prompts": {"source": "synthetic", "count": 2},
        "vllm": {"traffic": {"mode": "trace", "trace": str(path)}}}}
    refused(dry_run(tmp_path, campaign), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "campaign_name: a\nbase: {}\ncampaign_name: b\n",
            "line 3, column 1: duplicate key 'campaign_name' (first at line 1)",
        ),
        ("campaign_name: a\nexecution: {cycles: 2, cycles: 3}\n", "duplicate key 'cycles'"),
        ("a: &a [*a]\ncampaign_name: a\n", "an alias refers to a node that contains it"),
        ("x: " + "[" * 200 + "]" * 200 + "\n", "nested deeper than 64 levels"),
        (
            "campaign_name: a\nexecution: {validity: {min_window_s: .nan}}\n",
            "Input should be a finite number",
        ),
        ("campaign_name: a\nwhen: 2020-02-30\n", "YAML value error"),
    ],
)
def test_yaml_refusals(tmp_path: Path, text: str, expected: str) -> None:
    refused(dry_run(tmp_path, text), expected)


def test_alias_bomb_is_refused_small_and_fast(tmp_path: Path) -> None:
    """600 bytes of nested aliases once made a 4.3 MB error line, a deeper one 1.25 GB."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "\n".join(lines) + "\ncampaign_name: bomb\n"
    assert len(text) < 700
    started = time.monotonic()
    line = refused(dry_run(tmp_path, text), "more than 100000 values once aliases are expanded")
    assert len(line) < 300 and time.monotonic() - started < 10


def test_large_and_non_utf8_campaign_files(tmp_path: Path) -> None:
    refused(
        dry_run(tmp_path, b"campaign_name: caf\xe9\n"), "not UTF-8 text (byte 0xe9 at offset 18)"
    )
    refused(dry_run(tmp_path, "campaign_name: a\n" + "#" * (1024 * 1024) + "\n"),
            "a campaign file may have at most 1048576")


def test_long_values_are_cut_in_error_lines(tmp_path: Path) -> None:
    line = refused(dry_run(tmp_path, with_(VALID, "execution.cycles", "x" * 10_000)),
                   "execution.cycles: Input should be a valid integer")
    assert len(line) < 300


def test_lognormal_extremes_stay_in_bounds() -> None:
    """The widest lognormal the limits allow: every draw an int within [min, max]."""
    dist = LengthDistribution(distribution="lognormal", mean=1, std=MAX_INPUT_WORDS, min=1,
                              max=MAX_INPUT_WORDS)
    lengths = synthetic_lengths(dist, 2000, seed=3)
    assert all(1 <= n <= MAX_INPUT_WORDS for n in lengths)


def test_experiment_switching_prompts_source_is_replaced(tmp_path: Path) -> None:
    """base has synthetic prompts (with input_len); an experiment reading a file replaces them."""
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"prompt": f"p {i}"}) + "\n" for i in range(5))
    )
    data = {**VALID, "grid": {}, "experiments": [
        {"backend": "pytorch", "prompts": {"source": "file", "path": "p.jsonl", "count": 3}}]}
    result = dry_run(tmp_path, data)
    assert result.exit_code == 0, result.output
    prompts = json.loads(result.stdout)["experiments"][0]["config"]["prompts"]
    assert prompts == {"source": "file", "path": "p.jsonl", "column": "prompt", "count": 3}


@pytest.mark.parametrize(
    ("name", "content", "count", "expected"),
    [
        (
            "latin1.csv",
            "prompt\ncaf\xe9\n".encode("latin-1"),
            None,
            "latin1.csv is not UTF-8 text (byte 0xe9 at offset 10)",
        ),
        (
            "short.jsonl",
            b'{"prompt": "a"}\n{"prompt": "b"}\n',
            5,
            "prompts.count: short.jsonl has 2 non-empty prompts, fewer than prompts.count (5)",
        ),
        (
            "numbers.csv",
            b"prompt\n1\n2\n",
            None,
            "column 'prompt' of numbers.csv holds only numbers, not text",
        ),
        ("broken.jsonl", b'{"prompt": "a"\n', None, "prompts.path: cannot read"),
    ],
)
def test_prompt_files_are_checked_naming_the_experiment(tmp_path: Path, name: str, content: bytes,
                                                         count: int | None, expected: str) -> None:
    (tmp_path / name).write_bytes(content)
    prompts = {"source": "file", "path": name, **({"count": count} if count else {})}
    line = refused(dry_run(tmp_path, with_(VALID, "base.prompts", prompts)), expected)
    assert "experiment " in line and "(builtin:tiny-llama, pytorch)" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["campaign", "--bogus"], "No such option '--bogus'. (see lem-ray campaign --help)"),
        (["nope"], "No such command 'nope'."),
        (["report"], "Missing argument 'RESULTS_DIR'."),
        (["report", "x", "--latency", "slow"], "Invalid value for '--latency'"),
        (
            ["campaign", "--dry-run", "--address", "127.0.0.1:notaport"],
            "--address: '127.0.0.1:notaport': port 'notaport' is not a number",
        ),
        (["campaign", "--dry-run", "--address", "127.0.0.1"], "--address: '127.0.0.1' has no port"),
        (["campaign", "--dry-run", "--address", "http://h:1"], "use HOST:PORT, ray://HOST:PORT"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    refused(invoke(*args, cwd=tmp_path), expected)


def test_unreachable_address_fails_fast_naming_it(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(VALID))
    started = time.monotonic()
    result = invoke("campaign", str(path), "--address", f"127.0.0.1:{port}", cwd=tmp_path)
    refused(result, f"--address: cannot reach a Ray cluster at 127.0.0.1:{port}")
    assert time.monotonic() - started < 30
    assert sorted(os.listdir(tmp_path)) == ["campaign.yaml"]


def test_results_dir_that_is_a_file(tmp_path: Path) -> None:
    """Found before Ray starts (it was a 50-line NotADirectoryError after), dry run included."""
    (tmp_path / "taken").write_text("")
    path = tmp_path / "campaign.yaml"
    for results_dir, expected in (("taken", "taken: the results directory is a file"),
                                  ("taken/out", "taken/out: " )):
        path.write_text(yaml.safe_dump(with_(VALID, "output.results_dir", results_dir)))
        for extra in (["--dry-run"], []):
            refused(invoke("campaign", str(path), *extra, cwd=tmp_path), expected)
    refused(invoke("campaign", str(path), "--results-dir", "taken", cwd=tmp_path),
            "taken: the results directory is a file")


@pytest.mark.parametrize("legacy", [False, True])
def test_another_campaigns_results_dir_is_refused(tmp_path: Path, legacy: bool) -> None:
    """Recorded in campaign.json, or (older directories) in the manifest; --fresh may take it."""
    out = tmp_path / "results"
    if legacy:
        write_legacy_manifest(out, "probe")
    else:
        claim(out, Owner("probe", "0" * 16))
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(VALID))
    for extra in (["--dry-run"], []):
        refused(invoke("campaign", str(path), "--results-dir", "results", *extra, cwd=tmp_path),
                "results: belongs to campaign 'probe', not 'hostile': choose another results "
                "directory, or --fresh")
    ok = invoke("campaign", str(path), "--results-dir", "results", "--dry-run", "--fresh",
                cwd=tmp_path)
    assert ok.exit_code == 0, ok.output
    claim(out, Owner("hostile", "1" * 16))
    same = invoke("campaign", str(path), "--results-dir", "results", "--dry-run", cwd=tmp_path)
    assert same.exit_code == 0, "the same campaign with another grid is welcome"


# --- damaged results: status and report -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "state.json",
            b'{"campaign_name": "x", "ru',
            "state.json: not a lem-ray manifest snapshot",
        ),
        ("state.json", b"[1, 2]", "state.json: not a lem-ray manifest snapshot"),
        ("state.json", b"\xff\xfe", "state.json: not a lem-ray manifest snapshot"),
        (
            "state.json",
            b'{"campaign_name": "x", "runs": {"a-c1": {"state": "ok"}}}',
            "results: not a lem-ray manifest: run 'a-c1': experiment_id is None",
        ),
        (
            "journal-1.jsonl",
            b'garbage\n{"seq": 2, "campaign": "x"}\n',
            "journal-1.jsonl: line 1 is not a journal record",
        ),
        (
            "journal-1.jsonl",
            b'{"seq": 1, "set": {"state": "ok"}, "run": "nope-c1"}\n',
            "results: cannot read the manifest (KeyError",
        ),
    ],
)
def test_status_on_a_damaged_manifest(synthetic_results: Path, name: str, content: bytes,
                                      expected: str) -> None:
    (synthetic_results / "manifest" / name).write_bytes(content)
    refused(invoke("status", str(synthetic_results), cwd=synthetic_results.parent), expected)
    refused(invoke("campaign", "--dry-run", "--results-dir", str(synthetic_results),
                   cwd=synthetic_results.parent), expected)


def test_report_reads_around_damaged_files(synthetic_results: Path) -> None:
    experiments = synthetic_results / "experiments"
    good = sorted(experiments.iterdir())
    truncated = experiments / "truncated.parquet"
    truncated.write_bytes(good[0].read_bytes()[:200])
    (experiments / "notes.txt").write_text("a stray file: not a .parquet name, not read")
    (experiments / "stray.parquet").write_text("a stray file with a Parquet name")
    other = experiments / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other)
    retyped = experiments / "retyped.parquet"
    pq.write_table(pa.table({"campaign_name": ["s"], "experiment_id": ["e"], "run_id": ["e-c1"],
                             "cycle": ["one"], "attempt": [1]}), retyped)
    result = invoke("report", str(synthetic_results), "--json", cwd=synthetic_results.parent)
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert len(warnings) == 4 and all(w.startswith("lem-ray: warning: skipped ") for w in warnings)
    assert f"{truncated}: not a readable Parquet file" in result.stderr
    assert f"{other}: not a lem-ray results file (no column 'campaign_name')" in result.stderr
    assert f"{retyped}: column 'cycle' is string, expected int64" in result.stderr
    assert f"{experiments / 'stray.parquet'}: not a readable Parquet file" in result.stderr
    assert len(json.loads(result.stdout)["groups"]) == 5, "every good file still counted"
    assert truncated.exists() and other.exists(), "a reader leaves files where they are"


def test_report_checks_output_paths_before_writing(synthetic_results: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    for option, target in (("--csv", "afile/x.csv"), ("--html", "afile/x.html"),
                           ("--csv", str(tmp_path))):
        refused(invoke("report", str(synthetic_results), option, target, cwd=tmp_path), option)
        assert not (synthetic_results / "summary").exists(), "nothing written before the check"


def test_unknown_uri_scheme(tmp_path: Path) -> None:
    for args in (["status", "nope://bucket/x"], ["report", "nope://bucket/x"],
                 ["campaign", "--dry-run", "--results-dir", "nope://bucket/x"]):
        refused(invoke(*args, cwd=tmp_path), "nope://bucket/x: cannot open this location")


@pytest.mark.parametrize("offline", [False, True])
def test_hub_model_without_network_fails_fast(tmp_path: Path, offline: bool) -> None:
    """Once 55 s of retries and 10 lines of noise, from every worker; now one line, before Ray."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(with_(VALID, "base.model_name", "no-such-org/no-such-model")))
    env = {"RAY_ADDRESS": "", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
           "HF_HUB_OFFLINE": "1" if offline else ""}
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        started = time.monotonic()
        result = CliRunner().invoke(main, ["campaign", str(path)], env=env, prog_name="lem-ray")
    finally:
        os.chdir(old)
    expected = ("HF_HUB_OFFLINE is set" if offline
                else f"http://127.0.0.1:{port} cannot be reached")
    line = refused(result, "model_name: no-such-org/no-such-model is not in the local Hugging "
                           "Face cache and ")
    assert expected in line and time.monotonic() - started < 30
    assert sorted(os.listdir(tmp_path)) == ["campaign.yaml"]


def test_extends_switching_prompts_source_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "hello"}) + "\n")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(VALID))
    variant = {"_extends": "base.yaml",
               "base": {"prompts": {"source": "file", "path": "p.jsonl"}}}
    result = dry_run(tmp_path, variant)
    assert result.exit_code == 0, result.output
    prompts = json.loads(result.stdout)["experiments"][0]["config"]["prompts"]
    assert prompts == {"source": "file", "path": "p.jsonl", "column": "prompt", "count": None}
