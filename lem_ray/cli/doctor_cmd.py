"""`lem-ray doctor`: check the cluster before a long campaign."""

from __future__ import annotations

import json
import sys

import click
from rich.markup import escape
from rich.table import Table

from lem_ray.cli.common import console

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@click.command()
@click.option("--address", help="Ray cluster to check (default: RAY_ADDRESS, else a local Ray).")
@click.option("--results-dir", help="Check that every node can write here and sees the same "
              "directory (a path or s3://...).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def doctor(address: str | None, results_dir: str | None, as_json: bool) -> None:
    """Ray and versions, nodes and GPUs, NVML and the energy counter on each GPU node (checked
    by a task there), backends, podman, results directory, token authentication.

    Exit codes: 0 nothing failed (warnings allowed), 1 a check failed.
    """
    from lem_ray.execution.doctor import run_doctor

    report = run_doctor(address, results_dir)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        out = console()
        table = Table(title="lem-ray doctor", show_lines=True)
        for column in ("check", "status", "detail", "fix"):
            table.add_column(column, overflow="fold")
        for c in report.checks:
            table.add_row(escape(c.name), f"[{STYLE[c.status]}]{c.status}[/]", escape(c.detail),
                          escape(c.fix or ""))
        out.print(table)
        counts = {s: sum(c.status == s for c in report.checks) for s in STYLE}
        out.print(", ".join(f"{n} {s}" for s, n in counts.items()))
    sys.exit(1 if report.failed else 0)
