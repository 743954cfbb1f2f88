"""On a cluster of several nodes, the results directory must be one place every node sees."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lem_ray.errors import ConfigError
from lem_ray.results.store import resolve

MARKER_PREFIX = ".lem-ray-shared-"


@ray.remote(num_cpus=0, max_retries=0)
def sees_marker(path: str, token: str) -> bool:
    """Runs on one node: does that node see the file the driver just wrote?"""
    try:
        return Path(path).read_text(encoding="utf-8") == token
    except OSError:
        return False


def alive_nodes() -> list[dict[str, Any]]:
    """Ray's live nodes."""
    return [n for n in ray.nodes() if n.get("Alive")]


def probe_nodes(path: str, token: str, nodes: list[dict[str, Any]],
                probe: Any = None) -> dict[str, bool]:
    """node id -> whether a task pinned to that node reads `token` from `path`; `probe` is a
    Ray remote function like sees_marker (Ray's types for those are private)."""
    task = probe or sees_marker
    refs = {
        n["NodeID"]: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(path, token)
        for n in nodes
    }
    return {node: ray.get(ref) for node, ref in refs.items()}


def unshared_message(results_dir: str, blind: list[str], total: int) -> str:
    """The refusal when the results directory is not seen by every node, with the fix."""
    return (
        f"results dir {results_dir} is on one node's local disk: {len(blind)} of {total} nodes "
        f"({', '.join(blind)}) do not see it. The driver writes results where it runs, so a "
        "resumed campaign whose driver lands on another node (ray job submit may place it on "
        "any node), and lem-ray status or report run there, would not find them; on a "
        "multi-node cluster use shared storage: an NFS path mounted at the same place on every "
        "node, or an object store URI such as s3://bucket/path"
    )


def require_shared_results_dir(results_dir: str,
                               probe: Any = None) -> None:
    """Refuse a node-local results directory on a cluster of more than one node.

    An object store URI is reachable from every node. A local path is checked for real: the
    driver writes a marker file and a task on every node reads it back, so an NFS mount (or
    several Ray nodes on one host) passes and a node's own disk is refused.
    """
    scheme = str(results_dir).split("://", 1)[0] if "://" in str(results_dir) else "file"
    nodes = alive_nodes()
    if scheme != "file" or len(nodes) <= 1:
        return
    _, base = resolve(results_dir)
    directory = Path(base)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    marker = directory / f"{MARKER_PREFIX}{token}"
    marker.write_text(token, encoding="utf-8")
    try:
        seen = probe_nodes(str(marker), token, nodes, probe)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n["NodeManagerAddress"] or n["NodeID"] for n in nodes if not seen[n["NodeID"]]]
    if blind:
        if created and not any(directory.iterdir()):
            directory.rmdir()
        raise ConfigError(unshared_message(results_dir, blind, len(nodes)), path="results_dir")
