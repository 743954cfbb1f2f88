"""The benchmarks in bench/ run on the CPU at a tiny size, so one that breaks (a column the
writer now refuses, an API that moved) fails CI instead of the next person who measures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_scale_bench_runs_its_smallest_size(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "bench/scale.py", "--sizes", "12", "--dispatch-runs", "0", "--json",
         "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert set(figures["status_s"]) == {"12"}
    assert figures["compact_s"]["12"] >= 0
