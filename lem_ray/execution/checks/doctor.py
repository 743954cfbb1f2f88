"""`lem-ray doctor`: what will go wrong, found before a 10-hour campaign rather than during it.

Each check is ok, warn or fail, and a check that is not ok says how to fix it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import lem_ray
from lem_ray.config.runtime_env import RuntimeEnvSpec
from lem_ray.errors import ConfigError
from lem_ray.execution.checks.doctor_probe import probe_backend, probe_node
from lem_ray.execution.checks.shared_storage import alive_nodes, require_shared_results_dir
from lem_ray.execution.driver.cluster import AUTH_MODE_ENV, auth_token_available, connect
from lem_ray.planning.plan import CampaignPlan

AUTH_FIX = ("export RAY_AUTH_MODE=token on every node and client, with the cluster's token in "
            "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN (docs/cluster.md)")


@dataclass
class Check:
    """One check's verdict (ok, warn or fail), what was seen, and how to fix it."""

    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str | None = None


@dataclass
class DoctorReport:
    """Every check `lem-ray doctor` made, and what each node reported."""

    checks: list[Check] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str, fix: str | None = None) -> None:
        """Record a check; a fix is kept only for one that is not ok."""
        self.checks.append(Check(name, status, detail, fix if status != "ok" else None))

    @property
    def failed(self) -> bool:
        """Whether any check failed (the command then exits non-zero)."""
        return any(c.status == "fail" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """The report for `--json`."""
        return {"checks": [asdict(c) for c in self.checks], "nodes": self.nodes}


def _node_name(node: dict[str, Any]) -> str:
    return f"{node['hostname']} ({node['node_ip']}, node {node['node_id'][:8]})"


def _probe_all(results_dir: str | None) -> list[dict[str, Any]]:
    nodes = alive_nodes()
    refs = [
        probe_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(results_dir)
        for n in nodes
    ]
    reports: list[dict[str, Any]] = ray.get(refs)
    return [
        {"node_id": n["NodeID"], "node_ip": n["NodeManagerAddress"],
         "ray_gpus": int(n["Resources"].get("GPU", 0)), **report}
        for n, report in zip(nodes, reports)
    ]


def _check_versions(report: DoctorReport, nodes: list[dict[str, Any]]) -> None:
    ours = {"ray_version": ray.__version__, "python_version": platform.python_version(),
            "lem_ray_version": lem_ray.__version__}
    off = []
    for node in nodes:
        for key, mine in ours.items():
            theirs = node[key]
            same = theirs.rsplit(".", 1)[0] == mine.rsplit(".", 1)[0] \
                if key == "python_version" else theirs == mine
            if not same:
                off.append(f"{_node_name(node)} has {key.replace('_version', '')} {theirs}")
    mine = f"driver: Ray {ours['ray_version']}, Python {ours['python_version']}, " \
           f"lem-ray {ours['lem_ray_version']}"
    if off:
        report.add("versions", "fail", f"{mine}; " + "; ".join(off),
                   "install the same Ray, Python (major.minor) and lem-ray on every node and "
                   "the driver (one image for all: see Dockerfile and docs/cluster.md)")
    else:
        report.add("versions", "ok", f"{mine}; the same on all {len(nodes)} nodes")


def _gpu_line(gpu: dict[str, Any]) -> str:
    if "error" in gpu:
        return f"{gpu['uuid']}: {gpu['error']}"
    limit = f"{gpu['power_limit_w']:g} W" if gpu["power_limit_w"] is not None else "limit ?"
    mig = {True: "MIG on", False: "MIG off", None: "MIG n/a"}[gpu["mig_enabled"]]
    return f"{gpu['name']} {gpu['uuid']} driver {gpu['driver_version']}, {mig}, {limit}"


def _check_gpus(report: DoctorReport, nodes: list[dict[str, Any]]) -> None:
    inventory = []
    for node in nodes:
        gpus = node["gpus"]
        inventory.append(f"{_node_name(node)}: Ray counts {node['ray_gpus']} GPU, NVML sees "
                         f"{len(gpus)}" + "".join(f"; {_gpu_line(g)}" for g in gpus))
    report.add("nodes and GPUs", "ok", f"{len(nodes)} nodes: " + " | ".join(inventory))

    for node in nodes:
        name = _node_name(node)
        if not node["nvml"]:
            what = (f"Ray counts {node['ray_gpus']} GPUs there but none is real to NVML "
                    "(logical GPUs?)" if node["ray_gpus"] else "runs there are CPU runs")
            report.add(f"NVML on {name}", "warn",
                       f"no NVML/GPU on this node ({node['reason']}): {what}; energy cannot be "
                       "measured there and its energy columns will be null",
                       "measure on nodes with NVIDIA GPUs and their driver (libnvidia-ml); in a "
                       "container, run it with the GPUs and the driver's libraries mounted")
            continue
        problems = [g for g in node["gpus"] if "error" in g]
        status = "fail" if problems else "ok"
        detail = f"NVML usable from a task on this node, {len(node['gpus'])} GPUs"
        if node["ray_gpus"] > len(node["gpus"]):
            status = "fail"
            detail += f", but Ray counts {node['ray_gpus']}"
        report.add(f"NVML on {name}", status,
                   detail + "".join(f"; {_gpu_line(g)}" for g in problems),
                   "start the node's Ray with --num-gpus at most the GPUs NVML sees, and check "
                   "the driver (nvidia-smi) on that node")
        no_counter = [g["uuid"] for g in node["gpus"] if not g.get("energy_counter_supported")]
        report.add(f"energy counter on {name}", "warn" if no_counter else "ok",
                   f"no energy counter on {', '.join(no_counter)}: energy falls back to "
                   "integrated instant power (less exact)" if no_counter else
                   "nvmlDeviceGetTotalEnergyConsumption works on every GPU",
                   "use Volta or newer GPUs for counter-based energy")
        mig = [g["uuid"] for g in node["gpus"] if g.get("mig_enabled")]
        if mig:
            report.add(f"MIG on {name}", "warn",
                       f"MIG enabled on {', '.join(mig)}: NVML does not meter MIG slices",
                       "disable MIG on GPUs used for measurement: nvidia-smi -i N -mig 0")
        busy = [g["uuid"] for g in node["gpus"] if g.get("compute_process_count")]
        if busy:
            report.add(f"idle GPUs on {name}", "warn",
                       f"other processes are using {', '.join(busy)}: their energy would be "
                       "counted in the runs'", "stop them, or leave those GPUs out of Ray")


def _check_host_energy(report: DoctorReport, nodes: list[dict[str, Any]]) -> None:
    """Per node: which host counters (CPU package, DRAM) a run's sampler can read there."""
    for node in nodes:
        host = node["host_energy"]
        name = f"host energy on {_node_name(node)}"
        if host["zones"]:
            report.add(name, "ok", f"RAPL readable: {', '.join(host['zones'])}")
        else:
            report.add(name, "warn", f"{host['reason']}: rows will carry null cpu_energy_j and "
                       "dram_energy_j, GPU energy only", host["fix"])


def _check_backends(report: DoctorReport, nodes: list[dict[str, Any]]) -> None:
    backends = sorted({b for node in nodes for b in node["backends"]})
    for backend in backends:
        missing = {_node_name(n): n["backends"][backend] for n in nodes
                   if n["backends"][backend]}
        if not missing:
            report.add(f"backend {backend}", "ok", f"imports on all {len(nodes)} nodes")
            continue
        status = "warn" if len(missing) == len(nodes) else "fail"
        report.add(f"backend {backend}", status,
                   "; ".join(f"{node}: {why}" for node, why in missing.items()),
                   f"pip install 'lem-ray[{backend}]' on those nodes (or use an image with it); "
                   "ignore if no campaign uses this backend" if status == "warn" else
                   f"install the same {backend} libraries on every node: a run placed on a "
                   "node without them fails")


def _check_runtime_envs(report: DoctorReport, nodes: list[dict[str, Any]],
                        envs: dict[str, RuntimeEnvSpec], timeout_s: float) -> None:
    """The campaign's backends, imported inside their own runtime_env on every node."""
    for backend, spec in envs.items():
        env = spec.ray_runtime_env()
        if spec.kind == "none" or env is None:
            continue
        refs = {
            _node_name(n): probe_backend.options(runtime_env=env, scheduling_strategy=(
                NodeAffinitySchedulingStrategy(n["node_id"], soft=False))).remote(backend)
            for n in nodes if n["ray_gpus"] or len(nodes) == 1
        }
        problems = {}
        for node, ref in refs.items():
            try:
                problem = ray.get(ref, timeout=timeout_s)
            except GetTimeoutError:
                ray.cancel(ref, force=True)
                problem = f"the runtime_env was not ready after {timeout_s:g} s"
            except RayError as exc:
                lines = [line for line in str(exc).splitlines() if line.strip()]
                problem = f"the runtime_env cannot start: {lines[-1] if lines else exc}"
            if problem:
                problems[node] = problem
        name = f"backend {backend} in its runtime_env ({spec.kind})"
        if problems:
            report.add(name, "fail", "; ".join(f"{k}: {v}" for k, v in problems.items()),
                       "fix the runtime_env (runtime_envs/*.yaml): the image, interpreter or "
                       "packages must provide lem-ray and the backend's libraries with the "
                       "cluster's Ray and Python")
        else:
            report.add(name, "ok", f"imports on the {len(refs)} nodes that can run it")


def _check_podman(report: DoctorReport, nodes: list[dict[str, Any]],
                  envs: dict[str, RuntimeEnvSpec] | None) -> None:
    without = [_node_name(n) for n in nodes if not n["podman"]]
    imaged = sorted(b for b, spec in (envs or {}).items() if spec.kind == "image_uri")
    if envs is not None and not imaged:
        report.add("podman", "ok", "the campaign's backends use no container image")
        return
    if not without:
        report.add("podman", "ok", "podman found on every node")
        return
    gpu_without = [_node_name(n) for n in nodes if not n["podman"] and n["ray_gpus"]]
    if imaged and gpu_without:
        report.add("podman", "fail",
                   f"{', '.join(imaged)} run in a container image (runtime_env image_uri), "
                   f"and podman is not found on the GPU nodes {', '.join(gpu_without)}",
                   "install podman on every GPU node (Ray starts image_uri workers with it)")
        return
    report.add("podman", "warn",
               f"podman not found on {', '.join(without)}: a backend runtime_env that uses a "
               "container image (image_uri) cannot start there; fine when lem-ray and the "
               "backends are installed on the nodes", "install podman on GPU nodes that run "
               "image-based backends")


def _check_results_dir(report: DoctorReport, nodes: list[dict[str, Any]], results_dir: str) -> None:
    unwritable = {_node_name(n): n["results_dir_error"] for n in nodes if n["results_dir_error"]}
    if unwritable:
        report.add("results dir writable", "fail",
                   f"{results_dir}: " + "; ".join(f"{k}: {v}" for k, v in unwritable.items()),
                   "make the directory writable by the user Ray runs as on every node")
    else:
        report.add("results dir writable", "ok",
                   f"{results_dir}: a task on each of the {len(nodes)} nodes wrote, read back "
                   "and deleted a file")
    try:
        require_shared_results_dir(results_dir)
    except ConfigError as exc:
        report.add("results dir shared", "fail", exc.message,
                   "mount shared storage at the same path on every node, or use s3://...")
    else:
        report.add("results dir shared", "ok", "every node sees the same results directory"
                   if len(nodes) > 1 else "one node: nothing to share")


def _check_auth(report: DoctorReport) -> None:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    mode = os.environ.get(AUTH_MODE_ENV)
    if is_token_auth_enabled():
        report.add("token auth", "ok",
                   f"token authentication on (RAY_AUTH_MODE={mode or 'token (Ray default)'}; "
                   f"a token {'is' if auth_token_available() else 'is not'} in a file or "
                   "RAY_AUTH_TOKEN on the driver)")
    else:
        report.add("token auth", "warn",
                   f"token authentication off (RAY_AUTH_MODE={mode or 'unset'}): anyone who "
                   "reaches the cluster's ports can run code on it", AUTH_FIX)


def run_doctor(address: str | None = None, results_dir: str | Path | None = None,
               plan: CampaignPlan | None = None) -> DoctorReport:
    """All checks; connects like `lem-ray campaign` does (a local instance without address).

    With a campaign, its results directory is checked (unless results_dir is given) and its
    backends are imported inside their runtime_envs on the GPU nodes.
    """
    report = DoctorReport()
    envs = plan.runtime_envs() if plan is not None else None
    if results_dir is None and plan is not None:
        results_dir = plan.results_dir()
    target = address or os.environ.get("RAY_ADDRESS")
    try:
        started = connect(address)
    except Exception as exc:
        report.add("ray", "fail", f"cannot connect to {target or 'a local Ray'}: "
                   f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                   "start Ray (ray start --head, cluster/local.sh, ray up) and pass --address "
                   f"or RAY_ADDRESS; with token authentication: {AUTH_FIX}")
        return report
    try:
        where = (target or "a local Ray instance started for this check (no --address or "
                 "RAY_ADDRESS), as lem-ray campaign would") if started else \
            "the Ray this process is already connected to"
        report.add("ray", "ok", f"connected to {where}")
        _check_auth(report)
        out = str(results_dir) if results_dir is not None else None
        created = out is not None and "://" not in out and not Path(out).exists()
        nodes = _probe_all(out)
        report.nodes = nodes
        _check_versions(report, nodes)
        _check_gpus(report, nodes)
        _check_host_energy(report, nodes)
        _check_backends(report, nodes)
        if plan is not None and envs is not None:
            _check_runtime_envs(report, nodes, envs,
                                plan.campaign.execution.runtime_env_timeout_s)
        _check_podman(report, nodes, envs)
        if out is not None:
            _check_results_dir(report, nodes, out)
            if created and Path(out).is_dir() and not any(Path(out).iterdir()):
                Path(out).rmdir()
    finally:
        if started:
            ray.shutdown()
    return report
