"""Arrival processes for the measured window, and the steady-state window inside it.

offline sends every prompt at once (what a batch job does); constant, poisson and gamma send
them at `rate_rps` on average, as users of a server would, so the engine runs at the load that
rate makes; gamma's `burstiness` sets how clustered they come. trace replays a recorded stream:
each request's arrival, input and output length, so two engines see the identical requests.
Under such traffic the run has a ramp (the engine filling up) and a tail (draining after the
last arrival); the steady-state window leaves both out, as ML.ENERGY's benchmark does.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lem_ray.config.base import Seed, StrictModel, invalid_combination

TrafficMode = Literal["offline", "constant", "poisson", "gamma", "trace"]
RATE_MODES = ("constant", "poisson", "gamma")


class TrafficConfig(StrictModel):
    """How requests arrive: all at once, at a rate (constant, Poisson, gamma), or from a trace."""

    mode: TrafficMode = Field(
        "offline", description="offline: all prompts at once; constant / poisson / gamma: at "
        "rate_rps; trace: replay `trace` (arrivals, input and output lengths)"
    )
    rate_rps: float | None = Field(None, gt=0, description="mean requests per second")
    seed: Seed = Field(
        0, description="seeds the poisson / gamma gaps; the same seed, the same arrivals")
    burstiness: float = Field(
        1.0, gt=0, le=1000, description="gamma: the gaps' shape; their CV^2 is 1/burstiness "
        "(1: poisson, below 1: burstier, above: more regular)")
    trace: str | None = Field(
        None, min_length=1, description="trace: JSONL, CSV or Parquet with columns arrival_s, "
        "input_tokens, output_tokens, one row per measured request; a path on the node that "
        "runs the experiment, like a local model path")
    steady_after_responses: int = Field(
        16, ge=1,
        description="the steady window opens once max_num_seqs requests are in flight or "
        "after this many responses, whichever is first",
    )

    @model_validator(mode="after")
    def _rules(self) -> TrafficConfig:
        if self.mode not in RATE_MODES and self.rate_rps is not None:
            raise invalid_combination("traffic.rate_rps only applies to constant, poisson or gamma")
        if self.mode in RATE_MODES and self.rate_rps is None:
            raise invalid_combination(f"traffic mode {self.mode} needs rate_rps")
        if self.mode != "gamma" and self.burstiness != 1.0:
            raise invalid_combination("traffic.burstiness only applies to gamma")
        if (self.mode == "trace") != (self.trace is not None):
            raise invalid_combination("traffic mode trace and traffic.trace go together")
        return self


def arrival_offsets_s(mode: TrafficMode, count: int, rate_rps: float | None = None,
                      seed: int = 0, burstiness: float = 1.0) -> list[float]:
    """Seconds after the window opens at which each of `count` requests is sent.

    constant: one every 1/rate; poisson: exponential gaps of mean 1/rate; gamma: gamma gaps of
    shape `burstiness` and mean 1/rate (vLLM's benchmark_serving convention). Both draw from
    a generator of their own (random.Random(seed)), so arrivals do not depend on anything else
    drawn. The first request goes at 0 in every mode. trace offsets come from read_trace.
    """
    if mode == "offline":
        return [0.0] * count
    if mode not in RATE_MODES:
        raise ValueError(f"traffic mode {mode} has no generated arrivals")
    if rate_rps is None or rate_rps <= 0:
        raise ValueError(f"traffic mode {mode} needs a positive rate_rps")
    if mode == "constant":
        return [i / rate_rps for i in range(count)]
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for i in range(count):
        if i:
            t += (rng.expovariate(rate_rps) if mode == "poisson"
                  else rng.gammavariate(burstiness, 1.0 / (rate_rps * burstiness)))
        offsets.append(t)
    return offsets


@dataclass(frozen=True)
class RequestTrace:
    """A recorded request stream: per request, its arrival (s after the first window edge),
    input and output length in tokens."""

    arrival_s: list[float]
    input_tokens: list[int]
    output_tokens: list[int]

    def __len__(self) -> int:
        return len(self.arrival_s)


TRACE_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")


def read_trace(path: str) -> RequestTrace:
    """The trace file's rows in order; ValueError (one line) on anything it cannot replay."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    readers = {".jsonl": pyarrow.json.read_json, ".json": pyarrow.json.read_json,
               ".csv": pyarrow.csv.read_csv, ".parquet": pyarrow.parquet.read_table}
    suffix = Path(path).suffix.lower()
    if suffix not in readers:
        raise ValueError(f"traffic.trace: unsupported file type {suffix!r}; use {sorted(readers)}")
    try:
        table = readers[suffix](path)
    except (pa.ArrowInvalid, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"traffic.trace: cannot read {path}: {first}") from None
    missing = [c for c in TRACE_COLUMNS if c not in table.column_names]
    if missing or table.num_rows == 0:
        raise ValueError(f"traffic.trace: {path} needs rows with columns {list(TRACE_COLUMNS)}"
                         + (f" (missing {missing})" if missing else " (it has none)"))
    columns = {c: table.column(c).to_pylist() for c in TRACE_COLUMNS}
    arrivals = columns["arrival_s"]
    if any(a is None or not 0 <= a < float("inf") for a in arrivals) or any(
            b < a for a, b in pairwise(arrivals)):
        raise ValueError(f"traffic.trace: {path}: arrival_s must be finite, >= 0 and "
                         "non-decreasing")
    for name in ("input_tokens", "output_tokens"):
        if any(not isinstance(n, int) or n < 1 for n in columns[name]):
            raise ValueError(f"traffic.trace: {path}: {name} must be whole numbers >= 1")
    return RequestTrace([float(a) for a in arrivals], columns["input_tokens"],
                        columns["output_tokens"])


def stream_sha256(arrival_s: list[float], prompt_ids: list[list[int]],
                  output_tokens: list[int | None]) -> str:
    """Identifies the request stream a run sent (arrivals to the microsecond, prompt token ids,
    fixed output lengths where set): equal for two runs that sent the same requests."""
    text = ";".join(f"{a:.6f}:{','.join(map(str, ids))}:{'' if o is None else o}"
                    for a, ids, o in zip(arrival_s, prompt_ids, output_tokens))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit_tokens(ids: list[int], length: int) -> list[int]:
    """The prompt's tokens cut or repeated to exactly `length`: a trace's input length."""
    if not ids:
        raise ValueError("an empty prompt cannot be fitted to a trace's input length")
    return (ids * (length // len(ids) + 1))[:length]


@dataclass(frozen=True)
class SteadyWindow:
    """[start, end] in the backend's clock (time.perf_counter), and why it opened."""

    start_s: float
    end_s: float
    opened_by: str
    output_tokens: int

    @property
    def duration_s(self) -> float:
        """Seconds from the window's start to its end."""
        return self.end_s - self.start_s


def steady_window(
    in_flight: list[tuple[float, int]],
    finished_s: list[float],
    last_arrival_s: float,
    token_times_s: list[float],
    max_num_seqs: int,
    after_responses: int,
    limit_name: str = "max_num_seqs",
) -> SteadyWindow | None:
    """The steady-state window of one run under traffic, or None when it has none.

    Opens at the first moment `max_num_seqs` requests (the engine's limit, named by
    `limit_name`) are in flight (the engine is full) or
    at the `after_responses`-th response, whichever comes first; closes at the last arrival,
    after which the engine only drains. `in_flight` is (time, requests in the engine) after
    each engine step; `token_times_s` the arrival time of every output token, which counts
    the tokens produced inside the window.
    """
    candidates = []
    full = next((t for t, n in in_flight if n >= max_num_seqs), None)
    if full is not None:
        candidates.append((full, f"{max_num_seqs} requests in flight ({limit_name})"))
    done = sorted(finished_s)
    if len(done) >= after_responses:
        candidates.append((done[after_responses - 1], f"{after_responses} responses"))
    if not candidates:
        return None
    start, why = min(candidates)
    if start >= last_arrival_s:
        return None
    tokens = sum(1 for t in token_times_s if start <= t <= last_arrival_s)
    return SteadyWindow(start, last_arrival_s, why, tokens)


def in_flight_from_traces(starts_s: list[float], ends_s: list[float]) -> list[tuple[float, int]]:
    """(time, requests in flight) after each arrival and each completion, for a backend that
    sees only its own requests' lifetimes (a completion before an arrival at the same time)."""
    events = sorted([(t, -1) for t in ends_s] + [(t, 1) for t in starts_s])
    in_flight, count = [], 0
    for t, change in events:
        count += change
        in_flight.append((t, count))
    return in_flight


@dataclass(frozen=True)
class StepLoad:
    """The engine scheduler's own account of one step: requests running and waiting after it,
    and KV-cache preemptions it reported; `t_s` on the backend's clock (time.perf_counter)."""

    t_s: float
    running: int
    waiting: int
    preempted: int


@dataclass(frozen=True)
class EngineLoad:
    """How full the engine ran over a window, from its scheduler's per-step stats.

    `saturating`: the run should have kept the engine full: offline (every request queued
    from the start), or requests waited in the scheduler's queue in at least half the steps."""

    running_mean: float
    running_p10: float
    waiting_step_share: float
    preemptions: int
    steps: int
    saturating: bool


SATURATING_WAITING_SHARE = 0.5


def engine_load(steps: list[StepLoad], offline: bool,
                window: SteadyWindow | None = None) -> EngineLoad | None:
    """The load over the steps stamped inside `window` (every step without one); None when
    no step was."""
    inside = [s for s in steps if window is None or window.start_s <= s.t_s <= window.end_s]
    if not inside:
        return None
    running = sorted(s.running for s in inside)
    waiting_share = sum(1 for s in inside if s.waiting > 0) / len(inside)
    return EngineLoad(
        running_mean=sum(running) / len(running),
        running_p10=_percentile(running, 10.0),
        waiting_step_share=waiting_share,
        preemptions=sum(s.preempted for s in inside),
        steps=len(inside),
        saturating=offline or waiting_share >= SATURATING_WAITING_SHARE,
    )


def _percentile(ordered: list[int], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on sorted values."""
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
