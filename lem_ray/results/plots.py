"""The report's figures as PNG bytes.

matplotlib's object API on its Agg canvas: no pyplot, so no global backend or figure state is
touched in the caller's process, and nothing needs a display. Every function returns a figure
even without data: a panel that cannot be drawn says why (e.g. "energy not measured").
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from lem_ray.results.report import ENERGY_METRICS, pareto_mask

AXIS_TITLES = {
    "energy_j_per_output_token": "energy per output token, J",
    "throughput_tok_s": "throughput, output tokens/s",
    "ttft_ms_p50": "TTFT p50, ms",
    "e2e_ms_p50": "end-to-end latency p50, ms",
}
FRONTIER_COLOUR, OTHER_COLOUR = "C3", "C0"


@dataclass(frozen=True)
class PowerRun:
    """One run's samples for the power plot; the window is None when it was not recorded."""

    title: str
    samples: list[dict[str, Any]]
    measure_window_s: tuple[float, float] | None
    steady_window_s: tuple[float, float] | None = None
    """(start, end) epoch seconds of the steady-state window (runs under traffic), if any."""


def to_png(fig: Figure) -> bytes:
    """PNG bytes, without matplotlib's 'Software' tag (it carries a URL)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=13, color="0.35",
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _missing_text(metrics: Sequence[str], groups: list[dict[str, Any]]) -> str:
    energy = [m for m in metrics if m in ENERGY_METRICS]
    if energy and not any(g[f"{m}_n"] for g in groups for m in energy):
        return "energy not measured"
    return "no data"


def point_labels(groups: list[dict[str, Any]]) -> list[str]:
    """Points are named by what differs between the groups (`batch 16 · 2 GPUs · bf16`)."""
    return [g["label"] or g["group"] for g in groups]


def _errors(groups: list[dict[str, Any]], metric: str) -> list[list[float]]:
    """Asymmetric error bars from the CI; zero length where there is no CI (n<2)."""
    low, high = [], []
    for g in groups:
        mean, lo, hi = g[f"{metric}_mean"], g[f"{metric}_ci_low"], g[f"{metric}_ci_high"]
        low.append(mean - lo if lo is not None else 0.0)
        high.append(hi - mean if hi is not None else 0.0)
    return [low, high]


def _pareto_axes(ax: Any, groups: list[dict[str, Any]], x: str, y: str,
                 minimise_x: bool, minimise_y: bool) -> None:
    labels = point_labels(groups) if groups else []
    points = [(g, label) for g, label in zip(groups, labels)
              if g[f"{x}_mean"] is not None and g[f"{y}_mean"] is not None]
    ax.set_xlabel(AXIS_TITLES[x])
    ax.set_ylabel(AXIS_TITLES[y])
    if not points:
        _message(ax, _missing_text((x, y), groups))
        return
    chosen = [g for g, _ in points]
    xs = [g[f"{x}_mean"] for g in chosen]
    ys = [g[f"{y}_mean"] for g in chosen]
    front = pareto_mask(xs, ys, minimise_x, minimise_y)
    for on_front, colour, name in ((True, FRONTIER_COLOUR, "on the Pareto frontier"),
                                   (False, OTHER_COLOUR, "dominated")):
        subset = [g for g, f in zip(chosen, front) if f == on_front]
        if subset:
            ax.errorbar([g[f"{x}_mean"] for g in subset], [g[f"{y}_mean"] for g in subset],
                        xerr=_errors(subset, x), yerr=_errors(subset, y), fmt="o", ms=6,
                        color=colour, ecolor=colour, elinewidth=1, capsize=3, label=name)
    frontier = sorted((px, py) for px, py, f in zip(xs, ys, front) if f)
    if len(frontier) > 1:
        ax.step([p[0] for p in frontier], [p[1] for p in frontier],
                where="post" if minimise_x else "pre", color=FRONTIER_COLOUR, lw=1.2, ls="--")
    _annotate(ax, [(px, py, label) for (_, label), px, py in zip(points, xs, ys)])
    better = f"{'lower' if minimise_y else 'upper'} {'left' if minimise_x else 'right'}"
    ax.set_title(f"{AXIS_TITLES[y]} vs {AXIS_TITLES[x]}; better: {better}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _annotate(ax: Any, points: list[tuple[float, float, str]]) -> None:
    """Label each point, to its right in the left half of the plot and to its left in the
    right half (so no label runs off the axes and squeezes them), moving a label up or down
    until it clears the ones already placed (close configurations print on top of each other)."""
    ax.autoscale_view()
    x_low, x_high = ax.get_xlim()
    char_px, line_px, gap_px = 6.5, 12.0, 6
    placed: list[tuple[float, float, float]] = []
    for x, y, label in sorted(points, key=lambda p: (p[0], p[1])):
        px, py = ax.transData.transform((x, y))
        width = char_px * len(label)
        leftward = x_high != x_low and (x - x_low) / (x_high - x_low) > 0.5
        start = px - gap_px - width if leftward else px + gap_px
        for dy in (5, -15, 18, -28, 31, -41, 44):
            top = py + dy
            if not any(abs(top - t) < line_px and start < left + w and left < start + width
                       for left, t, w in placed):
                break
        placed.append((start, top, width))
        ax.annotate(label, (x, y), xytext=(-gap_px if leftward else gap_px, dy),
                    textcoords="offset pixels", fontsize=8, ha="right" if leftward else "left")


def pareto_png(groups: list[dict[str, Any]], x: str, y: str, minimise_x: bool,
               minimise_y: bool) -> bytes:
    """One point per group with CI error bars on both axes, the frontier as a dashed staircase;
    a short panel with the reason when no group has both figures."""
    drawable = any(g[f"{x}_mean"] is not None and g[f"{y}_mean"] is not None for g in groups)
    fig = Figure(figsize=(9, 5.5 if drawable else 2.0), layout="constrained")
    _pareto_axes(fig.add_subplot(), groups, x, y, minimise_x, minimise_y)
    return to_png(fig)


def batch_size_png(batch_groups: list[dict[str, Any]], series: list[str]) -> bytes:
    """J/output token and throughput against batch size, one line per configuration.

    `batch_groups` is a report grouped by batch size and every engine and runtime setting;
    `series[i]` names the line batch_groups[i] is on (report.batch_series)."""
    fig = Figure(figsize=(13, 5), layout="constrained")
    lines: dict[str, list[dict[str, Any]]] = {}
    for g, name in zip(batch_groups, series):
        if g["batch_size"] is not None:
            lines.setdefault(name, []).append(g)
    sizes = sorted({g["batch_size"] for g in batch_groups if g["batch_size"] is not None})
    for i, metric in enumerate(("energy_j_per_output_token", "throughput_tok_s")):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.set_xlabel("batch size (most requests at once)")
        ax.set_ylabel(AXIS_TITLES[metric])
        drawn = False
        for name, members in sorted(lines.items()):
            members = sorted((g for g in members if g[f"{metric}_mean"] is not None),
                             key=lambda g: g["batch_size"])
            if members:
                ax.errorbar([g["batch_size"] for g in members],
                            [g[f"{metric}_mean"] for g in members],
                            yerr=_errors(members, metric), fmt="o-", capsize=3, label=name)
                drawn = True
        if not drawn:
            _message(ax, _missing_text((metric,), batch_groups))
            continue
        if sizes[0] > 0 and sizes[-1] / sizes[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return to_png(fig)


def power_png(runs: list[PowerRun], columns: int = 2) -> bytes:
    """Instant power per GPU over time, one panel per run, the measure window shaded and the
    steady-state window's edges (runs under traffic) drawn as dashed lines.

    Time is in seconds from the measure window's start (from the first sample when the run did
    not record its window)."""
    if not any(r.samples for r in runs):
        fig = Figure(figsize=(9, 2.5), layout="constrained")
        _message(fig.add_subplot(), "no power samples: energy not measured")
        return to_png(fig)
    columns = min(columns, len(runs))
    rows = -(-len(runs) // columns)
    fig = Figure(figsize=(6.5 * columns, 3.4 * rows), layout="constrained")
    for i, run in enumerate(runs):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.set_title(run.title, fontsize=9)
        if not run.samples:
            _message(ax, "no power samples")
            continue
        origin = (
            run.measure_window_s[0] if run.measure_window_s else min(s["t_s"] for s in run.samples)
        )
        by_gpu: dict[str, list[dict[str, Any]]] = {}
        for s in run.samples:
            if s["power_w"] is not None:
                by_gpu.setdefault(s["gpu_uuid"], []).append(s)
        for uuid, samples in sorted(by_gpu.items()):
            samples.sort(key=lambda s: s["t_s"])
            ax.plot([s["t_s"] - origin for s in samples], [s["power_w"] for s in samples],
                    lw=1, label=f"GPU …{uuid[-8:]}")
        if run.measure_window_s:
            start_s, end_s = run.measure_window_s
            ax.axvspan(0.0, end_s - start_s, color="C2", alpha=0.15, label="measure window")
        if run.steady_window_s:
            for i_edge, edge_s in enumerate(run.steady_window_s):
                ax.axvline(edge_s - origin, color="C3", ls="--", lw=1.2,
                           label="steady-state window" if i_edge == 0 else None)
        ax.set_xlabel("time from measure start, s" if run.measure_window_s else "time, s")
        ax.set_ylabel("power, W")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return to_png(fig)
