"""Warm the engine until its step latency settles, outside the measured window."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from lem_ray.backends.base import RequestRecord
from lem_ray.config.experiment import WarmupConfig


@dataclass
class WarmupOutcome:
    requests: int
    steps: int
    converged: bool
    final_cv: float | None
    duration_s: float


def coefficient_of_variation(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else None


def run_warmup(
    generate: Callable[[list[str]], list[RequestRecord]],
    prompts: list[str],
    cfg: WarmupConfig,
    batch_size: int,
) -> WarmupOutcome:
    """Send steps of `batch_size` prompts (cycling through the prompt list).

    A step's latency is its wall time per output token, so prompts of different lengths
    stay comparable. cv mode stops once the CV of the last `window` steps is under the
    threshold, or at max_requests (then converged is False, and at least two steps ran so
    the CV is still reported). fixed mode sends `requests` requests and reports the CV
    it saw, without judging it.
    """
    started = time.perf_counter()
    latencies: list[float] = []
    sent = 0
    converged = False
    cursor = 0
    budget = cfg.requests if cfg.mode == "fixed" else cfg.max_requests
    while sent < budget or (cfg.mode == "cv" and len(latencies) < 2):
        size = min(batch_size, budget - sent) if sent < budget else batch_size
        step = [prompts[(cursor + i) % len(prompts)] for i in range(size)]
        cursor += size
        t0 = time.perf_counter()
        records = generate(step)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        sent += len(step)
        latencies.append(elapsed_ms / max(1, sum(r.output_tokens for r in records)))
        if cfg.mode == "cv" and len(latencies) >= cfg.window:
            cv = coefficient_of_variation(latencies[-cfg.window:])
            if cv is not None and cv < cfg.cv_threshold:
                converged = True
                break
    window = latencies[-cfg.window:]
    return WarmupOutcome(
        requests=sent,
        steps=len(latencies),
        converged=converged,
        final_cv=coefficient_of_variation(window),
        duration_s=time.perf_counter() - started,
    )
