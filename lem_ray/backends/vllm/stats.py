"""The vLLM scheduler's per-step stats, read as the engine reports them to its stat loggers.

vLLM V1's LLMEngine.step() hands each step's `SchedulerStats` (num_running_reqs,
num_waiting_reqs, kv_cache_usage) and the frontend's `IterationStats` (num_preempted_reqs:
PREEMPTED events seen in the step's outputs) to `self.logger_manager.record(scheduler_stats=,
iteration_stats=, ...)` (vllm/v1/engine/llm_engine.py, 0.26.0; vllm/v1/metrics/stats.py).
The manager exists only with stats on (`disable_log_stats=False`, translate.engine_kwargs).
The tap wraps that one bound method on the engine's own instance and passes every call
through unchanged, so it sees the steps of LLM.generate and of the step-driven window alike.
Nothing here imports vLLM.
"""

from __future__ import annotations

import time
from typing import Any

from lem_ray.backends.traffic import StepLoad


class SchedulerTap:
    """Keeps one StepLoad per engine step while started (stamped on time.perf_counter, the
    steady window's clock); off otherwise."""

    def __init__(self) -> None:
        self._steps: list[StepLoad] | None = None

    @classmethod
    def install(cls, engine: Any) -> SchedulerTap | None:
        """None when the engine keeps no stats (no logger manager) or its manager cannot be
        wrapped: the load columns are then null, and the run goes on unchanged."""
        manager = getattr(engine, "logger_manager", None)
        record = getattr(manager, "record", None)
        if manager is None or record is None:
            return None
        tap = cls()

        def recorded(scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> Any:
            tap.observe(scheduler_stats, iteration_stats)
            return record(*args, scheduler_stats=scheduler_stats, iteration_stats=iteration_stats,
                          **kwargs)

        try:
            manager.record = recorded
        except (AttributeError, TypeError):
            return None
        return tap

    def start(self) -> None:
        """Begin recording the scheduler's load at each step."""
        self._steps = []

    def stop(self) -> list[StepLoad]:
        """Stop recording; the steps seen since start()."""
        steps, self._steps = self._steps or [], None
        return steps

    def observe(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        """Record one step's running, waiting and preempted requests, while started."""
        if self._steps is None or scheduler_stats is None:
            return
        preempted = iteration_stats.num_preempted_reqs if iteration_stats is not None else 0
        self._steps.append(StepLoad(time.perf_counter(), scheduler_stats.num_running_reqs,
                                    scheduler_stats.num_waiting_reqs, preempted))
