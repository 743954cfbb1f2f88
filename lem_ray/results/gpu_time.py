"""Where the GPU time of a campaign went: GPU-seconds by phase over all GPUs of the cluster.

Each driver session keeps a ledger: the cluster's GPUs x wall time, and for every finished run
its phases x its GPUs. Idle is the rest, so the phases add up to GPUs x wall time by
construction; it holds GPUs no run held, the gaps between runs on a worker, worker start-up
and runs that failed. The ledger is saved to `gpu_time/<session>.json` as runs finish, so
`lem-ray status` shows it for a running campaign too; sessions (resumes) add up.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from lem_ray.results.store import atomic_write, resolve, warn_skipped

FOLDER = "gpu_time"
RUN_PHASES = ("measuring", "warmup", "loading", "baseline", "cooldown")
PHASES = (*RUN_PHASES, "idle")


@dataclass
class GpuLedger:
    """GPU-seconds of one driver session by phase, for status and Ray's metrics."""

    session: str
    started_s: float
    gpus: int
    total_gpu_s: float = 0.0
    last_s: float = 0.0
    runs_gpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RUN_PHASES, 0.0))

    def __post_init__(self) -> None:
        self.last_s = self.started_s

    def advance(self, now_s: float, gpus: int | None = None) -> None:
        """Count GPUs x time up to now; from now on the cluster has `gpus` (node lost)."""
        self.total_gpu_s += self.gpus * max(0.0, now_s - self.last_s)
        self.last_s = max(self.last_s, now_s)
        if gpus is not None:
            self.gpus = gpus

    def add_run(self, phases_s: dict[str, float], gpus: int) -> None:
        """Add a run's phases, times its GPUs."""
        for name in RUN_PHASES:
            self.runs_gpu_s[name] += phases_s.get(name, 0.0) * gpus

    def seconds(self, now_s: float) -> dict[str, float]:
        """GPU-seconds by phase up to now_s, leaving the ledger as it is: readable from another
        thread than the one that keeps it."""
        runs = dict(self.runs_gpu_s)
        total = self.total_gpu_s + self.gpus * max(0.0, now_s - self.last_s)
        return {**runs, "idle": total - sum(runs.values())}

    def snapshot(self, now_s: float) -> dict[str, Any]:
        """The ledger as saved to the results directory, advanced to now_s."""
        self.advance(now_s)
        seconds = self.seconds(now_s)
        return {
            "session": self.session,
            "started_s": self.started_s,
            "updated_s": self.last_s,
            "gpus": self.gpus,
            "total_gpu_s": self.total_gpu_s,
            "gpu_seconds": seconds,
        }


def save_ledger(results_dir: str | Path, snapshot: dict[str, Any]) -> bool:
    """Write a session's ledger into the results directory, whole or not at all; False, with
    a warning, when it cannot be written (disk full, `gpu_time` not a folder). The ledger is
    bookkeeping beside the runs: failing to save it must not stop a campaign nor hide the
    error that is stopping one (the dispatcher saves it in a `finally`)."""
    payload = json.dumps(snapshot, indent=1).encode()

    def write(path: str, fs: Any) -> None:
        with fs.open_output_stream(path) as stream:
            stream.write(payload)

    try:
        atomic_write(results_dir, FOLDER, f"{snapshot['session']}.json", write)
    except (OSError, pa.ArrowException) as exc:
        text = str(exc).strip().splitlines()
        print(f"lem-ray: warning: GPU time not saved to {results_dir}/{FOLDER}: "
              f"{text[0] if text else type(exc).__name__}", file=sys.stderr)
        return False
    return True


def _session_problem(session: Any) -> str | None:
    """Why a session file cannot be added up (None when it can)."""
    if not isinstance(session, dict) or not isinstance(session.get("gpu_seconds"), dict):
        return "not a GPU-time session (no gpu_seconds)"
    numbers = {**{f"gpu_seconds.{p}": session["gpu_seconds"].get(p) for p in PHASES},
               **{k: session.get(k) for k in ("total_gpu_s", "started_s", "updated_s")}}
    for key, value in numbers.items():
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
            value)
        if not finite:
            return f"{key} is {value!r}, not a number"
    return None


def gpu_seconds(results_dir: str | Path) -> dict[str, Any] | None:
    """All sessions added up: {gpu_seconds: {phase: s}, total_gpu_s, wall_s, sessions};
    None when no session was recorded (a campaign from before this was kept).

    A damaged session file (truncated, hand-edited) is left out with a warning: it must
    not break `status` nor the end of a campaign whose runs all went well."""
    fs, base = resolve(results_dir)
    folder = f"{base}/{FOLDER}"
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        return None
    sessions = []
    for info in fs.get_file_info(pafs.FileSelector(folder)):
        if not info.base_name.endswith(".json") or info.base_name.startswith("."):
            continue
        try:
            with fs.open_input_stream(info.path) as stream:
                session = json.loads(stream.read().decode())
        except (OSError, ValueError) as exc:
            warn_skipped(info.path, f"not a readable GPU-time session ({type(exc).__name__})")
            continue
        problem = _session_problem(session)
        if problem:
            warn_skipped(info.path, problem)
            continue
        sessions.append(session)
    if not sessions:
        return None
    return {
        "gpu_seconds": {p: sum(s["gpu_seconds"][p] for s in sessions) for p in PHASES},
        "total_gpu_s": sum(s["total_gpu_s"] for s in sessions),
        "wall_s": sum(s["updated_s"] - s["started_s"] for s in sessions),
        "sessions": len(sessions),
    }
