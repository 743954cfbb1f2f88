"""Feeding vLLM's engine on an arrival process, one engine step at a time.

`LLM.generate` hands every prompt to the engine at once. Under traffic the backend drives the
engine the way LLM.generate does internally (LLMEngine.add_request, then step() until nothing
is unfinished), adding each request when its arrival time has come. Outputs come back as
deltas (RequestOutputKind.DELTA), so every token is timestamped here as it reaches this
process. Nothing here imports vLLM: the engine is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lem_ray.backends.streaming import StreamTrace


class Engine(Protocol):
    """The part of vllm.v1.engine.llm_engine.LLMEngine used here."""

    def add_request(self, request_id: str, prompt: Any, params: Any, **kwargs: Any) -> Any: ...

    def step(self) -> list[Any]: ...

    def has_unfinished_requests(self) -> bool: ...

    def get_num_unfinished_requests(self) -> int: ...


@dataclass
class ArrivalRun:
    """What one run under traffic saw: per-request token times, engine load after each step."""

    traces: list[StreamTrace]
    in_flight: list[tuple[float, int]] = field(default_factory=list)
    finished_s: list[float] = field(default_factory=list)
    last_arrival_s: float = 0.0

    @property
    def token_times_s(self) -> list[float]:
        return [t for trace in self.traces for t in trace.token_times]


def drive_arrivals(
    engine: Engine,
    prompts: Sequence[Any],
    offsets_s: Sequence[float],
    params: Any,
    lora_request: Any = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> ArrivalRun:
    """Send prompt i at offsets_s[i] after the start, step the engine, collect the deltas.

    Request ids are the prompt indices. A request's clock starts when it is sent (its TTFT
    does not include time before its arrival). An arrival that falls inside an engine step is
    sent when that step returns, as a server's frontend would hand it over between steps.
    When the engine is idle the loop sleeps until the next arrival rather than spinning.
    """
    if len(prompts) != len(offsets_s):
        raise ValueError(f"{len(prompts)} prompts for {len(offsets_s)} arrival times")
    clock = clock or time.perf_counter
    sleep = sleep or time.sleep
    start = clock()
    traces: list[StreamTrace | None] = [None] * len(prompts)
    run = ArrivalRun(traces=[])
    sent = 0
    while sent < len(prompts) or engine.has_unfinished_requests():
        now = clock()
        while sent < len(prompts) and start + offsets_s[sent] <= now:
            traces[sent] = StreamTrace(start_s=clock())
            engine.add_request(str(sent), prompts[sent], params, lora_request=lora_request)
            run.last_arrival_s = traces[sent].start_s
            sent += 1
        if not engine.has_unfinished_requests():
            if sent < len(prompts):
                sleep(max(0.0, start + offsets_s[sent] - clock()))
            continue
        outputs = engine.step()
        now = clock()
        for output in outputs:
            trace = traces[int(output.request_id)]
            trace.observe(now, len(trace.token_times) + len(output.outputs[0].token_ids))
            if output.finished:
                trace.end_s = now
                run.finished_s.append(now)
        run.in_flight.append((now, engine.get_num_unfinished_requests()))
    run.traces = [t for t in traces if t is not None]
    return run
