"""Labels laid out on lines: broken between their parts and fields, never inside a word that
fits on a line, in `lem-ray report`'s text tables as in wrap_label itself."""

from __future__ import annotations

import re
from pathlib import Path

from lem_ray.results.labels import wrap_label
from tests.cli.test_cli import lem_ray
from tests.results.test_report import synthetic  # noqa: F401 (the fixture)

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
        synthetic: Path) -> None:  # noqa: F811
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
