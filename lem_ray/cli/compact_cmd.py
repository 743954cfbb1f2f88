"""`lem-ray compact RESULTS_DIR`: merge the small per-attempt files into a few large ones."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click

from lem_ray.cli.common import console, fail


@click.command()
@click.argument("results_dir")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def compact(results_dir: str, as_json: bool) -> None:
    """Merge the per-attempt Parquet files of finished attempts into a few files per table.

    Safe while a campaign runs and while others read: readers never see an attempt twice or
    miss one. Needs no Ray. A campaign compacts its results by itself when it ends. Files the
    reader skips (damaged, foreign) are moved to RESULTS_DIR/quarantine/, each with a warning.
    Exit codes: 0 done, 1 an I/O error stopped it (nothing lost; run it again), 2 bad input.
    """
    from lem_ray.errors import ConfigError
    from lem_ray.results.compact import (
        QUARANTINE,
        CompactionBusy,
        CompactionFailed,
        compact as compact_results,
    )
    from lem_ray.results.store import exists

    try:
        if not exists(results_dir, "experiments"):
            fail(f"{results_dir}: no experiments table here (not a results directory, or no run "
                 "has finished)")
        done = compact_results(results_dir)
    except (CompactionBusy, ConfigError) as exc:
        fail(str(exc))
    except (CompactionFailed, OSError) as exc:
        click.echo(f"lem-ray: error: {' '.join(str(exc).split())} (every row is still in a "
                   "file; run it again once that is fixed)", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"results_dir": results_dir,
                               "tables": {t: asdict(r) for t, r in done.items()}}, indent=2))
        return
    out = console()
    for table, result in done.items():
        out.print(f"{table}: {result.merged_files} files merged into {len(result.written)} "
                  f"({result.rows:,} rows)"
                  + (f", {result.removed_leftovers} leftovers of an interrupted compaction removed"
                     if result.removed_leftovers else "")
                  + (f", {len(result.quarantined)} moved to {QUARANTINE}/{table}/"
                     if result.quarantined else ""))
