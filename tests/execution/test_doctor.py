"""`lem-ray doctor` on a CPU-only machine: it says there is no NVML/GPU (warn), never crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lem_ray.config.runtime_env import RuntimeEnvSpec
from lem_ray.execution.checks.doctor import Check, DoctorReport, _check_host_energy, _check_podman
from lem_ray.telemetry.rapl import host_status, read_text
from tests.conftest import TINY_BASE
from tests.fakes.powercap import FakePowercap


@pytest.mark.slow
def test_doctor_json_on_cpu(tmp_path: Path) -> None:
    """With a campaign whose pytorch backend runs in a runtime_env (this interpreter)."""
    results = tmp_path / "results"
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump({
        "campaign_name": "doc", "base": TINY_BASE, "grid": {"backends": ["pytorch"]},
        "runtime_env": {"pytorch": {"kind": "py_executable", "py_executable": sys.executable}},
        "output": {"results_dir": str(results)},
    }))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "lem_ray.cli", "doctor", str(campaign), "--json"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Token authentication is enabled for this Ray cluster" not in done.stderr, \
        "the auth mode is stated for the local instance, so Ray prints no notice"
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
    host = checks[f"host energy on {name}"]
    assert host["status"] in ("ok", "warn") and host["detail"], "this machine may have powercap"
    assert checks["backend pytorch in its runtime_env (py_executable)"]["status"] == "ok"
    assert checks["podman"] == {"name": "podman", "status": "ok", "fix": None,
                                "detail": "the campaign's backends use no container image"}
    assert checks["results dir writable"]["status"] == "ok"
    assert checks["results dir shared"]["status"] == "ok"
    assert not results.exists(), "doctor leaves no directory it created"


def test_podman_is_required_only_where_a_campaign_uses_images() -> None:
    node = {"hostname": "h", "node_ip": "10.0.0.1", "node_id": "0123456789ab", "podman": None,
            "ray_gpus": 1}
    image = {"vllm": RuntimeEnvSpec(kind="image_uri", image_uri="lem-ray:vllm")}

    def podman(envs: dict | None) -> Check:
        report = DoctorReport()
        _check_podman(report, [node], envs)
        (check,) = report.checks
        return check

    failed = podman(image)
    assert failed.status == "fail" and "vllm run in a container image" in failed.detail
    assert "h (10.0.0.1, node 01234567)" in failed.detail and failed.fix
    assert podman({"pytorch": RuntimeEnvSpec()}).status == "ok"
    assert podman(None).status == "warn", "without a campaign: a warning, images may come"
    assert podman({**image, "pytorch": RuntimeEnvSpec()}).status == "fail"


def test_host_energy_per_node(tmp_path: Path) -> None:
    FakePowercap(tmp_path / "server")

    def denied(path: str) -> str:
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return read_text(path)

    nodes = [
        {"hostname": h, "node_ip": f"10.0.0.{i}", "node_id": f"{i}" * 12, "host_energy": status}
        for i, (h, status) in enumerate(
            (
                ("server", host_status(str(tmp_path / "server"))),
                ("locked", host_status(str(tmp_path / "server"), read=denied)),
                ("vm", host_status(str(tmp_path / "none"))),
            ),
            start=1,
        )
    ]
    report = DoctorReport()
    _check_host_energy(report, nodes)
    server, locked, vm = report.checks
    assert (
        server.status == "ok" and "intel-rapl:0 (package-0), intel-rapl:0:0 (dram)" in server.detail
    )
    assert locked.status == "warn" and "not readable" in locked.detail and "chmod o+r" in locked.fix
    assert vm.status == "warn" and "does not exist" in vm.detail and "/sys/class/powercap" in vm.fix
