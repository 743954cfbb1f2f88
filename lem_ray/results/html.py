"""The HTML report: one self-contained file (inline CSS, PNGs as data URIs, no script).

It must open from a laptop, an e-mail attachment or an air-gapped cluster: nothing it shows
may come from the network.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape
from typing import Any

from lem_ray.results.report import (
    ENERGY_METRICS,
    METRIC_TITLES,
    PERFORMANCE_METRICS,
    STATS_NOTE,
    Report,
    cell_lines,
    cycle_cv_text,
    format_number,
    shown_metrics,
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
h3 { font-size: 14px; margin: 16px 0 6px; }
p.meta, p.note, figcaption { color: #555; font-size: 13px; }
div.wide { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; white-space: nowrap; }
td.num span { color: #777; font-size: 11px; }
tr.warn td { background: #fff6e5; }
td.cv-above { color: #b00020; font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 12px 0; }
"""


@dataclass(frozen=True)
class Plot:
    """One figure of the report, embedded in the page as a PNG, so the file stands alone."""

    heading: str
    caption: str
    png: bytes


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _metric_cell(group: dict[str, Any], metric: str) -> str:
    first, *rest = cell_lines(group, metric)
    rest_html = f"<br><span>{escape(' '.join(rest))}</span>" if rest else ""
    return f'<td class="num">{escape(first)}{rest_html}</td>'


def summary_table(report: Report, metrics: list[str]) -> str:
    """One row per group; a group with failed, invalid or too-variable runs is flagged."""
    head = ["group", "backend", "precision", "batch", "runs ok", "invalid", "failed", "cycle CV"]
    head += [METRIC_TITLES[m] for m in metrics]
    lines = ['<div class="wide"><table>',
             "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for g in report.groups:
        flagged = g["runs_invalid"] or g["runs_failed"] or g["cycle_cv_above"]
        hash_line = f"<br><span>{escape(g['group'])}</span>" if g["label"] != g["group"] else ""
        cells = [f"<td>{escape(g['label'])}{hash_line}</td>"]
        cells += [
            f"<td>{escape(format_number(g[c]) if c == 'batch_size' else str(g[c] or '-'))}</td>"
            for c in ("backend", "fp_precision", "batch_size")]
        cells += [f'<td class="num">{g[c]}</td>'
                  for c in ("runs_ok", "runs_invalid", "runs_failed")]
        cv_class = "num cv-above" if g["cycle_cv_above"] else "num"
        cells.append(f'<td class="{cv_class}">{escape(cycle_cv_text(g))}</td>')
        cells += [_metric_cell(g, m) for m in metrics]
        row_tag = '<tr class="warn">' if flagged else "<tr>"
        lines.append(row_tag + "".join(cells) + "</tr>")
    lines.append("</table></div>")
    return "\n".join(lines)


def summary_tables(report: Report) -> str:
    """Energy, then throughput and latency: two tables, so each fits a screen's width."""
    shown = shown_metrics(report)
    parts = []
    for title, metrics in (("Energy", ENERGY_METRICS),
                           ("Throughput and latency", PERFORMANCE_METRICS)):
        present = [m for m in metrics if m in shown]
        if present:
            parts.append(f"<h3>{title}</h3>\n{summary_table(report, present)}")
    return "\n".join(parts)


def excluded_table(report: Report) -> str:
    """The runs left out of the figures and why, so none is dropped unseen."""
    if not report.excluded:
        return '<p class="note">No failed or invalid runs.</p>'
    head = ("group", "run_id", "attempt", "status", "reason")
    lines = ['<div class="wide"><table>', "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for e in report.excluded:
        lines.append("<tr>" + "".join(f"<td>{escape(str(e[k]))}</td>" for k in head) + "</tr>")
    lines.append("</table></div>")
    return "\n".join(lines)


def render_html(report: Report, title: str, meta: list[str], plots: list[Plot]) -> str:
    """The whole page as one string."""
    energy_note = "" if report.energy_measured else (
        '<p class="note">Energy not measured: no NVML GPU on the nodes that ran these runs '
        "(see energy_unavailable_reason in the experiments table); throughput and latency "
        "are still measured.</p>")
    figures = "\n".join(
        f"<h2>{escape(p.heading)}</h2>\n<figure><img alt=\"{escape(p.heading)}\" "
        f"src=\"{_data_uri(p.png)}\"><figcaption>{escape(p.caption)}</figcaption></figure>"
        for p in plots
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{escape(title)}</h1>
{"".join(f'<p class="meta">{escape(m)}</p>' for m in meta)}
<h2>Summary</h2>
<p class="note">{escape(STATS_NOTE)}. Rows with failed or invalid runs are shaded; those runs are
listed below and not in the statistics. Cycle CV: cycle-to-cycle coefficient of variation of
J/output token (E) and throughput (T); groups above the limit are shaded and marked; "N engines":
the cycles ran on N engines loaded apart, whose own differences (kernels tuned per compile) the
CV includes; "N artifacts": they ran N different compiled kernels (compile_cache_hash),
"1 artifact": one compile's kernels, loaded from the compile cache.</p>
{energy_note}
{summary_tables(report)}
<h2>Failed and invalid runs</h2>
{excluded_table(report)}
{figures}
</body>
</html>
"""
