"""`lem-ray doctor`: check the cluster before a long campaign."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from lem_ray.cli.common import console, fail
from lem_ray.errors import ConfigError

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@click.command()
@click.argument("grid", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--address", help="Ray cluster to check (default: RAY_ADDRESS, else a local Ray).")
@click.option("--results-dir", help="Check that every node can write here and sees the same "
              "directory (a path or s3://...).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def doctor(grid: Path | None, address: str | None, results_dir: str | None,
           as_json: bool) -> None:
    """Ray and versions, nodes and GPUs, NVML and the energy counter on each GPU node (checked
    by a task there), backends, podman, results directory, token authentication.

    With GRID (a campaign file), its results directory is checked and its backends are
    imported inside their runtime_envs on the GPU nodes.
    Exit codes: 0 nothing failed (warnings allowed), 1 a check failed, 2 bad input.
    """
    from lem_ray.execution.checks.doctor import run_doctor
    from lem_ray.planning.plan import plan_campaign

    try:
        plan = plan_campaign(grid) if grid is not None else None
        report = run_doctor(address, results_dir, plan)
    except ConfigError as exc:
        fail(str(exc.with_file(str(grid)) if grid is not None else exc))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        out = console()
        table = Table(title="lem-ray doctor", show_lines=True)
        for column in ("check", "status", "detail", "fix"):
            table.add_column(column, overflow="fold")
        for c in report.checks:
            table.add_row(c.name, Text(c.status, style=STYLE[c.status]), c.detail, c.fix or "")
        out.print(table)
        counts = {s: sum(c.status == s for c in report.checks) for s in STYLE}
        out.print(", ".join(f"{n} {s}" for s, n in counts.items()))
    sys.exit(1 if report.failed else 0)
