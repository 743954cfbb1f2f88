"""The benchmarks in bench/ run on the CPU at a tiny size (each script's --smoke), so one that
breaks (a column the writer now refuses, an API that moved) fails CI instead of the next
person who measures. Each test checks the figures the script writes, not only its exit code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def bench(script: str, *args: str, cwd: Path = ROOT, timeout: int = 900) -> str:
    """stdout of `python bench/<script> --smoke ARGS`; a failure shows the script's stderr."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, str(BENCH / script), "--smoke", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_every_bench_script_has_a_smoke_mode_that_a_test_here_runs() -> None:
    """A script added to bench/ without a --smoke mode, or without a test running it, fails."""
    tests = Path(__file__).read_text(encoding="utf-8")
    for script in sorted(BENCH.glob("*.py")):
        assert '"--smoke"' in script.read_text(encoding="utf-8"), f"{script.name}: no --smoke"
        assert re.search(rf'bench\("{re.escape(script.name)}"', tests), \
            f"{script.name}: no test runs its --smoke"


def test_packing_sim_smoke() -> None:
    found = json.loads(bench("packing_sim.py", "--json"))
    assert set(found) == {"plan_order", "packing"}
    for way in found.values():
        assert way["cases"] == 1
        assert way["ratio_min"] == way["ratio_mean"] == way["ratio_max"] >= 1.0, \
            "one case; a makespan is never below its ideal"


@pytest.mark.slow
def test_scale_smoke(tmp_path: Path) -> None:
    figures = json.loads(bench("scale.py", "--json", "--workdir", str(tmp_path)))
    assert set(figures["status_s"]) == {"12"}
    for key in ("manifest_update_ms_p50", "results_write_ms_per_run_p50", "compact_s",
                "report_s", "report_uncompacted_s"):
        assert figures[key]["12"] >= 0, key
    assert figures["dispatch_cluster"] == "1 nodes x 2 logical GPUs, 6 of 6 runs ok"
    assert figures["dispatch_per_s"]["6"] > 0


@pytest.mark.slow
def test_compile_cache_smoke(tmp_path: Path) -> None:
    out = tmp_path / "cc.json"
    bench("compile_cache.py", "--processes", "1", "--out", str(out))
    figures = json.loads(out.read_text())
    assert len(figures["cached"]) == 1 and "error" not in figures["cached"][0]
    assert figures["cold"]["compile_cache"] is None, "the CPU engine compiles nothing"
    assert figures["compare"]["same_tokens"] and len(figures["compare"]["load_ratio"]) == 1


@pytest.mark.slow
def test_host_energy_smoke(tmp_path: Path) -> None:
    out = tmp_path / "host_energy.json"
    printed = bench("host_energy.py", "--out", str(out), cwd=tmp_path, timeout=600)
    found = json.loads(out.read_text())
    host = found["host_counters"]
    assert bool(host["zones"]) != bool(host["reason"]), "readable zones, or why none"
    assert [(r["backend"], r["batch_size"]) for r in found["runs"]] == [
        ("pytorch", 1), ("pytorch", 32)]
    for run in found["runs"]:
        assert run["status"] == "ok" and run["host_shared_by_runs"] == 0, "one run at a time"
        if run["host_energy_j"] is None:
            assert run["host_energy_unavailable_reason"]
        assert run["per_request"]["requests"] == run["num_requests"]
    assert "pytorch batch 32:" in printed and "host share" in printed


@pytest.mark.slow
def test_overhead_smoke() -> None:
    found = json.loads(bench("overhead.py", "--json"))
    assert set(found) == {"reuse", "cold", "sequential"}
    assert all(way["runs"] == 2 and way["wall_s"] > 0 and way["distinct_engines"] == 1
               for way in found.values())
    assert [found[way]["engine_loads"] for way in ("reuse", "cold", "sequential")] == [1, 2, 2], \
        "one worker keeps its engine; cold and sequential load for every run"


@pytest.mark.slow
def test_packing_smoke() -> None:
    found = json.loads(bench("packing.py", "--json"))
    assert found["gpus"] == 2 and found["runs"] == 6, "the grid's 6 experiments, one cycle"
    assert found["makespan_s"] > 0 and found["ratio"] >= 1.0, "never below the ideal"
    assert set(found["idle_gpu_s"]) == {"new_worker", "waiting", "tail"}
    assert found["idle_gpu_s"]["new_worker"] > 0, "each first run of a worker waited for it"
    assert found["loading_gpu_s"] > 0


@pytest.mark.slow
def test_worker_start_smoke() -> None:
    found = json.loads(bench("worker_start.py", "--json"))
    assert set(found) == {"1x1gpu_s", "1x2gpu_s", "2x2gpu_s", "2x1gpu_s"}
    assert all(seconds > 0 for seconds in found.values())


def _markdown_rows(printed: str, header: str) -> list[list[str]]:
    """The cells of each row of the table whose header line starts with `header`."""
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_measurement_report_smoke() -> None:
    printed = bench("measurement_report.py")
    runs = _markdown_rows(printed, "| batch | GPUs | cycle |")
    assert sorted((r[0], r[2]) for r in runs) == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    assert all(float(r[7]) > 0 for r in runs), "tok/s of every run"
    assert all(r[4] == "-" or float(r[4]) > 0 for r in runs), "counter J, where measured"
    experiments = _markdown_rows(printed, "| batch | GPUs | cycles |")
    assert sorted((r[0], r[2]) for r in experiments) == [("1", "2"), ("2", "2")]
    assert all(float(r[6]) > 0 for r in experiments), "mean tok/s"


@pytest.mark.slow
def test_gpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    printed = bench("gpu.py", "--cv-window-s", "0.5", "--cycles", "2", "--out", str(out))
    found: dict[str, Any] = json.loads(out.read_text())
    compare = found["lem_ray_compare"]
    assert sorted((bool(r["pytorch"]["torch_compile"]), r["batch_size"]) for r in compare) == [
        (False, 1), (False, 16), (True, 1), (True, 16)]
    assert all(r["throughput_tok_s"] > 0 for r in compare)
    assert {str(b): t["cycles"] for b, t in found["cv"].items()} == {"1": 2, "8": 2, "32": 2}
    assert all(t["cv_tok_s"] is not None for t in found["cv"].values())
    bare = found["bare"]
    assert set(bare) == {"fast_b1", "fast_b16", "eager_b1", "eager_b16", "eager_b1_timer",
                         "eager_b16_timer"}
    assert all(len(v["tok_s"] if isinstance(v, dict) else v) == 5 for v in bare.values())
    assert set(found["ratio_to_bare"]) == {"fast_b1", "fast_b16", "eager_b1", "eager_b16"}
    assert found["machine"]["gpu"] == "cpu" and found["load_2gpu_s"].startswith("not run")
    assert "| lem-ray run | tok/s | ratio to bare |" in printed


@pytest.mark.slow
def test_profile_decode_smoke(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    bench("profile_decode.py", "--variants", "default,fused,prefill", "--out", str(out),
          cwd=tmp_path)
    found = json.loads(out.read_text())
    assert found["gpu"] == "cpu" and found["floors"].startswith("not measured")
    for name in ("default", "fused", "prefill"):
        entry = found[name]
        assert "error" not in entry, entry
        assert entry["step_ms"] > 0 and entry["generate_tok_s"] > 0 and entry["ttft_ms"] > 0
        assert entry["trace"].startswith("not measured"), "no CUDA graph to trace on the CPU"
