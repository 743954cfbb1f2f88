"""`lem-ray report`: per-group statistics of a results directory, as a table, CSV, HTML, JSON.

Reads committed Parquet files only, so it can run while a campaign is still writing.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lem_ray.cli.common import check_output_file, console, fail, label_width
from lem_ray.errors import ConfigError
from lem_ray.results.bootstrap import CI_LEVEL
from lem_ray.results.labels import wrap_label
from lem_ray.results.manifest import load_manifest, reconciled
from lem_ray.results.pairs import pair_runs
from lem_ray.results.report import (
    DEFAULT_GROUP_BY,
    DEFAULT_MAX_CYCLE_CV,
    ENERGY_METRICS,
    METRIC_TITLES,
    PERCENTILES,
    PERFORMANCE_METRICS,
    REQUEST_METRICS,
    STATS_NOTE,
    SUMMARY,
    Report,
    batch_series,
    build_report,
    cell_lines,
    cycle_cv_text,
    format_number,
    shown_metrics,
)
from lem_ray.results.slo import best_under_slo
from lem_ray.results.store import exists, open_dataset, read_table, resolve, write_table

POWER_RUNS_DEFAULT = 6


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _power_choice(report: Report, run_ids: list[str]) -> list[dict[str, Any]]:
    """The runs to plot power for: those named, else the first counted cycle of each group."""
    if not run_ids:
        return [members[0] for members in report.members if members][:POWER_RUNS_DEFAULT]
    by_id = {r["run_id"]: r for r in report.runs}
    unknown = [r for r in run_ids if r not in by_id]
    if unknown:
        raise ConfigError(f"unknown run_id {unknown[0]!r}; run_ids look like "
                          f"{report.runs[0]['run_id']!r}", path="--power-runs")
    return [by_id[r] for r in run_ids]


def _lost(results_dir: str, experiments: pa.Table) -> list[str]:
    """Runs the manifest says ended ok whose ok row is no longer readable: the report cannot
    count them, so it says how many. No manifest (copied tables) or a damaged one: none
    known (`lem-ray status` reports a damaged manifest)."""
    if not exists(results_dir, "manifest"):
        return []
    try:
        runs = reconciled(load_manifest(results_dir), experiments)
    except ConfigError:
        return []
    return sorted(key for key, entry in runs.items() if entry["state"] == "lost")


def _power_samples(
    results_dir: str, runs: list[dict[str, Any]]
) -> dict[tuple[str, int], list[dict]]:
    """Timeseries rows of the chosen runs' attempts, read with a filter (the table is large).
    Only attempts whose experiments row is ok: samples of one that failed (its rows written,
    its experiments row not) belong to no figure."""
    if not runs:
        return {}
    dataset = open_dataset(results_dir, "timeseries")
    if dataset is None:
        return {}
    table = dataset.to_table(
        columns=["run_id", "attempt", "gpu_uuid", "t_s", "power_w"],
        filter=ds.field("run_id").isin(sorted({r["run_id"] for r in runs})),
    )
    wanted = {(r["run_id"], r["attempt"]) for r in runs if r["status"] == "ok"}
    samples: dict[tuple[str, int], list[dict]] = {}
    for row in table.to_pylist():
        key = (row["run_id"], row["attempt"])
        if key in wanted:
            samples.setdefault(key, []).append(row)
    return samples


def _requests(results_dir: str) -> list[dict[str, Any]]:
    """The requests table's energy columns only (the table is large)."""
    return read_table(results_dir, "requests", columns=[
        "run_id", "attempt", "output_tokens", "energy_j", "energy_attribution"]).to_pylist()


def _request_table(report: Report, title: str, console: Console) -> Table:
    shown = [g for g in report.groups[:TABLE_ROWS] if g["request_energy_j_p50"] is not None]

    def build(width: int) -> Table:
        table = Table(title=title, box=box.HORIZONTALS)
        table.add_column("group", min_width=width, overflow="fold")
        table.add_column("attribution")
        for p in PERCENTILES:
            table.add_column(f"J/request p{p}", justify="right")
        for p in PERCENTILES:
            table.add_column(f"J/out tok p{p}", justify="right")
        for g in shown:
            table.add_row(Text("\n".join(wrap_label(g["label"] or g["group"], width))),
                          g["request_energy_attribution"] or "-",
                          *[format_number(g[f"request_{m}_p{p}"])
                            for m in REQUEST_METRICS for p in PERCENTILES])
        return table

    return build(label_width(build, [g["label"] or g["group"] for g in shown], console))


def _steady_window_s(row: dict[str, Any]) -> tuple[float, float] | None:
    start_s, duration_s = row.get("steady_start_epoch_s"), row.get("steady_duration_s")
    if start_s is None or duration_s is None:
        return None
    return start_s, start_s + duration_s


def _write_csv(path: Path, report: Report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY.names)
        writer.writeheader()
        for g in report.groups:
            writer.writerow({k: ";".join(v) if isinstance(v, list) else v for k, v in g.items()})


def _write_html(path: Path, report: Report, results_dir: str, power_runs: list[dict[str, Any]],
                latency_metric: str) -> None:
    from lem_ray.results import plots
    from lem_ray.results.html import Plot, render_html

    counted = [r for members in report.members for r in members]
    by_batch, series = batch_series(counted)
    samples = _power_samples(results_dir, power_runs)
    labels = {r["run_id"]: label for label, members in zip(plots.point_labels(report.groups),
                                                           report.members) for r in members}
    power = [
        plots.PowerRun(
            title=f"{r['run_id']} attempt {r['attempt']}: {labels.get(r['run_id'], r['status'])}",
            samples=samples.get((r["run_id"], r["attempt"]), []),
            measure_window_s=(r["measure_start_epoch_s"], r["measure_end_epoch_s"])
            if r.get("measure_start_epoch_s") is not None
            and r.get("measure_end_epoch_s") is not None
            else None,
            steady_window_s=_steady_window_s(r),
        )
        for r in power_runs
    ]
    latency = plots.AXIS_TITLES[latency_metric]
    bars = f"bars: {CI_LEVEL:.0%} bootstrap CI of the mean (none where n<2)"
    figures = [
        Plot(
            "Energy vs latency",
            f"J per output token against {latency}, one point per group (mean); {bars}; "
            "dashed: Pareto frontier, lower is better on both axes.",
            plots.pareto_png(
                report.groups, latency_metric, "energy_j_per_output_token", True, True
            ),
        ),
        Plot(
            "Energy vs throughput",
            f"J per output token against output tokens/s, one point per group; {bars}; "
            "dashed: Pareto frontier (lower energy, higher throughput).",
            plots.pareto_png(
                report.groups, "throughput_tok_s", "energy_j_per_output_token", False, True
            ),
        ),
        Plot(
            "Throughput vs latency",
            f"Output tokens/s against {latency}, one point per group; {bars}; "
            "dashed: Pareto frontier (higher throughput, lower latency).",
            plots.pareto_png(report.groups, latency_metric, "throughput_tok_s", True, False),
        ),
        Plot(
            "Batch size",
            "J per output token and throughput against batch size over all counted runs "
            "whatever --group-by; one line per configuration (model, backend, precision, GPUs "
            "and every backend option, e.g. torch_compile), named by what differs between the "
            f"lines; {bars}.",
            plots.batch_size_png(by_batch.groups, series),
        ),
        Plot(
            "Power over time",
            "Instant power per GPU from the timeseries table; shaded: the measure window "
            "whose energy the figures above use.",
            plots.power_png(power),
        ),
    ]
    names = sorted({r["campaign_name"] for r in report.runs})
    invalid = sum(e["status"] == "invalid" for e in report.excluded)
    meta = [
        f"results: {results_dir}; grouped by: {', '.join(report.group_by)}",
        f"{len(report.runs)} runs (latest attempt of each): {len(counted)} counted, "
        f"{invalid} invalid, {len(report.excluded) - invalid} failed",
        f"generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, f"lem-ray report: {', '.join(names)}", meta, figures),
                    encoding="utf-8")


def _table(report: Report, title: str, metrics: list[str], console: Console) -> Table:
    shown = report.groups[:TABLE_ROWS]

    def build(width: int) -> Table:
        table = Table(title=title, box=box.HORIZONTALS, show_lines=True)
        table.add_column("group", min_width=width, overflow="fold")
        for name in ("backend", "precision", "batch", "runs", "cycle CV"):
            table.add_column(name)
        for m in metrics:
            table.add_column(METRIC_TITLES[m], justify="right")
        for g in shown:
            table.add_row(
                _group_cell(g, width),
                Text(g["backend"] or "-"), Text(g["fp_precision"] or "-"),
                format_number(g["batch_size"]),
                f"{g['runs_ok']}/{g['runs_invalid']}/{g['runs_failed']}",
                Text(cycle_cv_text(g).replace(" · ", "\n"),
                     style="bold red" if g["cycle_cv_above"] else ""),
                *[Text("\n".join(cell_lines(g, m))) for m in metrics],
            )
        return table

    return build(label_width(build, [g[k] for g in shown for k in ("label", "group")], console))


def _group_cell(group: dict[str, Any], width: int) -> Text:
    """The group's label over its name (an experiment id, or key=value pairs)."""
    lines = wrap_label(group["label"], width) if group["label"] != group["group"] else []
    return Text("\n".join([*lines, *wrap_label(group["group"], width, ", ")]))


# Laying out a terminal table of 16,000 groups took 100 s of a 50,000-run report.
TABLE_ROWS = 50


def _print(report: Report, console: Console, files: dict[str, str],
           lost: tuple[str, ...] | list[str] = ()) -> None:
    """Energy and performance as two tables, so that each fits a terminal's width."""
    shown = shown_metrics(report)
    groups_by = f"{len(report.groups)} groups by {', '.join(report.group_by)}"
    for title, metrics in (
        ("energy", ENERGY_METRICS),
        ("throughput and latency", PERFORMANCE_METRICS),
    ):
        present = [m for m in metrics if m in shown]
        if present:
            console.print(_table(report, f"{title}: {groups_by}", present, console))
    if any(g["request_energy_j_p50"] is not None for g in report.groups):
        console.print(_request_table(report, f"GPU energy per request: {groups_by}", console))
    if any(g["energy_with_host_j_per_output_token_n"] for g in report.groups):
        console.print("GPU J/out tok: the GPUs' energy only. GPU+host J/out tok: plus the node's "
                      "CPU package and DRAM counters (RAPL), from runs that had the node to "
                      "themselves only (host_shared_by_runs = 0)")
    disagree = [f"{g['label']} ({g['energy_methods_disagree_runs']})" for g in report.groups
                if g["energy_methods_disagree_runs"]]
    if disagree:
        console.print("energy counter and integrated power disagree beyond "
                      f"validity.max_energy_methods_gap in: {', '.join(disagree)}")
    if not report.energy_measured:
        console.print("energy: not measured (no NVML GPU on the nodes that ran); "
                      "see energy_unavailable_reason in the experiments table")
    console.print(f"runs: counted/invalid/failed (latest attempt of each run). {STATS_NOTE}")
    above = [g["label"] for g in report.groups if g["cycle_cv_above"]]
    apart = any((g["engines"] or 0) > 1 for g in report.groups)
    compiled = any(g["artifacts"] for g in report.groups)
    if report.groups:
        console.print(
            "cycle CV: cycle-to-cycle coefficient of variation of J/output token (E) and "
            "throughput (T) over a group's counted runs; "
            f"limit {report.groups[0]['max_cycle_cv']:.0%}"
            + (f"; above it: {', '.join(above)}" if above else "")
            + (
                "; N engines: the cycles ran on N engines loaded apart, whose own differences "
                "(kernels tuned per compile) the CV includes"
                if apart
                else ""
            )
            + (
                "; N artifacts: the cycles ran N different compiled kernels (compile_cache_hash), "
                "1 artifact: one compile's, loaded from the compile cache"
                if compiled
                else ""
            )
        )
    if len(report.groups) > TABLE_ROWS:
        console.print(
            f"the first {TABLE_ROWS} of {len(report.groups)} groups listed; every group is "
            "in the summary file (and --csv, --json)"
        )
    for e in report.excluded[:TABLE_ROWS]:
        style = "yellow" if e["status"] == "invalid" else "red"
        console.print(
            Text.assemble(
                (f"{e['status']:<8}", style),
                f"{e['run_id']} attempt {e['attempt']} ({e['group']}): {e['reason']}",
            )
        )
    if len(report.excluded) > TABLE_ROWS:
        console.print(
            f"... and {len(report.excluded) - TABLE_ROWS} more runs left out (--json lists all)"
        )
    if lost:
        console.print(
            Text.assemble(
                ("lost", "red"),
                f"     {len(lost)} runs ended ok but their rows "
                "are no longer readable (not counted; `lem-ray status` lists "
                "them, the next campaign runs them again)",
            )
        )
    for kind, path in files.items():
        console.print(f"{kind}: {path}")


def _print_slo(answers: list[dict[str, Any]], console: Console) -> None:
    """Per model and backend with an SLO: the least J/output token among the groups meeting it."""
    for a in answers:
        where = f"{a['model_name']} on {a['backend']}"
        best = a["best"]
        if best is None:
            console.print(f"SLO: {where}: none of {a['configurations']} configurations meets "
                          "its SLO in every counted cycle")
            continue
        console.print(
            f"SLO: {where}: least J/output token meeting its SLO ({a['meeting']} of "
            f"{a['configurations']} configurations meet it): {best['label']} "
            f"{format_number(best['energy_j_per_output_token_mean'])} J/out tok, attainment "
            f"{best['slo_attainment_min']:.0%} or more, goodput "
            f"{format_number(best['goodput_tok_s_mean'])} tok/s")


def _print_pairs(key: str, answers: list[dict[str, Any]], mismatched: int,
                 console: Console) -> None:
    """The paired differences in J/output token, b minus a, one line per configuration."""
    if not answers:
        console.print(f"pairs by {key}: no two counted runs of one cycle differ only in {key}")
    for a in answers:
        ci = ("no CI (1 pair)" if a["ci_low"] is None else
              f"{CI_LEVEL:.0%} CI [{format_number(a['ci_low'])}, {format_number(a['ci_high'])}]")
        verdict = {True: "significant", False: "not significant", None: "not judged"}[
            a["significant"]
        ]
        console.print(
            f"pairs by {key}: {a['b']} - {a['a']} ({a['configuration']}, {a['pairs']} pairs): "
            f"{format_number(a['difference_mean'])} J/out tok ({a['relative']:+.1%} of "
            f"{format_number(a['a_mean'])}), {ci}, {verdict}")
    if mismatched:
        console.print(f"pairs by {key}: {mismatched} candidate pairs left out: their runs sent "
                      "different request streams (stream_sha256)")


@click.command()
@click.argument("results_dir")
@click.option("--group-by", default=",".join(DEFAULT_GROUP_BY), show_default=True,
              help="Comma-separated keys: columns of the experiments table (batch_size, "
                   "fp_precision, backend, ...) or dotted paths into config_json "
                   "(pytorch.batch_size, decoder.temperature).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the summary as CSV to this file.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML report with plots to this file.")
@click.option(
    "--power-runs",
    help="HTML: comma-separated run_ids to plot power for "
    f"(default: the first cycle of each group, at most {POWER_RUNS_DEFAULT}).",
)
@click.option("--latency", type=click.Choice(["ttft", "e2e"]), default="ttft", show_default=True,
              help="HTML: the latency axis of the Pareto plots, TTFT p50 or end-to-end p50.")
@click.option("--max-cycle-cv", type=click.FloatRange(min=0, min_open=True),
              help="Mark groups whose cycle-to-cycle CV of J/output token or throughput is "
                   "above this. Default: the campaign's execution.validity.max_cycle_cv, as "
                   f"its runs recorded it (else {DEFAULT_MAX_CYCLE_CV}).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout."
)
@click.option("--pair", "pair_key", help="Pair runs of one cycle that differ only in this key "
                                         "(backend, or any --group-by key) and sent the same "
                                         "requests; give the paired difference in J/output token.")
def report(results_dir: str, group_by: str, csv_path: Path | None, html_path: Path | None,
           power_runs: str | None, latency: str, max_cycle_cv: float | None, as_json: bool,
           pair_key: str | None) -> None:
    """Summarise RESULTS_DIR per group: mean, std, n and a 95% bootstrap CI per metric.

    Counts the latest attempt of each run, leaves out failed and invalid runs (and lists
    them), and writes RESULTS_DIR/summary/summary.parquet. Works while a campaign runs.
    """
    keys = _split(group_by)
    if not keys:
        fail("--group-by: name at least one key")
    try:
        if not exists(results_dir):
            fail(f"{results_dir}: no such directory")
        for option, path in (("--csv", csv_path), ("--html", html_path)):
            if path is not None:
                check_output_file(path, option)
        fs, base = resolve(results_dir)
        if isinstance(fs, pafs.LocalFileSystem):
            check_output_file(Path(base) / "summary" / "summary.parquet", "RESULTS_DIR")
        experiments = read_table(results_dir, "experiments")
        rows = experiments.to_pylist()
        lost = _lost(results_dir, experiments)
        if not rows:
            fail(f"{results_dir}: no experiments (no readable committed Parquet file in "
                 f"{results_dir}/experiments)"
                 + (f"; {len(lost)} runs that ended ok are lost, the next campaign runs them "
                    "again" if lost else ""))
        summary = build_report(rows, keys, max_cycle_cv, _requests(results_dir))
        slo_best = best_under_slo(summary.groups, summary.members)
        pairs, mismatched = pair_runs(rows, pair_key) if pair_key else ([], 0)
        chosen = _power_choice(summary, _split(power_runs)) if html_path else []
    except ConfigError as exc:
        fail(str(exc))
    files = {"summary": write_table(results_dir, "summary", "summary.parquet", summary.table())}
    if csv_path:
        _write_csv(csv_path, summary)
        files["csv"] = str(csv_path)
    if html_path:
        _write_html(html_path, summary, results_dir, chosen, f"{latency}_ms_p50")
        files["html"] = str(html_path)
    if as_json:
        payload: dict[str, Any] = {"results_dir": results_dir, "group_by": list(summary.group_by),
                   "groups": summary.groups, "excluded": summary.excluded, "lost": lost,
                   "files": files, "slo_best": slo_best}
        if pair_key:
            payload.update(pairs=pairs, pairs_mismatched_streams=mismatched)
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        _print(summary, console(), files, lost)
        _print_slo(slo_best, console())
        if pair_key:
            _print_pairs(pair_key, pairs, mismatched, console())
