"""What reads badly in the report, pinned: the Pareto plots' point labels stay inside their
axes (a label running off the right edge made constrained layout squeeze the axes to half the
figure), and a spread that is floating-point rounding of equal values reads 0."""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lem_ray.results.plots import _pareto_axes
from lem_ray.results.report import METRICS, cell_lines


def group(label: str, ttft_ms: float, jpt: float) -> dict[str, Any]:
    found: dict[str, Any] = {"label": label, "group": label}
    for metric in METRICS:
        for stat in ("mean", "std", "ci_low", "ci_high"):
            found[f"{metric}_{stat}"] = None
        found[f"{metric}_n"] = 0
    for metric, value in (("ttft_ms_p50", ttft_ms), ("energy_j_per_output_token", jpt)):
        found.update({f"{metric}_mean": value, f"{metric}_n": 1})
    return found


def test_point_labels_stay_inside_the_axes() -> None:
    long = " · decoder.temperature=0.7 · pytorch.cache_implementation=static"
    groups = [group(f"batch {b}{long}", ttft_ms, jpt)
              for b, ttft_ms, jpt in ((1, 20.0, 0.52), (8, 58.0, 0.2), (64, 162.0, 0.08))]
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    _pareto_axes(ax, groups, "ttft_ms_p50", "energy_j_per_output_token", True, True)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    box = ax.get_window_extent(renderer)
    labels = [t for t in ax.texts if t.get_text().startswith("batch ")]
    assert len(labels) == 3
    for text in labels:
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
    assert box.width > 0.8 * fig.bbox.width, "the axes keep the figure's width"


def test_rounding_noise_reads_as_no_spread() -> None:
    found = {"x_n": 3, "x_mean": 0.17, "x_std": 2.8e-17, "x_ci_low": 0.17, "x_ci_high": 0.17}
    assert cell_lines(found, "x")[0] == "0.17 ± 0"
    found["x_std"] = 0.0012
    assert cell_lines(found, "x")[0] == "0.17 ± 0.0012"
