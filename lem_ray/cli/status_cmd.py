"""`lem-ray status RESULTS_DIR`: where a campaign stands, read from its manifest on disk and
checked against the rows it points to."""

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
from lem_ray.results.compile_cache import SAVINGS_COLUMNS, load_savings, savings_text
from lem_ray.results.gpu_time import gpu_seconds
from lem_ray.results.manifest import (
    RECONCILE_COLUMNS,
    STATES,
    UNFINISHED,
    ManifestDamaged,
    load_manifest,
    reconciled,
)
from lem_ray.results.store import exists, read_table

# A terminal table of 50,000 runs takes minutes to lay out and nobody reads it.
TABLE_ROWS = 50


def worth_showing(runs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """All runs of a small campaign; else the first TABLE_ROWS not ok, then ok ones."""
    if len(runs) <= TABLE_ROWS:
        return runs
    not_ok = [run for run in runs if run[1]["state"] != "ok"]
    return (not_ok + [run for run in runs if run[1]["state"] == "ok"])[:TABLE_ROWS]


@click.command()
@click.argument("results_dir")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--all", "show_all", is_flag=True,
              help=f"List every run (by default at most {TABLE_ROWS}, those not ok first).")
def status(results_dir: str, as_json: bool, show_all: bool) -> None:
    """Counts by state, the runs not ok, and what is left, for the campaign in RESULTS_DIR.

    Needs no Ray: the manifest on disk is what a running driver has acknowledged, and the
    experiments table says which ok runs still have their rows (those without are lost).
    """
    try:
        if not exists(results_dir, "manifest"):
            fail(f"{results_dir}: no campaign manifest here "
                 "(not a results directory, or no run has started)")
        manifest = load_manifest(results_dir)
        experiments = read_table(results_dir, "experiments",
                                 columns=[*RECONCILE_COLUMNS, *SAVINGS_COLUMNS])
        found = reconciled(manifest, experiments)
    except ManifestDamaged as exc:
        fail(f"{exc}; the campaign's own command (lem-ray campaign FILE) rebuilds it from the "
             "dataset")
    except ConfigError as exc:
        fail(str(exc))
    runs = sorted(found.items(), key=lambda kv: (kv[1]["cycle"], kv[0]))
    counts = Counter(entry["state"] for _, entry in runs)
    left = [key for key, entry in runs if entry["state"] in UNFINISHED]
    gpu_time = gpu_seconds(results_dir)
    savings = load_savings(experiments.select(SAVINGS_COLUMNS).to_pylist())
    if as_json:
        click.echo(json.dumps({
            "campaign_name": manifest.get("campaign_name"),
            "counts": {state: counts.get(state, 0) for state in STATES},
            "left": left,
            "gpu_seconds": gpu_time["gpu_seconds"] if gpu_time else None,
            "gpu_time": {k: v for k, v in gpu_time.items() if k != "gpu_seconds"}
            if gpu_time else None,
            "compile_cache": savings,
            "runs": [{"run_id": key, **entry} for key, entry in runs],
        }, indent=2))
        return
    out = console()
    table = Table(title=f"{manifest.get('campaign_name')}: {len(runs)} runs ({results_dir})")
    for col in ("run_id", "cycle", "state", "attempt", "node", "updated (UTC)", "error"):
        table.add_column(col)
    shown = runs if show_all else worth_showing(runs)
    for key, e in shown:
        updated = datetime.fromtimestamp(e["updated_at"], timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        table.add_row(key, str(e["cycle"]), e["state"], str(e["attempt"]),
                      str(e.get("node_id") or "-")[:12], updated,
                      str(e.get("error") or "").strip().split("\n")[0][:80])
    out.print(table)
    if len(shown) < len(runs):
        out.print(
            f"{len(shown)} of {len(runs)} runs listed, those not ok first; --all lists every run"
        )
    out.print(", ".join(f"{counts.get(s, 0)} {s}" for s in STATES))
    print_gpu_time(gpu_time, out)
    print_compile_savings(savings, out)
    if counts.get("lost"):
        out.print(f"{counts['lost']} runs lost: ok once, their rows are no longer readable "
                  "(deleted or damaged files); the next campaign runs them again")
    if left:
        out.print(f"{len(left)} runs left; run the campaign command again to resume")
    elif counts.get("failed"):
        out.print("nothing left; --retry-failed reruns the failed runs")


def print_compile_savings(savings: dict[str, Any] | None, console: Console) -> None:
    """The compile cache's savings line, where the cache saved anything."""
    text = savings_text(savings)
    if text:
        console.print(text)


def print_gpu_time(gpu_time: dict[str, Any] | None, console: Console) -> None:
    """One line: where the GPU-seconds of the cluster went, measuring first."""
    if not gpu_time or not gpu_time["total_gpu_s"]:
        return
    total = gpu_time["total_gpu_s"]
    parts = ", ".join(f"{name} {seconds:,.0f} ({seconds / total:.0%})"
                      for name, seconds in gpu_time["gpu_seconds"].items())
    console.print(f"GPU-seconds: {total:,.0f} over {gpu_time['wall_s']:,.0f} s wall: {parts}")
