"""`lem-ray`: a thin face over lem_ray's Python API."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from lem_ray.cli.common import OneLineGroup, console, fail
from lem_ray.errors import ConfigError


def _confirm_fresh(results_dir: str, yes: bool) -> None:
    """Ask before old results are moved aside (refused without a terminal to ask on)."""
    from lem_ray.results.store import exists

    if yes or not exists(results_dir):
        return
    if not sys.stdin.isatty():
        fail(f"--fresh would move {results_dir} aside: confirm with --yes")
    click.confirm(f"Move {results_dir} aside and start over?", abort=True, err=True)


def _fail(exc: ConfigError, campaign: str) -> None:
    fail(str(exc.with_file(campaign)))


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lem-ray")
def main() -> None:
    """LLM inference energy campaigns on Ray."""


@main.command()
@click.argument("grid", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--results-dir", help="Where results go, a path or a URI such as s3://bucket/dir "
              "(default: the campaign's output.results_dir).")
@click.option("--address", help="Ray cluster to use (default: RAY_ADDRESS, else a local Ray).")
@click.option("--dry-run", is_flag=True, help="Expand and validate only: no Ray, nothing written.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--retry-failed", is_flag=True, help="Also rerun runs that ended failed.")
@click.option("--fresh", is_flag=True, help="Move the old results aside and start over "
              "(the compile cache in them stays).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before --fresh moves results.")
def campaign(grid: Path | None, results_dir: str | None, address: str | None, dry_run: bool,
             as_json: bool, retry_failed: bool, fresh: bool, yes: bool) -> None:
    """Run the campaign in GRID (a YAML file); a rerun resumes where the last one stopped.

    Without GRID, runs the built-in quickstart: a tiny random-weight model on CPU or GPU.
    Exit codes: 0 all ok, 1 a run failed, 2 bad input or another driver on the results
    directory, 130 interrupted (Ctrl-C, or SIGTERM as `ray job stop` sends).
    """
    from lem_ray.execution.driver.interrupts import sigterm_as_interrupt

    with sigterm_as_interrupt():
        _campaign(grid, results_dir, address, dry_run, as_json, retry_failed, fresh, yes)


def _campaign(grid: Path | None, results_dir: str | None, address: str | None, dry_run: bool,
              as_json: bool, retry_failed: bool, fresh: bool, yes: bool) -> None:
    from lem_ray.assets import QUICKSTART_CAMPAIGN
    from lem_ray.planning.plan import plan_campaign

    grid = grid or QUICKSTART_CAMPAIGN
    out = console(stderr=False)
    err = console(stderr=True)
    from lem_ray.execution.checks.preflight import preflight

    try:
        plan = plan_campaign(grid)
        target = str(plan.results_dir(results_dir))
        preflight(plan, target, address, fresh, reach=not dry_run)
        plan.runtime_envs()
        plan.load_prompts()
    except ConfigError as exc:
        _fail(exc, str(grid))
    except OSError as exc:  # a path in the campaign the system refuses (too long, no access)
        fail(f"{grid}: {exc.strerror or exc}: {str(exc.filename)[:200]}")
    labels = plan.labels()
    if dry_run:
        if as_json:
            click.echo(json.dumps(plan.to_json(), indent=2))
        else:
            from lem_ray.cli.render import print_plan

            print_plan(plan, labels, out)
        return

    from lem_ray.cli.render import LiveProgress, print_summary
    from lem_ray.execution.driver.campaign import run_campaign
    from lem_ray.execution.driver.dispatch import CampaignInterrupted
    from lem_ray.results.lease import LeaseLost

    if fresh:
        _confirm_fresh(target, yes)
    try:
        with LiveProgress(err, total=len(plan.runs), labels=labels) as live:
            result = run_campaign(plan, results_dir=target, address=address, reporter=live,
                                  retry_failed=retry_failed, fresh=fresh)
    except ConfigError as exc:
        _fail(exc, str(grid))
    except LeaseLost as exc:
        fail(f"{exc}; this driver stopped, its runs in progress marked interrupted")
    except CampaignInterrupted as exc:
        err.print(f"interrupted: {exc.interrupted} runs in progress were stopped and marked "
                  "interrupted; run the same command again to resume")
        sys.exit(130)
    if as_json:
        payload = {**asdict(result), "results_dir": str(result.results_dir)}
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        if result.moved_aside:
            err.print(f"old results moved to {result.moved_aside}")
        print_summary(result, out)
    sys.exit(1 if result.counts["failed"] else 0)


from lem_ray.cli.report_cmd import report  # noqa: E402

main.add_command(report)


from lem_ray.cli.status_cmd import status  # noqa: E402

main.add_command(status)

from lem_ray.cli.doctor_cmd import doctor  # noqa: E402

main.add_command(doctor)

from lem_ray.cli.compact_cmd import compact  # noqa: E402

main.add_command(compact)

from lem_ray.cli.export_cmd import export  # noqa: E402

main.add_command(export)
