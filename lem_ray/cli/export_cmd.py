"""`lem-ray export mlflow RESULTS_DIR`: the counted runs into MLflow, once each."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from lem_ray.cli.common import console, fail
from lem_ray.errors import ConfigError


@click.group()
def export() -> None:
    """Copy results into other tools."""


@export.command("mlflow")
@click.argument("results_dir")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
              "MLflow's own default).")
@click.option("--experiment", "experiment_name",
              help="MLflow experiment to log into (default: the campaign's name).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def mlflow_cmd(results_dir: str, tracking_uri: str | None, experiment_name: str | None,
           as_json: bool) -> None:
    """Log each counted run (ok and not invalid) of RESULTS_DIR as an MLflow run.

    Parameters: the resolved config; metrics: the row's figures; metric histories: each
    GPU's instant power. Rerunning logs only attempts not exported yet. Needs no Ray.
    """
    try:
        import mlflow  # noqa: F401
    except ImportError:
        fail("lem-ray export mlflow needs MLflow: pip install 'lem-ray[mlflow]'")
    from lem_ray.results.mlflow_export import export_mlflow
    from lem_ray.results.store import exists

    if not exists(results_dir, "experiments"):
        fail(f"{results_dir}: no experiments table here (not a results directory, or no run "
             "has finished)")
    try:
        done = export_mlflow(results_dir, tracking_uri, experiment_name)
    except ConfigError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(asdict(done), indent=2))
        return
    console().print(f"MLflow experiment {done.experiment_name!r} at {done.tracking_uri}: "
                    f"{len(done.logged)} runs logged, {done.skipped} already there")
