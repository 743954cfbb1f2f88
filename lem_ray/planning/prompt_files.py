"""Prompts read from a file, streamed: `count: 4` reads a few lines of a 1 GiB file, not the
file (which once took 2.2 GB of memory), and no file is read further than the prompts kept."""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Generator
from contextlib import closing
from pathlib import Path
from typing import Any

from lem_ray.config.limits import MAX_PROMPTS
from lem_ray.config.prompts import FilePrompts
from lem_ray.errors import ConfigError

MAX_LINE_BYTES = 16 * 1024 * 1024
"""One JSONL line or CSV field: a prompt of the longest synthetic length is a few megabytes."""
BLOCK_BYTES = 1024 * 1024
"""Read at a time while looking for the first byte that is not UTF-8."""
WHERE = "prompts.path"


def file_prompts(cfg: FilePrompts, path: Path) -> list[str]:
    """The first `count` non-empty prompts (all, up to the limit, without a count)."""
    readers = {".jsonl": _jsonl_values, ".json": _jsonl_values, ".csv": _csv_values,
               ".parquet": _parquet_values}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"unsupported prompt file type {path.suffix!r}; use {sorted(readers)}",
                          path=WHERE)
    try:
        found = path.is_file()
    except OSError as exc:
        raise ConfigError(f"cannot use {str(path)[:200]}: {exc.strerror}", path=WHERE) from None
    if not found:
        raise ConfigError(f"prompt file not found: {path}", path=WHERE)
    wanted = cfg.count or MAX_PROMPTS + 1
    texts: list[str] = []
    with closing(reader(path, cfg.column)) as values:
        for text in values:
            if text:
                texts.append(text)
                if len(texts) == wanted:
                    break
    if not texts:
        raise ConfigError(f"no prompts in {path}", path=WHERE)
    if cfg.count and len(texts) < cfg.count:
        raise ConfigError(f"{path.name} has {len(texts)} non-empty prompts, fewer than "
                          f"prompts.count ({cfg.count})", path="prompts.count")
    if all(_is_number(t) for t in texts):
        raise _not_text(path, cfg.column, "only numbers")
    if len(texts) > MAX_PROMPTS:
        raise ConfigError(f"{path.name} has more than {MAX_PROMPTS} prompts; an experiment may "
                          f"have at most {MAX_PROMPTS}: set prompts.count", path="prompts.count")
    return texts


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _cannot_read(path: Path, exc: BaseException, line: int | None = None) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    at = f"line {line}: " if line else ""
    return ConfigError(f"cannot read {path}: {at}{first}", path=WHERE)


def _not_utf8(path: Path, byte: int, offset: int) -> ConfigError:
    """Arrow reads other encodings as bytes (b'caf\\xe9'): refused, naming the byte."""
    return ConfigError(f"{path.name} is not UTF-8 text (byte 0x{byte:02x} at offset {offset}); "
                       "save it as UTF-8", path=WHERE)


def _check_utf8(path: Path) -> None:
    """The first byte that is not UTF-8, read a block at a time (on a reader's error only)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as stream:
        while block := stream.read(BLOCK_BYTES):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, exc.object[exc.start], offset + exc.start) from None
            offset += len(block)


def _not_text(path: Path, column: str, kind: Any) -> ConfigError:
    return ConfigError(f"column {column!r} of {path.name} holds {kind}, not text",
                       path="prompts.column")


def _jsonl_values(path: Path, column: str) -> Generator[str | None, None, None]:
    """One JSON object a line; the first names the columns, a later one may lack the column."""
    with path.open("rb") as stream:
        offset, number, first = 0, 0, True
        while raw := stream.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise ConfigError(f"{path.name}: line {number} is longer than {MAX_LINE_BYTES} "
                                  "bytes", path=WHERE)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, raw[exc.start], offset + exc.start) from None
            offset += len(raw)
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError as exc:
                raise _cannot_read(path, exc, number) from None
            if not isinstance(record, dict):
                raise _cannot_read(path, ValueError("not a JSON object"), number)
            if first and column not in record:
                raise ConfigError(f"column {column!r} not in {path.name}; columns: "
                                  f"{list(record)}", path="prompts.column")
            first = False
            value = record.get(column)
            if value is not None and not isinstance(value, str):
                raise _not_text(path, column, f"{type(value).__name__} (line {number})")
            yield value


def _csv_values(path: Path, column: str) -> Generator[str | None, None, None]:
    """A header row, then one prompt a row (quoted fields may hold commas and newlines).

    Python's csv module, not Arrow's streaming reader: that one reads 30 blocks ahead."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    with path.open(encoding="utf-8-sig", newline="") as stream:
        rows = csv.reader(stream)
        try:
            names = next(rows, [])
            if column not in names:
                raise ConfigError(f"column {column!r} not in {path.name}; columns: {names}",
                                  path="prompts.column")
            index = names.index(column)
            for row in rows:
                if not row:
                    continue
                if len(row) != len(names):
                    raise _cannot_read(path, ValueError(
                        f"expected {len(names)} columns, got {len(row)}"), rows.line_num)
                yield row[index]
        except UnicodeDecodeError:
            _check_utf8(path)
            raise
        except csv.Error as exc:
            raise _cannot_read(path, exc, rows.line_num) from None


def _parquet_values(path: Path, column: str) -> Generator[str | None, None, None]:
    """Row group by row group, the one column only (iter_batches buffers every row group)."""
    import pyarrow as pa
    import pyarrow.parquet

    try:
        parquet = pyarrow.parquet.ParquetFile(str(path))
    except (pa.ArrowException, OSError) as exc:
        raise _cannot_read(path, exc) from None
    with closing(parquet):
        schema = parquet.schema_arrow
        if column not in schema.names:
            raise ConfigError(f"column {column!r} not in {path.name}; columns: {schema.names}",
                              path="prompts.column")
        kind = schema.field(column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise _not_text(path, column, kind)
        for group in range(parquet.num_row_groups):
            try:
                table = parquet.read_row_group(group, columns=[column])
            except (pa.ArrowException, OSError) as exc:
                raise _cannot_read(path, exc) from None
            yield from table.column(0).to_pylist()
