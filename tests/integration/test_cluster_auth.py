"""A driver that finds a token joins a cluster in token mode (as Ray itself does); a cluster
running without authentication then kills every actor at start. lem-ray says so up front."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RAY_TMP, own_cluster

pytestmark = pytest.mark.slow


def test_token_found_against_a_cluster_without_auth_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Started without authentication whatever an earlier test's local Ray left in this
    # process's environment (a new local instance sets RAY_AUTH_MODE=token here).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = own_cluster(num_cpus=2)
    monkeypatch.delenv("RAY_AUTH_MODE")
    try:
        token = tmp_path / "auth_token"
        token.write_text(secrets.token_hex(32))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=RAY_TMP, RAY_AUTH_TOKEN_PATH=str(token))
        done = subprocess.run(
            [sys.executable, "-m", "lem_ray.cli", "campaign", "--address", cluster.address,
             "--results-dir", str(tmp_path / "results")],
            env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 2, done.stdout + done.stderr
        message = " ".join(done.stderr.split())
        assert "actors die at start" in message and "RAY_AUTH_MODE=token" in message
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "results").exists() or not any(
            (tmp_path / "results").rglob("*.parquet")
        )
    finally:
        cluster.shutdown()
