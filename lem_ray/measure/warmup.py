"""Warm the engine until its step latency settles, outside the measured window."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from lem_ray.config.experiment import WarmupConfig
from lem_ray.records import RequestRecord


@dataclass
class WarmupOutcome:
    """How warmup went, for the run's row."""

    requests: int
    steps: int
    converged: bool | None
    """None in fixed mode: the CV is reported, not judged."""
    final_cv: float | None
    duration_s: float


def coefficient_of_variation(values: list[float]) -> float | None:
    """stdev / mean of the values; None for fewer than two or a mean <= 0."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else None


def judged_latencies(latencies: list[float], window: int) -> list[float]:
    """The steps the CV is taken over: the last `window`, never the first step (allocation,
    compilation, cache creation make it an outlier that says nothing about steadiness)."""
    return latencies[1:][-window:]


def run_warmup(
    generate: Callable[[list[str]], list[RequestRecord]],
    prompts: list[str],
    cfg: WarmupConfig,
    batch_size: int,
    clock: Callable[[], float] | None = None,
) -> WarmupOutcome:
    """Send full steps of `batch_size` prompts (cycling through the prompt list).

    Every step has the measured run's own shape, so steps compare like with like: a partial
    batch's time per token is not comparable with a full one's. A step's latency is its wall
    time per output token. cv mode stops once the CV of the last `window` steps (the first
    step excluded) is under the threshold; it gives up after `max_steps` steps or once
    `max_s` has passed (converged False). fixed mode runs enough full steps to send
    `requests` requests and reports the CV it saw without judging it. clock: the run's
    perf_counter (time.perf_counter unless given).
    """
    now = clock or time.perf_counter
    started = now()
    latencies: list[float] = []
    converged: bool | None = None if cfg.mode == "fixed" else False
    cursor = 0
    steps = math.ceil(cfg.requests / batch_size) if cfg.mode == "fixed" else cfg.max_steps
    while len(latencies) < steps:
        step = [prompts[(cursor + i) % len(prompts)] for i in range(batch_size)]
        cursor += batch_size
        t0 = now()
        records = generate(step)
        elapsed_ms = (now() - t0) * 1000
        latencies.append(elapsed_ms / max(1, sum(r.output_tokens for r in records)))
        if cfg.mode == "fixed":
            continue
        judged = judged_latencies(latencies, cfg.window)
        cv = coefficient_of_variation(judged) if len(judged) == cfg.window else None
        if cv is not None and cv < cfg.cv_threshold:
            converged = True
            break
        if now() - started >= cfg.max_s:
            break
    return WarmupOutcome(
        requests=len(latencies) * batch_size,
        steps=len(latencies),
        converged=converged,
        final_cv=coefficient_of_variation(judged_latencies(latencies, cfg.window)),
        duration_s=now() - started,
    )
