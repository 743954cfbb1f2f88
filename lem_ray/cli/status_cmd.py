"""`lem-ray status RESULTS_DIR`: where a campaign stands, read from its manifest on disk."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from lem_ray.cli.common import console, fail
from lem_ray.errors import ConfigError
from lem_ray.results.gpu_time import gpu_seconds
from lem_ray.results.manifest import STATES, UNFINISHED, load_manifest
from lem_ray.results.store import exists


@click.command()
@click.argument("results_dir")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def status(results_dir: str, as_json: bool) -> None:
    """Counts by state, every run, and what is left, for the campaign in RESULTS_DIR.

    Needs no Ray: the manifest on disk is what a running driver has acknowledged.
    """
    try:
        if not exists(results_dir, "manifest"):
            fail(f"{results_dir}: no campaign manifest here "
                 "(not a results directory, or no run has started)")
        manifest = load_manifest(results_dir)
    except ConfigError as exc:
        fail(str(exc))
    runs = sorted(manifest["runs"].items(), key=lambda kv: (kv[1]["cycle"], kv[0]))
    counts = Counter(entry["state"] for _, entry in runs)
    left = [key for key, entry in runs if entry["state"] in UNFINISHED]
    gpu_time = gpu_seconds(results_dir)
    if as_json:
        click.echo(json.dumps({
            "campaign_name": manifest.get("campaign_name"),
            "counts": {state: counts.get(state, 0) for state in STATES},
            "left": left,
            "gpu_seconds": gpu_time["gpu_seconds"] if gpu_time else None,
            "gpu_time": {k: v for k, v in gpu_time.items() if k != "gpu_seconds"}
            if gpu_time else None,
            "runs": [{"run_id": key, **entry} for key, entry in runs],
        }, indent=2))
        return
    out = console()
    table = Table(title=f"{manifest.get('campaign_name')}: {len(runs)} runs ({results_dir})")
    for col in ("run_id", "cycle", "state", "attempt", "node", "updated (UTC)", "error"):
        table.add_column(col)
    for key, e in runs:
        updated = datetime.fromtimestamp(e["updated_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(key, str(e["cycle"]), e["state"], str(e["attempt"]),
                      str(e.get("node_id") or "-")[:12], updated,
                      str(e.get("error") or "").strip().split("\n")[0][:80])
    out.print(table)
    out.print(", ".join(f"{counts.get(s, 0)} {s}" for s in STATES))
    print_gpu_time(gpu_time, out)
    if left:
        out.print(f"{len(left)} runs left; run the campaign command again to resume")
    elif counts.get("failed"):
        out.print("nothing left; --retry-failed reruns the failed runs")


def print_gpu_time(gpu_time: dict[str, Any] | None, console: Console) -> None:
    """One line: where the GPU-seconds of the cluster went, measuring first."""
    if not gpu_time or not gpu_time["total_gpu_s"]:
        return
    total = gpu_time["total_gpu_s"]
    parts = ", ".join(f"{name} {seconds:,.0f} ({seconds / total:.0%})"
                      for name, seconds in gpu_time["gpu_seconds"].items())
    console.print(f"GPU-seconds: {total:,.0f} over {gpu_time['wall_s']:,.0f} s wall: {parts}")
