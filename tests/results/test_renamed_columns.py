"""Results written before columns were renamed (docs/results.md, "Renamed columns") read back
in the current shape: by read_table, by the summary, and through compaction."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lem_ray.records import RunKey
from lem_ray.results.compact import compact
from lem_ray.results.schema import RENAMED, TABLES, empty_row
from lem_ray.results.store import read_table, write_rows
from lem_ray.results.summary import summarize


def _old_schema(table: str) -> pa.Schema:
    back = {new: old for old, new in RENAMED[table].items()}
    return pa.schema([pa.field(back.get(f.name, f.name), f.type) for f in TABLES[table]])


def _write_old(out: Path, table: str, stem: str, rows: list[dict]) -> None:
    back = {new: old for old, new in RENAMED[table].items()}
    renamed = [{back.get(k, k): v for k, v in {**empty_row(table), **row}.items()} for row in rows]
    (out / table).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(renamed, schema=_old_schema(table)),
                   out / table / f"{stem}.parquet")


def _ids(cycle: int) -> dict:
    return {"campaign_name": "old", "experiment_id": "e1", "run_id": f"e1-c{cycle}",
            "cycle": cycle, "attempt": 1}


def test_old_column_names_read_as_the_new_ones(tmp_path: Path) -> None:
    out = tmp_path / "r"
    old = {**_ids(1), "status": "ok", "backend": "pytorch", "batch_size": 1, "valid": True,
           "measure_start_s": 100.0, "measure_end_s": 110.0, "peak_memory_mb": 512.0,
           "throughput_tok_s": 50.0, "energy_j_per_output_token": 0.5}
    _write_old(out, "experiments", RunKey("e1", 1).stem(1), [old])
    _write_old(out, "timeseries", RunKey("e1", 1).stem(1),
               [{**_ids(1), "gpu_uuid": "GPU-0", "t_s": 101.0, "memory_used_mb": 900.0}])
    new = {**empty_row("experiments"), **_ids(2), "status": "ok", "backend": "pytorch",
           "batch_size": 1, "valid": True, "measure_start_epoch_s": 200.0,
           "measure_end_epoch_s": 210.0, "peak_memory_mib": 256.0,
           "throughput_tok_s": 70.0, "energy_j_per_output_token": 0.3}
    write_rows(out, "experiments", RunKey("e1", 2).stem(1), [new])

    def check() -> None:
        rows = sorted(read_table(out, "experiments").to_pylist(), key=lambda r: r["cycle"])
        assert [(r["measure_start_epoch_s"], r["measure_end_epoch_s"], r["peak_memory_mib"])
                for r in rows] == [(100.0, 110.0, 512.0), (200.0, 210.0, 256.0)]
        assert read_table(out, "timeseries").column("memory_used_mib").to_pylist() == [900.0]
        assert read_table(out, "experiments").schema == TABLES["experiments"]
        summary, _ = summarize(out)
        assert summary[0]["cycles_ok"] == 2 and summary[0]["throughput_tok_s"] == 60.0

    check()
    compact(out)
    check()


def test_a_projected_read_equals_the_full_read_of_those_columns(tmp_path: Path) -> None:
    """`columns` reads a few columns (status reads 8 of 130): old names still fill the new
    ones, and an attempt both compacted and still in its own file is read once."""
    out = tmp_path / "r"
    _write_old(out, "experiments", RunKey("e1", 1).stem(1),
               [{**_ids(1), "status": "ok", "measure_start_s": 100.0}])
    for cycle in (2, 3):
        write_rows(out, "experiments", RunKey("e1", cycle).stem(1),
                   [{**empty_row("experiments"), **_ids(cycle), "status": "ok",
                     "measure_start_epoch_s": 100.0 * cycle}])
    columns = ["cycle", "measure_start_epoch_s", "status"]

    def both() -> tuple[list[dict], list[dict]]:
        full = read_table(out, "experiments").select(columns).to_pylist()
        return full, read_table(out, "experiments", columns=columns).to_pylist()

    full, projected = both()
    assert sorted(projected, key=lambda r: r["cycle"]) == sorted(full, key=lambda r: r["cycle"])
    assert {r["measure_start_epoch_s"] for r in projected} == {100.0, 200.0, 300.0}
    compact(out)
    write_rows(out, "experiments", RunKey("e1", 3).stem(1),
               [{**empty_row("experiments"), **_ids(3), "status": "ok",
                 "measure_start_epoch_s": 300.0}])
    full, projected = both()
    assert len(projected) == 3 and sorted(map(str, projected)) == sorted(map(str, full))
    assert read_table(tmp_path / "none", "experiments", columns=columns).column_names == columns
