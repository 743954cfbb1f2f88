"""`lem-ray doctor` on a CPU-only machine: it says there is no NVML/GPU (warn), never crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_doctor_json_on_cpu(tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "lem_ray.cli", "doctor", "--json", "--results-dir", str(results)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert all(c["status"] in ("ok", "warn", "fail") for c in checks.values())
    assert all(c["fix"] for c in checks.values() if c["status"] != "ok"), "every problem has a fix"
    assert checks["ray"]["status"] == "ok" and "local Ray instance" in checks["ray"]["detail"]
    assert checks["versions"]["status"] == "ok"
    assert checks["token auth"]["status"] == "ok", "a local instance runs with token auth on"

    (node,) = report["nodes"]
    assert node["nvml"] is False and node["gpus"] == [] and node["ray_gpus"] == 0
    name = f"{node['hostname']} ({node['node_ip']}, node {node['node_id'][:8]})"
    nvml = checks[f"NVML on {name}"]
    assert nvml["status"] == "warn" and "no NVML/GPU on this node" in nvml["detail"]
    assert checks["backend pytorch"]["status"] == "ok", "torch and transformers import here"
    assert checks["results dir writable"]["status"] == "ok"
    assert checks["results dir shared"]["status"] == "ok"
    assert not results.exists(), "doctor leaves no directory it created"
