"""Issue 22: every value bounded and every error one line. Control characters, webhook URLs and
timeouts, schedule durations, seeds, token counts against the model's positions, other
timeouts: refused in one line (exit 2, nothing created) by `--dry-run`. Webhooks that fail at
send time, damaged gpu_time/ files and large prompt files: tolerated, in bounded memory.

None of these starts Ray."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lem_ray.assets import ASSETS_DIR
from lem_ray.config.automation import NotifyConfig
from lem_ray.config.prompts import FilePrompts
from lem_ray.errors import ConfigError
from lem_ray.execution.driver.automation import notified, send_notification
from lem_ray.planning.plan import plan_campaign
from lem_ray.planning.prompts import file_prompts
from lem_ray.results.gpu_time import PHASES, gpu_seconds
from tests.cli.support import VALID, dry_run, invoke, refused, with_
from tests.conftest import TINY_BASE, ray_env

SECRET = "s3cr3t-token"


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        (
            "output.results_dir",
            "res\x00ults",
            "output.results_dir: contains the control character '\\x00' at position 3",
        ),
        (
            "base.prompts",
            {"source": "file", "path": "p\x00.jsonl"},
            "base.prompts.path: contains the control character '\\x00'",
        ),
        ("base.model_name", "org/\nmodel", "base.model_name: contains the control character '\\n'"),
        (
            "runtime_env",
            {"pytorch": "env\x00.yaml"},
            "runtime_env: pytorch: contains the control character '\\x00'",
        ),
    ],
)
def test_control_characters_are_refused_naming_the_key(tmp_path: Path, dotted: str, value: Any,
                                                       expected: str) -> None:
    refused(dry_run(tmp_path, with_(VALID, dotted, value)), expected)


def test_control_characters_in_extends_and_results_dir_option(tmp_path: Path) -> None:
    refused(dry_run(tmp_path, '_extends: "base\\0.yaml"\ncampaign_name: x\n'),
            "campaign.yaml: _extends: contains the control character '\\x00' at position 4")
    refused(dry_run(tmp_path, VALID, "--results-dir", "res\tults"),
            "--results-dir: contains the control character '\\t' at position 3")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"file:///tmp/{SECRET}", "must be an http:// or https:// URL (it has file://)"),
        (f"ftp://host/{SECRET}", "must be an http:// or https:// URL (it has ftp://)"),
        (f"hooks.example.com/{SECRET}", "must be an http:// or https:// URL (it has no scheme)"),
        (f"http:///{SECRET}", "is not a URL: it has no host"),
        (f"http://[::1/{SECRET}", "is not a URL (a bad host or port)"),
        (f"https://host:99999/{SECRET}", "is not a URL (a bad host or port)"),
        (f"https://host/{SECRET} x", "is not a URL: it contains a space or a control character"),
    ],
)
def test_webhook_url_is_refused_without_printing_it(tmp_path: Path, url: str,
                                                    expected: str) -> None:
    line = refused(dry_run(tmp_path, with_(VALID, "notify", {"webhook_url": url})),
                   f"notify.webhook_url: the webhook URL {expected}")
    assert SECRET not in line


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        (
            "notify",
            {"webhook_url": "http://h/x", "timeout_s": 1e300},
            "notify.timeout_s: Input should be less than or equal to 300",
        ),
        (
            "notify",
            {"webhook_url_env": "HOOK\x00"},
            "notify.webhook_url_env: String should match pattern",
        ),
        (
            "schedule",
            {"every": "1h", "for": "99999999999d"},
            "schedule.for: a duration may be at most 366d",
        ),
        (
            "schedule",
            {"every": 1e12, "for": "2d"},
            "schedule.every: a duration may be at most 366d",
        ),
        ("base.random_seed", 10**30, "base.random_seed: a seed must be from 0 to 4294967295"),
        ("base.random_seed", -1, "base.random_seed: a seed must be from 0 to 4294967295"),
        ("execution.seed", 2**32, "execution.seed: a seed must be from 0 to 4294967295"),
        ("base.prompts.seed", 2**64, "base.prompts.seed: a seed must be from 0 to 4294967295"),
        (
            "base.max_output_tokens",
            10**12,
            "base.max_output_tokens: Input should be less than or equal to 16777216",
        ),
        (
            "base.warmup",
            {"mode": "cv", "max_s": 1e12},
            "base.warmup.max_s: Input should be less than or equal to 604800",
        ),
        (
            "base.warmup",
            {"mode": "fixed", "requests": 10**12},
            "base.warmup.requests: Input should be less than or equal to 100000",
        ),
        (
            "base.gpus_per_experiment",
            10**30,
            "base.gpus_per_experiment: Input should be less than or equal to 4096",
        ),
        (
            "grid.backend_overrides",
            {"pytorch": {"batch_size": [2**70]}},
            "grid.backend_overrides.pytorch.batch_size: "
            "Input should be less than or equal to 100000",
        ),
        (
            "execution.baseline.ttl_s",
            1e300,
            "execution.baseline.ttl_s: Input should be less than or equal to 604800",
        ),
        (
            "execution.runtime_env_timeout_s",
            1e300,
            "execution.runtime_env_timeout_s: Input should be less than or equal to 604800",
        ),
    ],
)
def test_values_are_bounded_when_the_campaign_is_read(tmp_path: Path, dotted: str, value: Any,
                                                      expected: str) -> None:
    refused(dry_run(tmp_path, with_(VALID, dotted, value)), expected)


def test_token_counts_beyond_the_models_positions(tmp_path: Path) -> None:
    """Shipped models and local folders: from their config.json, before Ray starts."""
    data = with_(with_(VALID, "base.max_input_tokens", 2000), "base.max_output_tokens", 49)
    line = refused(dry_run(tmp_path, data), "max_input_tokens + max_output_tokens = 2049, more "
                                            "than the 2048 positions of builtin:tiny-llama")
    assert "(builtin:tiny-llama, pytorch)" in line
    fits = dry_run(tmp_path, with_(data, "base.max_output_tokens", 48))
    assert fits.exit_code == 0, fits.output

    model = tmp_path / "model"
    shutil.copytree(ASSETS_DIR / "models" / "tiny-llama", model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 32
    (model / "config.json").write_text(json.dumps(config))
    local = with_(VALID, "base.model_name", str(model))
    refused(dry_run(tmp_path, local), f"= 40, more than the 32 positions of {model}")
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (model / "config.json").write_text(json.dumps(config))
    scaled = dry_run(tmp_path, with_(local, "base.max_input_tokens", 120))
    assert scaled.exit_code == 0, f"yarn x4: 128 positions; {scaled.output}"


def test_token_counts_of_a_hub_model_in_the_local_cache(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id is checked when its config.json is in the cache, never over the network."""
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--org--gpt" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"n_positions": 32}))
    (tmp_path / "hub" / "models--org--gpt" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--gpt" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    campaign = with_(with_(VALID, "base.model_name", "org/gpt"), "base.load_format", "auto")
    with pytest.raises(ConfigError, match="= 40, more than the 32 positions of org/gpt"):
        plan_campaign(campaign)
    plan_campaign(with_(campaign, "base.model_name", "org/not-cached"))


# --- webhooks at send time ---------------------------------------------------------------------


class _Garbage(BaseHTTPRequestHandler):
    """Answers a POST with what is not HTTP, or with a redirect to a file."""

    def do_POST(self) -> None:  # http.server's name
        if self.path.startswith("/redirect"):
            self.send_response(307)
            self.send_header("Location", f"file:///tmp/{SECRET}")
            self.end_headers()
        else:
            self.wfile.write(b"not http at all\r\n\r\n")

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def garbage_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_webhook_from_the_environment_is_checked_when_sent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A file:// URL was once "delivered" (the summary written to the file)."""
    target = tmp_path / f"{SECRET}.json"
    notify = NotifyConfig.model_validate({"webhook_url_env": "LEMRAY_TEST_HOOK"})
    for url in (target.as_uri(), f"not a url {SECRET}", f"http://[::1/{SECRET}"):
        monkeypatch.setenv("LEMRAY_TEST_HOOK", url)
        with caplog.at_level(logging.WARNING, logger="lem_ray"):
            assert not send_notification(notify, "complete", {"x": 1})
    assert not target.exists()
    lines = caplog.text.strip().splitlines()
    assert len(lines) == 3 and SECRET not in caplog.text
    assert "not delivered (the URL in LEMRAY_TEST_HOOK must be an http:// or https:// URL " \
           "(it has file://))" in lines[0]


def test_webhook_errors_are_warnings(garbage_server: str, caplog: pytest.LogCaptureFixture) -> None:
    for path, reason in (("/hook", "BadStatusLine"), ("/redirect", "HTTP 307")):
        notify = NotifyConfig.model_validate({"webhook_url": garbage_server + path})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lem_ray"):
            assert not send_notification(notify, "complete", {})
        assert f"the complete notification was not delivered ({reason}" in caplog.text


@dataclass
class _Result:
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 1, "failed": 0})


def test_a_failing_webhook_leaves_the_campaigns_result(garbage_server: str) -> None:
    plan = plan_campaign(with_(VALID, "notify", {"webhook_url": garbage_server + "/hook"}))
    result = _Result()
    assert notified(plan, lambda: result) is result


# --- damaged gpu_time/ files -------------------------------------------------------------------


def _session(total_gpu_s: float) -> dict[str, Any]:
    return {"session": "s", "started_s": 0.0, "updated_s": 10.0, "gpus": 1,
            "total_gpu_s": total_gpu_s, "gpu_seconds": {p: total_gpu_s / len(PHASES)
                                                        for p in PHASES}}


def test_status_reads_around_damaged_gpu_time_files(synthetic_results: Path) -> None:
    folder = synthetic_results / "gpu_time"
    folder.mkdir()
    (folder / "good.json").write_text(json.dumps(_session(60.0)))
    damaged = {
        "truncated.json": json.dumps(_session(6.0))[:40],
        "list.json": "[1, 2]",
        "no-total.json": json.dumps({k: v for k, v in _session(6.0).items() if k != "total_gpu_s"}),
        "text.json": json.dumps({**_session(6.0), "started_s": "yesterday"}),
        "nan.json": json.dumps(_session(float("nan"))),
    }
    for name, text in damaged.items():
        (folder / name).write_text(text)
    result = invoke("status", str(synthetic_results), "--json", cwd=synthetic_results.parent)
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert len(warnings) == len(damaged)
    for name in damaged:
        assert any(w.startswith(f"lem-ray: warning: skipped {folder / name}: ") for w in warnings)
    gpu_time = json.loads(result.stdout)["gpu_time"]
    assert gpu_time["total_gpu_s"] == 60.0 and gpu_time["sessions"] == 1


@pytest.mark.slow
def test_a_campaign_whose_runs_succeed_exits_0(tmp_path: Path) -> None:
    """Whatever its webhook's URL and its old gpu_time/ files: both once ended it in exit 1 and
    a traceback after every run had succeeded."""
    damaged = tmp_path / "out" / "gpu_time" / "old.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_text(json.dumps({"gpu_seconds": {p: 1.0 for p in PHASES}}))
    campaign = {"campaign_name": "hooked", "base": TINY_BASE, "grid": {"backends": ["pytorch"]},
                "execution": {"cycles": 1}, "output": {"results_dir": "out"},
                "notify": {"webhook_url_env": "LEMRAY_TEST_HOOK"}}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign))
    hook = tmp_path / f"{SECRET}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lem_ray.cli", "campaign", str(path), "--json"], cwd=tmp_path,
        env={**ray_env(), "LEMRAY_TEST_HOOK": hook.as_uri()}, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["counts"]["ok"] == 1
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr
    assert "the URL in LEMRAY_TEST_HOOK must be an http:// or https:// URL" in proc.stderr
    assert f"lem-ray: warning: skipped {damaged}: total_gpu_s is None" in proc.stderr
    assert not hook.exists()


def test_gpu_time_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "gpu_time").write_text("not a folder")
    assert gpu_seconds(tmp_path) is None


# --- prompt files, streamed --------------------------------------------------------------------


def _bytes_read() -> int:
    """What this process has read from files so far (Linux)."""
    stats = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(stats["rchar"])


@pytest.fixture(scope="module")
def big_prompt_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """JSONL, CSV and Parquet of about 40 MiB each, of prompts that do not compress away."""
    folder = tmp_path_factory.mktemp("prompts")
    prompts = [os.urandom(512).hex() for _ in range(1000)]
    rows = 40 * 1024 * 1024 // 1024
    files = {".jsonl": folder / "p.jsonl", ".csv": folder / "p.csv",
             ".parquet": folder / "p.parquet"}
    with files[".jsonl"].open("w") as jsonl, files[".csv"].open("w") as csv:
        csv.write("id,prompt\n")
        for i in range(rows):
            jsonl.write(json.dumps({"prompt": prompts[i % 1000], "id": i}) + "\n")
            csv.write(f'{i},"{prompts[i % 1000]}"\n')
    with pq.ParquetWriter(files[".parquet"], pa.schema({"prompt": pa.string()})) as writer:
        for _ in range(0, rows, 1000):
            writer.write_table(pa.table({"prompt": [os.urandom(512).hex() for _ in range(1000)]}))
    return files


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads /proc/self/io (Linux)")
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_count_of_4_reads_a_few_lines_of_a_large_file(big_prompt_files: dict[str, Path],
                                                        suffix: str) -> None:
    """A 1 GiB file took 2.2 GB of memory for count: 4; now a few lines (one row group)."""
    path = big_prompt_files[suffix]
    assert path.stat().st_size > 30 * 1024 * 1024
    tracemalloc.start()
    before = _bytes_read()
    try:
        texts = file_prompts(FilePrompts(source="file", path=path.name, count=4), path)
        read, (_, peak) = _bytes_read() - before, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(texts) == 4 and all(len(t) == 1024 for t in texts)
    assert read < 2 * 1024 * 1024, f"{read} bytes read for 4 prompts"
    assert peak < 4 * 1024 * 1024, f"{peak} bytes of Python memory for 4 prompts"


@pytest.mark.parametrize(
    ("name", "head", "row"),
    [
        (
            "tail.jsonl",
            b'{"prompt": "a"}\n{"prompt": "b"}\n\n{"prompt": "c"}\n',
            b'{"prompt": "pad"}\n',
        ),
        ("tail.csv", b'prompt\na\n"b, with\na newline"\nc\n', b"pad\n"),
    ],
)
def test_a_file_is_read_no_further_than_the_prompts_kept(tmp_path: Path, name: str, head: bytes,
                                                         row: bytes) -> None:
    """Past 64 KiB of good rows, the file is damaged: a count of 3 never gets there."""
    padding = row * (64 * 1024 // len(row) + 1)
    (tmp_path / name).write_bytes(head + padding + b"\xff garbage")
    texts = file_prompts(FilePrompts(source="file", path=name, count=3), tmp_path / name)
    assert texts[0] == "a" and texts[2] == "c" and len(texts) == 3
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0xff at offset "
                                          f"{len(head) + len(padding)}\\)"):
        file_prompts(FilePrompts(source="file", path=name), tmp_path / name)


def test_a_line_too_long_is_refused_before_it_is_read_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lem_ray.planning.prompt_files.MAX_LINE_BYTES", 1024)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "' + "x" * 2000 + '"}\n')
    with pytest.raises(ConfigError, match=r"p\.jsonl: line 2 is longer than 1024 bytes"):
        file_prompts(FilePrompts(source="file", path="p.jsonl"), tmp_path / "p.jsonl")


def test_csv_rows_of_the_wrong_width(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("id,prompt\n1,a\n2\n")
    with pytest.raises(
        ConfigError, match=r"cannot read .*p.csv: line 3: expected 2 columns, got 1"
    ):
        file_prompts(FilePrompts(source="file", path="p.csv"), tmp_path / "p.csv")


def test_campaign_file_with_bounds_is_accepted(tmp_path: Path) -> None:
    """The largest values of each bound pass: bounds refuse mistakes, not campaigns."""
    data = with_(VALID, "base.random_seed", 2**32 - 1)
    data = with_(data, "schedule", {"every": "366d", "for": "366d"})
    data = with_(data, "notify", {"webhook_url": "https://hooks.example.com/x", "timeout_s": 300})
    result = dry_run(tmp_path, yaml.safe_dump(data))
    assert result.exit_code == 0, result.output
