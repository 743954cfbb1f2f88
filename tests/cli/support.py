"""What the CLI tests share: running `lem-ray` as a process or in-process, a valid campaign,
and the checks that a refusal is one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from lem_ray.cli.main import main
from tests.conftest import TINY_BASE, ray_env


def lem_ray(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m lem_ray.cli ARGS` in cwd, against this session's Ray."""
    return subprocess.run(
        [sys.executable, "-m", "lem_ray.cli", *args], cwd=cwd, env=ray_env(),
        capture_output=True, text=True, timeout=600,
    )


VALID: dict[str, Any] = {
    "campaign_name": "hostile",
    "base": TINY_BASE,
    "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2]}}},
    "execution": {"cycles": 2},
}


def invoke(*args: str, cwd: Path) -> Result:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args), env={"RAY_ADDRESS": ""}, prog_name="lem-ray")
    finally:
        os.chdir(old)


def refused(result: Result, expected: str) -> str:
    """Exit 2, one line on stderr containing `expected`, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lem-ray: error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    return lines[0]


def with_(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def dry_run(tmp_path: Path, content: dict[str, Any] | str | bytes, *extra: str) -> Result:
    path = tmp_path / "campaign.yaml"
    if isinstance(content, dict):
        content = yaml.safe_dump(content, sort_keys=False)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = sorted(os.listdir(tmp_path))
    result = invoke("campaign", str(path), "--dry-run", "--json", *extra, cwd=tmp_path)
    if result.exit_code:
        assert sorted(os.listdir(tmp_path)) == before, "nothing created"
    return result
