"""A real `ray start --head` for tests, isolated from every other Ray on the machine.

Its own temp dir and free ports (other Ray instances may run beside it), token authentication
on with a token file of its own (never ~/.ray/auth_token, which others may share). `ray stop`
stops every Ray of the machine, so the head is stopped by its own processes instead: those
whose command line names its temp dir, and their children.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

PORT_OPTIONS = (
    "--port", "--ray-client-server-port", "--dashboard-port", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
    "--node-manager-port", "--object-manager-port",
)


@dataclass
class Head:
    temp_dir: Path
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """A `ray` CLI command as a user of this cluster runs it (token in the environment)."""
        return subprocess.run([str(Path(sys.executable).parent / "ray"), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def stop_head(temp_dir: Path) -> None:
    """Terminate the processes of this head only, then kill what is left after a grace period."""
    marker = str(temp_dir)
    me = psutil.Process()
    spared = {me.pid, *(p.pid for p in me.parents())}
    roots = [
        proc for proc in psutil.process_iter(["cmdline"])
        if proc.pid not in spared and any(marker in part for part in proc.info["cmdline"] or ())
    ]
    procs = {p.pid: p for p in roots}
    for root in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.update({c.pid: c for c in root.children(recursive=True)})
    for proc in procs.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def start_head(num_cpus: int, num_gpus: int) -> Iterator[Head]:
    """Yields a running head; always stops it. The temp dir is short on purpose: Ray's Unix
    sockets live under it and a socket path may not exceed 107 bytes (pytest's tmp_path can)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lemray-"))
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS))))
    args = [f"{option}={port}" for option, port in ports.items()]
    head = Head(temp_dir, f"127.0.0.1:{ports['--port']}",
                f"http://127.0.0.1:{ports['--dashboard-port']}", env)
    try:
        started = head.ray(
            "start", "--head", f"--temp-dir={temp_dir / 'ray'}", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true", *args,
            f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", "--disable-usage-stats",
            timeout=180,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        yield head
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
