"""How long a run will hold its GPUs, known before it runs: what backfill, and the wait for a
busy worker rather than a new one, decide on. Ray-free.

A run's time is its work (warmup, measuring, prefill: what the run does on a loaded engine)
plus, where its worker does not hold its engine, a load, plus, for a new worker, the worker's
start. Work is learned per experiment from its last run; before an experiment has run, from
the plan: its decode steps (batches x output tokens) times the seconds per step its engine,
or any engine, took so far. So the first finished run calibrates all the others.
"""

from __future__ import annotations

import math
from statistics import median
from typing import Any


def decode_steps(config: Any, prompts: int) -> int:
    """Batches x max output tokens: the plan's measure of a run's work."""
    batches = math.ceil(max(prompts, 1) / max(config.backend_options.concurrency, 1))
    return batches * max(config.max_output_tokens, 1)


class RunLengths:
    """How long runs took, learned as they finish, to estimate the runs not yet done."""

    def __init__(self) -> None:
        self.work_s: dict[str, float] = {}
        """Experiment id -> seconds its last run took beyond loading."""
        self.step_s: dict[str, float] = {}
        """Engine key -> seconds per decode step of its last run."""
        self.load_s: dict[str, float] = {}
        """Engine key -> seconds its last load took."""
        self.open_s: float | None = None
        """Seconds the last new worker took from its request to being up."""

    def finished(self, experiment_id: str, engine: str, steps: int, run_s: float,
                 load_s: float, reused: bool) -> None:
        """Learn from a finished run: its work time, per-step time and (fresh engine) load time."""
        work_s = max(run_s - load_s, 0.0)
        self.work_s[experiment_id] = work_s
        self.step_s[engine] = work_s / max(steps, 1)
        if not reused:
            self.load_s[engine] = load_s

    def started(self, open_s: float) -> None:
        """Note how long opening a slot took."""
        self.open_s = open_s

    def load(self, engine: str) -> float | None:
        """Its own last load, else the longest load seen (a guess on the safe side)."""
        return self.load_s.get(engine, max(self.load_s.values(), default=None))

    def work(self, experiment_id: str, engine: str, steps: int) -> float | None:
        """Estimated seconds of work of a run, or None while nothing is known."""
        known = self.work_s.get(experiment_id)
        if known is not None:
            return known
        per_step = self.step_s.get(engine)
        if per_step is None and self.step_s:
            per_step = median(self.step_s.values())
        return None if per_step is None else per_step * steps

    def estimate(self, experiment_id: str, engine: str, steps: int, warm: bool,
                 new_worker: bool = False) -> float | None:
        """Seconds the run will hold its GPUs; None while a part of it is not known."""
        parts = [self.work(experiment_id, engine, steps)]
        if not warm:
            parts.append(self.load(engine))
        if new_worker:
            parts.append(self.open_s)
        return None if None in parts else sum(p for p in parts if p is not None)

    def cold(self, engine: str) -> float | None:
        """Seconds before the run's work could begin on a new worker: start and load."""
        load = self.load(engine)
        return None if load is None or self.open_s is None else self.open_s + load
