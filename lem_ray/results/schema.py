"""Arrow schemas of the three tables, built from their column records (results/columns.py).
Explicit types, so a null column never changes type."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from lem_ray.results.columns import GROUPS, Ids
from lem_ray.results.fields import (
    BOOL,
    F64,
    I64,
    STR,
    STRS,
    TS,
    arrow_fields,
    names,
    schema_of,
)

__all__ = [
    "BOOL", "EXPERIMENTS", "F64", "I64", "ID_FIELDS", "RENAMED", "REQUESTS", "STR", "STRS",
    "TABLES", "TIMESERIES", "TS", "empty_row", "reading_schema", "row", "upgrade",
]

ID_FIELDS = [(f.name, f.type) for f in arrow_fields(Ids)]

EXPERIMENTS = schema_of(GROUPS["experiments"])
REQUESTS = schema_of(GROUPS["requests"])
TIMESERIES = schema_of(GROUPS["timeseries"])

TABLES = {"experiments": EXPERIMENTS, "requests": REQUESTS, "timeseries": TIMESERIES}


def empty_row(table: str) -> dict[str, None]:
    """Every column of `table`, null: the base of a row whose run could not fill them all."""
    return dict.fromkeys(TABLES[table].names)


def row(table: str, *groups: object) -> dict[str, Any]:
    """The table's row from its column records, in the schema's order; a group not given is
    null (a failed run measured nothing)."""
    given: dict[str, Any] = {}
    for group in groups:
        kind: type = type(group)
        if kind not in GROUPS[table]:
            raise TypeError(f"{kind.__name__} is no column group of {table}")
        given.update((name, getattr(group, name)) for name in names(kind))
    return {name: given.get(name) for name in TABLES[table].names}


# Columns renamed since results were first written (docs/results.md, "Renamed columns"):
# table -> {old name: new name}. Readers map old files onto the new names.
RENAMED: dict[str, dict[str, str]] = {
    "experiments": {
        "measure_start_s": "measure_start_epoch_s",
        "measure_end_s": "measure_end_epoch_s",
        "steady_start_s": "steady_start_epoch_s",
        "peak_memory_mb": "peak_memory_mib",
        "load_s": "engine_load_s",
    },
    "requests": {},
    "timeseries": {"memory_used_mb": "memory_used_mib"},
}


def reading_schema(table: str) -> pa.Schema:
    """The table's schema plus its old column names, so files of either shape read whole."""
    schema = TABLES[table]
    old = [pa.field(o, schema.field(n).type) for o, n in RENAMED[table].items()]
    return pa.schema(list(schema) + old)


def upgrade(table: str, data: pa.Table) -> pa.Table:
    """A table read with reading_schema, in the current shape: each new column takes its old
    column's value where only the old name was written. A projected read keeps its columns."""
    import pyarrow.compute as pc

    present = set(data.column_names)
    for old, new in RENAMED[table].items():
        if old in present and new in present:
            merged = pc.coalesce(data[new], data[old])
            data = data.set_column(data.schema.get_field_index(new), new, merged)
    return data.select([name for name in TABLES[table].names if name in present])
