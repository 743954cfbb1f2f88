"""Connecting to Ray: the given cluster, or a local instance started for this campaign."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lem_ray.errors import ConfigError

# Every worker of the campaign gets these, whatever node it lands on.
WORKER_ENV = {
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


log = logging.getLogger("lem_ray")

AUTH_MODE_ENV = "RAY_AUTH_MODE"


def auth_token_available() -> bool:
    """A token where Ray looks for one: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).expanduser().is_file()


def configure_auth(local: bool) -> None:
    """Token authentication on, stated rather than left to Ray's default.

    Ray 2.60 turns it on by default for a new local instance and prints a notice each time the
    mode is unset; setting RAY_AUTH_MODE=token (the documented way) keeps it on without the
    notice, and Ray creates ~/.ray/auth_token if no token exists. A cluster is joined in token
    mode when a token is available. An explicit RAY_AUTH_MODE is always left as it is.
    """
    if AUTH_MODE_ENV in os.environ or not (local or auth_token_available()):
        return
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
    except ImportError:  # a Ray without token authentication
        return
    _enable_token_auth()


# How long the auth check waits for its actor; a cluster too busy to answer in time is left
# to the runs, whose failures say the same in more words.
PROBE_TIMEOUT_S = 60.0


def on_driver_node() -> NodeAffinitySchedulingStrategy:
    """For the campaign's own actors (manifest, baselines and node record): on the driver's
    node, which lives as long as the campaign; elsewhere, losing that node would fail every
    run, those on the surviving nodes too."""
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


@ray.remote(num_cpus=0)
class _Probe:
    def ok(self) -> bool:
        return True


def check_actors_start(address: str) -> None:
    """A driver that joined in token mode only because it found a token (as Ray itself does)
    while the cluster runs without authentication: tasks still run, but every actor dies at
    start, so every run would fail as "the actor died unexpectedly". Say why, before any run."""
    probe = _Probe.remote()  # type: ignore[attr-defined]  # Ray's type hints type it as the class
    try:
        ray.get(probe.ok.remote(), timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.ActorDiedError:
        ray.shutdown()
        raise ConfigError(
            f"actors die at start on the Ray cluster at {address} when this driver joins it with "
            "token authentication, which it turned on because it found a token (RAY_AUTH_TOKEN, "
            "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and RAY_AUTH_MODE is unset: the cluster "
            "runs without it. State the cluster's mode: start the cluster with RAY_AUTH_MODE=token "
            "and this token, or, for a cluster no one else can reach, run with "
            "RAY_AUTH_MODE=disabled",
            path="--address",
        ) from None
    except ray.exceptions.GetTimeoutError:
        log.warning("lem-ray: the cluster at %s did not start a check actor within %.0f s; "
                    "going on", address, PROBE_TIMEOUT_S)
    ray.kill(probe)


def warn_if_driver_holds_gpu(dashboard_url: str | None) -> None:
    """A `ray job submit --entrypoint-num-gpus N` driver keeps N GPUs idle for the whole
    campaign: runs cannot use them and their energy is measured nowhere."""
    config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not config:
        return
    submission_id = (json.loads(config).get("metadata") or {}).get("job_submission_id")
    if not submission_id or not dashboard_url:
        return
    from ray.dashboard.modules.job.common import JOB_ACTOR_NAME_TEMPLATE
    from ray.util.state import list_actors

    try:
        supervisors = list_actors(
            address=f"http://{dashboard_url}",
            filters=[("name", "=", JOB_ACTOR_NAME_TEMPLATE.format(job_id=submission_id))],
            detail=True,
            raise_on_missing_output=False,
        )
    except Exception as exc:  # the check is advice; the campaign goes on without it
        log.warning("lem-ray: could not check the job's entrypoint resources: %s", exc)
        return
    gpus = sum((a.required_resources or {}).get("GPU", 0) for a in supervisors
               if a.state == "ALIVE")
    if gpus:
        log.warning(
            "lem-ray: warning: this driver holds %g GPU(s) (ray job submit "
            "--entrypoint-num-gpus): no run can use them. The driver needs no GPU: submit with "
            "--entrypoint-num-cpus 1 (or no entrypoint resources) instead.",
            gpus,
        )


def connect(address: str | None) -> bool:
    """True when this call started Ray (so the caller shuts it down afterwards)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    token_assumed = bool(address) and AUTH_MODE_ENV not in os.environ and auth_token_available()
    configure_auth(local=not address)
    options: dict[str, Any] = {
        "namespace": "lem-ray",
        "runtime_env": {"env_vars": WORKER_ENV},
        "logging_level": "WARNING",
    }
    # ray.init sets a SIGTERM handler of its own (sys.exit): a handler the caller set (SIGTERM
    # as Ctrl-C, execution/driver/guard.py) is kept.
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address:
            context = ray.init(address=address, **options)
            if token_assumed:
                check_actors_start(address)
            warn_if_driver_holds_gpu(context.dashboard_url)
        else:
            # "local", not nothing: ray.init() alone joins whatever cluster this machine
            # started last (/tmp/ray/ray_current_cluster), which may be another user's.
            ray.init(address="local", include_dashboard=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot connect to Ray at {address or 'a new local instance'}: {first}",
                          path="--address" if address else None) from None
    finally:
        if callable(sigterm) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)
    return True


@dataclass(frozen=True)
class Capacity:
    """The GPUs of the live nodes: what an experiment's gpus_per_experiment is checked against."""

    total_gpus: int
    max_gpus_per_node: int

    @property
    def has_gpus(self) -> bool:
        """Whether any live node has a GPU."""
        return self.total_gpus > 0


def capacity() -> Capacity:
    """The live nodes' GPUs, read from Ray now."""
    gpus = [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return Capacity(sum(gpus), max(gpus, default=0))


def node_gpus() -> dict[str, int]:
    """GPUs of each live node that has any, by Ray node id."""
    return {
        n["NodeID"]: int(n["Resources"].get("GPU", 0))
        for n in ray.nodes()
        if n.get("Alive") and int(n["Resources"].get("GPU", 0))
    }
