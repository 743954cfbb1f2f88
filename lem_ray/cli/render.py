"""What the CLI prints: a plan, live progress, the summary table. Output only, no logic."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from lem_ray.cli.common import label_width
from lem_ray.cli.status_cmd import print_compile_savings, print_gpu_time
from lem_ray.execution.driver.campaign import CampaignResult
from lem_ray.execution.driver.completion import Progress as RunProgress
from lem_ray.planning.plan import CampaignPlan
from lem_ray.results.labels import wrap_label
from lem_ray.results.rows import RunRows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _named(label: str, experiment_id: str, width: int) -> str:
    """An experiment's label over its id, broken between the label's parts (wrap_label)."""
    return "\n".join([*wrap_label(label, width), experiment_id])


def print_plan(plan: CampaignPlan, labels: dict[str, str], console: Console) -> None:
    """One row per experiment, named by its label (experiment_labels) above its id, as the
    live lines and the end-of-campaign table name it."""

    def build(width: int) -> Table:
        table = Table(title=f"campaign {plan.name}: {len(plan.experiments)} experiments x "
                            f"{plan.campaign.execution.cycles} cycles = {len(plan.runs)} runs",
                      show_lines=True)
        table.add_column("experiment", min_width=width, overflow="fold")
        for col in ("backend", "model", "precision", "batch", "max out", "gpus"):
            table.add_column(col)
        for e in plan.experiments:
            c = e.config
            table.add_row(_named(labels[e.experiment_id], e.experiment_id, width), c.backend,
                          c.model_name, c.fp_precision, _fmt(c.backend_options.concurrency),
                          str(c.max_output_tokens), str(c.gpus_per_experiment))
        return table

    console.print(build(label_width(build, [labels[e.experiment_id] for e in plan.experiments],
                                    console)))
    for r in plan.rejected:
        console.print(
            Text.assemble(("rejected", "yellow"), f" {r.backend} {r.combination}: {r.reason}"))


class LiveProgress:
    """A bar of runs done, with ok / failed / running counts, and one line per finished run."""

    def __init__(self, console: Console, total: int, labels: dict[str, str]) -> None:
        """`labels`: experiment id -> its label (CampaignPlan.labels), the name in each line."""
        self.console = console
        self.labels = labels
        self.bar = Progress(
            TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.description}"), TimeElapsedColumn(),
            console=console, transient=False,
        )
        self.task = self.bar.add_task("", total=total)

    def __enter__(self) -> LiveProgress:
        """The bar starts at the first run reported (__call__), not here."""
        return self

    def __exit__(self, *exc: Any) -> None:
        """Stops the bar, leaving the finished runs' lines on the terminal."""
        if self.bar.live.is_started:  # a bar never started would still print an empty line
            self.bar.stop()

    def __call__(self, progress: RunProgress, rows: RunRows | None) -> None:
        """Starts the bar at the first run, so a refused campaign prints only its error."""
        self.bar.start()
        ok = progress.done - progress.failed
        self.bar.update(
            self.task, completed=progress.done, total=progress.total,
            description=f"[green]{ok} ok[/] [red]{progress.failed} failed[/] "
                        f"{progress.running} running",
        )
        if rows is not None:
            e = rows.experiment
            head = (f"{e['experiment_id']} c{e['cycle']} a{e['attempt']} "
                    f"{self.labels[e['experiment_id']]}")
            if rows.retryable:
                self.bar.console.print(Text.assemble(
                    ("retry", "yellow"), f"  {head}: {(e['error'] or '').splitlines()[0]}"))
                return
            if rows.ok:
                energy = e["energy_j_per_output_token"]
                tail = (f"{_fmt(e['throughput_tok_s'])} tok/s, "
                        + (f"{_fmt(energy)} J/tok" if energy is not None else "no energy"))
                self.bar.console.print(Text.assemble(("ok", "green"), f"     {head}: {tail}"))
            else:
                self.bar.console.print(Text.assemble(
                    ("failed", "red"), f" {head}: {(e['error'] or '').splitlines()[0]}"))


def print_summary(result: CampaignResult, console: Console) -> None:
    """Means per experiment, named by label above id, then the failed runs, GPU time and what
    the compile cache saved."""
    title = (f"{result.campaign_name}: means over ok, valid cycles "
             f"({result.results_dir}; `lem-ray report` adds CIs and plots)")
    columns = [
        ("backend", "backend", None),
        ("precision", "fp_precision", None), ("batch", "batch_size", None),
        ("device", "device", None), ("ok", "cycles_ok", None),
        ("tok/s", "throughput_tok_s", 4), ("GPU J/out tok", "energy_j_per_output_token", 4),
        ("adj. GPU J/out tok", "energy_adjusted_j_per_output_token", 4),
        ("TTFT p50 ms", "ttft_ms_p50", 4), ("ITL p50 ms", "itl_ms_p50", 3),
        ("power W", "avg_power_w", 4),
    ]

    def build(width: int) -> Table:
        table = Table(title=title, show_lines=True)
        # Named by what differs between the experiments (as `lem-ray report` names its
        # groups), the id under it: eager decode and the fast path at one batch size read apart.
        table.add_column("experiment", min_width=width, overflow="fold")
        for name, _, digits in columns:
            table.add_column(name, justify="right" if digits else "left")
        for row in result.summary:
            table.add_row(_named(row["label"], row["experiment_id"], width),
                          *[_fmt(row[key], digits or 3) for _, key, digits in columns])
        return table

    console.print(build(label_width(build, [r["label"] for r in result.summary], console)))
    if result.summary and all(r["energy_source"] is None for r in result.summary):
        console.print("energy: not measured (no NVML GPU on the nodes that ran); "
                      "see energy_unavailable_reason in the experiments table")
    for f in result.failures:
        console.print(Text.assemble((f["status"], "red"), f" {f['experiment_id']} c{f['cycle']} "
                                                          f"a{f['attempt']} {f['label']}: "
                                                          f"{f['reason']}"))
    print_gpu_time(result.gpu_time, console)
    print_compile_savings(result.compile_cache, console)
    c = result.counts
    console.print(f"{c['ok']} ok, {c['failed']} failed this time; {c['skipped_done']} of "
                  f"{c['planned']} runs were already done. Results: {result.results_dir}")

