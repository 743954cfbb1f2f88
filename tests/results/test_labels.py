"""Labels laid out on lines: broken between their parts and fields, never inside a word that
fits on a line, in `lem-ray report`'s text tables as in wrap_label itself."""

from __future__ import annotations

import re
from pathlib import Path

from lem_ray.results.labels import wrap_label
from tests.cli.support import lem_ray

LABEL = "pytorch · batch 8 · 1 GPU · bf16 · decoder.temperature=0.7"
# What a line may end with, short of a label's end: a part's separator, or a field boundary.
BREAKS = ("·", ",", ".", "=", "/", "-", ":")


def test_a_label_breaks_between_parts_then_at_field_boundaries() -> None:
    assert wrap_label(LABEL, 27) == ["pytorch · batch 8 · 1 GPU ·", "bf16 ·",
                                     "decoder.temperature=0.7"]
    assert wrap_label(LABEL, 14) == ["pytorch ·", "batch 8 ·", "1 GPU · bf16 ·", "decoder.",
                                     "temperature=", "0.7"]
    assert wrap_label("backend=pytorch, batch_size=16", 14, ", ") == [
        "backend=", "pytorch,", "batch_size=16"]
    assert wrap_label("meta-llama/Llama-3.1-8B-Instruct", 14) == [
        "meta-llama/", "Llama-3.1-8B-", "Instruct"], "no break inside a number"
    assert wrap_label("x" * 30, 14) == ["x" * 14, "x" * 14, "xx"], "only a word wider than a line"
    assert wrap_label(LABEL, 80) == [LABEL]


def test_report_tables_break_labels_longer_than_the_column_between_fields(
        synthetic: Path) -> None:
    """The synthetic groups' labels end in `decoder.temperature=...`, longer than the group
    column of the throughput table in a 160-column log: each line of a group cell ends at a
    part or field boundary, or where the label or the group's id ends."""
    proc = lem_ray("report", str(synthetic), cwd=synthetic.parent)
    assert proc.returncode == 0, proc.stderr
    ids = {c * 4 for c in "abcde"}
    cells = []
    for table in proc.stdout.split(" groups by experiment_id")[1:3]:
        lines = table.splitlines()
        header = next(line for line in lines if line.startswith("  group "))
        width = header.index("backend") - 2
        cells += [line[2:2 + width].strip() for line in lines[lines.index(header) + 2:]
                  if line.startswith("  ") and line[2:2 + width].strip()]
    assert len(cells) > 20 and "temperature=" in cells
    broken = [c for c in cells
              if not (c.endswith(BREAKS) or c in ids or re.fullmatch(r"(.*=)?\d\.\d", c))]
    assert not broken, broken


def test_end_of_campaign_table_breaks_a_long_label_between_fields() -> None:
    """The campaign's closing table, on an 80-column terminal: a label of 58 characters in a
    column of 14 breaks at its parts and fields; the id stays whole under it."""
    import io

    from rich.console import Console

    from lem_ray.cli.render import print_summary
    from lem_ray.execution.driver.campaign import CampaignResult

    columns = ("backend", "fp_precision", "batch_size", "device", "cycles_ok", "throughput_tok_s",
               "energy_j_per_output_token", "energy_adjusted_j_per_output_token", "ttft_ms_p50",
               "itl_ms_p50", "avg_power_w", "energy_source")
    row = {**dict.fromkeys(columns), "label": LABEL, "experiment_id": "0123456789ab"}
    out = io.StringIO()
    print_summary(CampaignResult("c", "out", {"ok": 1, "failed": 0, "skipped_done": 0,
                                              "planned": 1}, summary=[row]),
                  Console(file=out, width=80, markup=False))
    cells = [line.split("│")[1].strip() for line in out.getvalue().splitlines()
             if line.startswith("│") and line.split("│")[1].strip()]
    assert cells == [*wrap_label(LABEL, 14), "0123456789ab"], out.getvalue()


def test_report_cycle_cv_cells_keep_each_figure_on_one_line(synthetic: Path) -> None:
    """`E 3.8% · T 1.3%` is laid out a figure a line, so no table wraps it inside a figure."""
    proc = lem_ray("report", str(synthetic), cwd=synthetic.parent)
    assert proc.returncode == 0, proc.stderr
    cells = []
    for table in proc.stdout.split(" groups by experiment_id")[1:3]:
        lines = table.splitlines()
        header = next(line for line in lines if line.startswith("  group "))
        start = header.index("cycle CV")
        # a cell runs to the first gap of two spaces (its parts are one space apart)
        last = max(i for i, line in enumerate(lines) if line.strip().startswith("─"))
        cells += [found.group() for line in lines[lines.index(header) + 2:last]
                  if line.startswith("  ") and (found := re.match(r"\S+( \S+)*", line[start:]))]
    figure = r"[ET] (-|\d+\.\d%( > \d+%)?)|\d+ engines|\d+ artifacts?"
    assert len(cells) >= 20 and all(re.fullmatch(figure, c) for c in cells), cells
