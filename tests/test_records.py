"""Run identity: each format in records.py has its parse beside it, and the two round-trip."""

from __future__ import annotations

import pytest

from lem_ray.records import RunAttempt, RunKey


@pytest.mark.parametrize("key", [RunKey("0123abcd", 1), RunKey("x-y-c2", 12), RunKey("e-a1", 0)])
def test_parse_reads_back_what_run_id_and_stem_write(key: RunKey) -> None:
    assert RunKey.parse(key.run_id) == key
    assert RunKey.parse_stem(key.stem(30)) == (key, 30)


@pytest.mark.parametrize("text", ["", "-c1", "x", "x-c", "x-cy", "x-c01", "x-c1-a2", "x-c1 "])
def test_parse_refuses_what_run_id_never_writes(text: str) -> None:
    with pytest.raises(ValueError, match="not a run id"):
        RunKey.parse(text)


@pytest.mark.parametrize("text", ["x-c1", "x-c1-a", "x-c1-a01", "x-c1-a1.parquet", "-c1-a1"])
def test_parse_stem_refuses_what_stem_never_writes(text: str) -> None:
    with pytest.raises(ValueError, match="not an attempt's stem"):
        RunKey.parse_stem(text)


def test_a_row_names_its_attempt() -> None:
    ids = RunAttempt("camp", RunKey("e1", 3), 2)
    row = {**ids.as_dict(), "status": "ok"}
    assert RunAttempt.of_row(row) == ids
    assert RunKey.of_row(row) == ids.key
