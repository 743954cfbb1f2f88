"""What `lem-ray doctor` learns on one node, from a task scheduled on that node.

NVML, the host's RAPL counters, the backends' libraries, podman and the results directory are
facts of the node where runs will execute, not of the driver, so each is looked at from there.
"""

from __future__ import annotations

import importlib
import platform
import secrets
import shutil
import socket
from typing import Any

import ray

import lem_ray
from lem_ray.backend_table import BACKENDS
from lem_ray.backends.registry import missing_modules
from lem_ray.results.store import resolve
from lem_ray.telemetry.rapl import host_status


def _gpus() -> dict[str, Any]:
    from lem_ray.telemetry.nvml import GpuDevice, TelemetryError, nvml_status, uuids_for_indices

    available, reason = nvml_status()
    if not available:
        return {"nvml": False, "reason": reason, "gpus": []}
    import pynvml

    gpus = []
    for uuid in uuids_for_indices(range(pynvml.nvmlDeviceGetCount())):
        try:
            gpus.append(GpuDevice(uuid).environment())
        except TelemetryError as exc:
            gpus.append({"uuid": uuid, "error": str(exc)})
    return {"nvml": True, "reason": None, "gpus": gpus}


def _import_problem(modules: tuple[str, ...]) -> str | None:
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken install says what is broken
            return f"import {module} failed: {type(exc).__name__}: {exc}"
    return None


def _backends(names: list[str] | None = None) -> dict[str, str | None]:
    """backend -> None when its libraries import here, else why not."""
    found: dict[str, str | None] = {}
    for entry in BACKENDS:
        if names is not None and entry.name not in names:
            continue
        missing = missing_modules(entry.name)
        found[entry.name] = (
            f"{missing[0]} is not installed" if missing else _import_problem(entry.requires)
        )
    return found


def _results_dir_writable(results_dir: str) -> str | None:
    """None when this node can create, read back and delete a file there, else the error."""
    try:
        fs, base = resolve(results_dir)
        fs.create_dir(base, recursive=True)
        path = f"{base}/.lem-ray-doctor-{secrets.token_hex(8)}"
        token = secrets.token_hex(8).encode()
        with fs.open_output_stream(path) as out:
            out.write(token)
        with fs.open_input_stream(path) as back:
            readable = back.read() == token
        fs.delete_file(path)
        return None if readable else "a file written there read back different"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@ray.remote(num_cpus=0, max_retries=0)
def probe_node(results_dir: str | None) -> dict[str, Any]:
    """What the node this task lands on offers lem-ray: GPUs, libraries, results dir."""
    return {
        "hostname": socket.gethostname(),
        "ray_version": ray.__version__,
        "python_version": platform.python_version(),
        "lem_ray_version": lem_ray.__version__,
        **_gpus(),
        "host_energy": host_status(),
        "backends": _backends(),
        "podman": shutil.which("podman"),
        "results_dir_error": None if results_dir is None else _results_dir_writable(results_dir),
    }


@ray.remote(num_cpus=0, max_retries=0)
def probe_backend(backend: str) -> str | None:
    """Run inside the backend's runtime_env: None when its libraries import there."""
    return _backends([backend])[backend]
