"""bench/host_energy.py --smoke: the accelerator machine's script, proven on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "host_energy.py"


@pytest.mark.slow
def test_host_energy_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "host_energy.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    found = json.loads(out.read_text())
    host = found["host_counters"]
    assert bool(host["zones"]) != bool(host["reason"]), "readable zones, or why none"
    assert [(r["backend"], r["batch_size"]) for r in found["runs"]] == [
        ("pytorch", 1),
        ("pytorch", 32),
    ]
    for run in found["runs"]:
        assert run["status"] == "ok" and run["host_shared_by_runs"] == 0, "one run at a time"
        if run["host_energy_j"] is None:
            assert run["host_energy_unavailable_reason"]
        assert run["per_request"]["requests"] == run["num_requests"]
    assert "pytorch batch 32:" in done.stdout and "host share" in done.stdout
