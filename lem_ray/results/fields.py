"""A column written once: its name and type are a record's field and annotation, its unit and
meaning the field's metadata. Schemas, rows and docs are read off the records, never restated."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from datetime import datetime
from typing import Any, Union

import pyarrow as pa

F64, I64, STR, BOOL = pa.float64(), pa.int64(), pa.string(), pa.bool_()
TS = pa.timestamp("us", tz="UTC")
STRS = pa.list_(STR)

_ARROW: dict[Any, pa.DataType] = {float: F64, int: I64, str: STR, bool: BOOL, datetime: TS}


def column(doc: str, unit: str = "", *, optional: bool = False) -> Any:
    """A field of a column record. `optional`: the record may leave it out (null), as a
    timeseries sample of the host has no GPU readings; otherwise every build must set it."""
    metadata = {"doc": doc, "unit": unit}
    if optional:
        return dataclasses.field(default=None, metadata=metadata)
    return dataclasses.field(metadata=metadata)


def _arrow_type(hint: Any) -> pa.DataType:
    """float -> float64, int -> int64, list[str] -> list<string>, ...; `| None` is dropped
    (every column is nullable)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _arrow_type(inner)
    if origin is list:
        (item,) = typing.get_args(hint)
        return pa.list_(_arrow_type(item))
    return _ARROW[hint]


def arrow_fields(record: type) -> list[pa.Field]:
    """The record's columns as Arrow fields, typed from its annotations."""
    hints = typing.get_type_hints(record)
    return [pa.field(f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(record)]


def schema_of(records: tuple[type, ...]) -> pa.Schema:
    """A table's schema: its records' columns, one record after another."""
    return pa.schema([f for record in records for f in arrow_fields(record)])


@functools.cache
def names(record: type) -> tuple[str, ...]:
    """The record's columns, in order."""
    return tuple(f.name for f in dataclasses.fields(record))
