"""docs/results.md's column tables, generated from the column records (results/columns.py).

`python -m lem_ray.results.column_docs [PATH]` rewrites the marked sections of PATH
(docs/results.md) in place; `--check` only says whether they are up to date (exit 1 if not).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path

import pyarrow as pa

from lem_ray.results.columns import GROUPS, Ids
from lem_ray.results.fields import arrow_fields

DEFAULT_PATH = Path("docs/results.md")
_MARKED = re.compile(r"(<!-- columns:(\w+) -->\n)(.*?)(<!-- /columns:\2 -->)", re.DOTALL)


def _type_name(arrow: pa.DataType) -> str:
    if pa.types.is_list(arrow):
        return f"list of {_type_name(arrow.value_type)}"
    if pa.types.is_timestamp(arrow):
        return "timestamp"
    return {"double": "float", "int64": "int", "string": "string"}.get(str(arrow), str(arrow))


def _table(record: type) -> str:
    types = {f.name: f.type for f in arrow_fields(record)}
    lines = ["| column | type | unit | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(record):
        lines.append(f"| `{f.name}` | {_type_name(types[f.name])} | {f.metadata['unit']} | "
                     f"{f.metadata['doc']} |")
    return "\n".join(lines) + "\n"


def _summary(record: type) -> str:
    return " ".join(inspect.cleandoc(record.__doc__ or "").split())


def section(name: str) -> str:
    """`ids` (the shared ids), or a table's columns after the ids, group by group."""
    if name == "ids":
        return _table(Ids)
    groups = [g for g in GROUPS[name] if g is not Ids]
    if len(groups) == 1:
        return _table(groups[0])
    return "\n".join(f"**{g.__name__}**: {_summary(g)}\n\n{_table(g)}" for g in groups)


def rewritten(text: str) -> str:
    """The text with each marked section replaced by what the records say now."""
    found = {m.group(2) for m in _MARKED.finditer(text)}
    expected = {"ids", *GROUPS}
    if found != expected:
        raise ValueError(f"marked column sections {sorted(found)}, expected {sorted(expected)}")
    return _MARKED.sub(lambda m: f"{m.group(1)}{section(m.group(2))}{m.group(4)}", text)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the column tables of PATH (docs/results.md) from the column records."""
    parser = argparse.ArgumentParser(prog="python -m lem_ray.results.column_docs",
                                     description=main.__doc__)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if PATH is out of date")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    new = rewritten(text)
    if new == text:
        return 0
    if args.check:
        print(f"{args.path}: column tables out of date; run python -m "
              "lem_ray.results.column_docs", file=sys.stderr)
        return 1
    args.path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
