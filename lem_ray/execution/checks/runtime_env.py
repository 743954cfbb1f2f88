"""Checking, before any run starts, that the cluster can provide each backend's runtime_env.

A runtime_env Ray cannot set up (no container runtime, image missing, interpreter missing,
package not installable) would otherwise surface as a worker that dies at start, retried
and recorded as a crash. A small probe task in that environment tells up front, and also
catches the quiet failure: an environment whose Python or Ray differs from the cluster's.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lem_ray.config.runtime_env import RuntimeEnvSpec


def _where() -> dict[str, str]:
    """Runs inside the probed environment."""
    import lem_ray

    return {"python_executable": sys.executable, "python": platform.python_version(),
            "ray": ray.__version__, "lem_ray": lem_ray.__version__}


def _runnable(path: str) -> bool:
    """Runs on a node in the driver's environment."""
    return os.path.isfile(path) and os.access(path, os.X_OK)


def missing_interpreter(path: str) -> str | None:
    """The node lacking `path`, checked on every alive node: Ray would start workers from a
    missing interpreter over and over without ever reporting an error."""
    check = ray.remote(num_cpus=0, max_retries=0)(_runnable)
    found = {
        node["NodeManagerAddress"]: check.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(path)
        for node in ray.nodes() if node.get("Alive")
    }
    lacking = sorted(ip for ip, ok in zip(found, ray.get(list(found.values()))) if not ok)
    return f"no executable {path} on node {', '.join(lacking)}" if lacking else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def mismatch(found: dict[str, str]) -> str | None:
    """Why an environment that did start cannot host lem-ray's actors, or None."""
    here = {"python": platform.python_version(), "ray": ray.__version__}
    if found["ray"] != here["ray"]:
        return f"it has Ray {found['ray']}, the driver Ray {here['ray']}: they must match exactly"
    if found["python"].rsplit(".", 1)[0] != here["python"].rsplit(".", 1)[0]:
        return (f"it has Python {found['python']}, the driver Python {here['python']}: "
                "Ray needs the same minor version")
    return None


def probe_runtime_envs(
    specs: dict[str, RuntimeEnvSpec], timeout_s: float
) -> dict[str, str]:
    """Backend -> why its runtime_env cannot be used, for those that cannot (kind none is the
    driver's own environment and needs no probe). All probes run at once."""
    futures: dict[str, Any] = {}
    refusals: dict[str, str] = {}
    for backend, spec in specs.items():
        env = spec.ray_runtime_env()
        if spec.kind == "none" or env is None:
            continue
        if spec.py_executable is not None:
            missing = missing_interpreter(spec.py_executable)
            if missing:
                refusals[backend] = f"runtime_env {spec.to_json()} cannot be used: {missing}"
                continue
        futures[backend] = ray.remote(num_cpus=0, max_retries=0)(_where).options(
            runtime_env=env).remote()
    for backend, future in futures.items():
        what = f"runtime_env {specs[backend].to_json()}"
        try:
            found = ray.get(future, timeout=timeout_s)
        except GetTimeoutError:
            ray.cancel(future, force=True)
            refusals[backend] = f"{what}: not ready after {timeout_s:g} s"
            continue
        except RayError as exc:
            refusals[backend] = f"{what} cannot be set up on this cluster: {_first_line(exc)}"
            continue
        problem = mismatch(found)
        if problem:
            refusals[backend] = f"{what} cannot host lem-ray's actors: {problem}"
    return refusals
