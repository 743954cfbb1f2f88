"""Feeding vLLM's engine on an arrival process, one engine step at a time.

`LLM.generate` hands every prompt to the engine at once. Under traffic the backend drives the
engine the way LLM.generate does internally (LLMEngine.add_request, then step() until nothing
is unfinished), adding each request when its arrival time has come. Outputs come back as
deltas (RequestOutputKind.DELTA), one per request per engine step, so every token is
timestamped twice: by vLLM's engine core (its stats, when the engine keeps them) and here, on
this process's perf_counter, as it arrives. The records take vLLM's times; the steady-state
window takes the local ones, which share a clock with the energy samples. Offline traffic
runs the same loop with every arrival at 0, which is what LLM.generate does inside.
Nothing here imports vLLM: the engine is passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Protocol

from lem_ray.backends.streaming import StreamTrace, record_from_trace
from lem_ray.records import RequestRecord


class Engine(Protocol):
    """The part of vllm.v1.engine.llm_engine.LLMEngine used here."""

    def add_request(self, request_id: str, prompt: Any, params: Any, **kwargs: Any) -> Any:
        """Queue one request; it runs from the next step()."""

    def step(self) -> list[Any]:
        """Run one scheduler step; returns the requests' outputs so far."""

    def has_unfinished_requests(self) -> bool:
        """Whether any queued or running request is left."""

    def get_num_unfinished_requests(self) -> int:
        """How many queued or running requests are left."""


@dataclass
class EngineTimes:
    """vLLM's own timing of one request, read from `RequestOutput.metrics` after each step.

    That object is vLLM V1's RequestStateStats (vllm/v1/metrics/stats.py), updated in place
    by the output processor as each step's outputs come in (IterationStats.update_from_output):
    `last_token_ts` is then the engine core's time.monotonic() stamp of the step that made
    this delta's tokens (EngineCoreOutputs.timestamp), and `first_token_latency` the
    frontend's time.time() from the request's arrival (add_request) to its first token.
    Each is read right after the step, before the next one overwrites it.
    """

    ttft_s: float = 0.0
    token_ts: list[float] = field(default_factory=list)

    def observe(self, stats: Any, new_tokens: int) -> None:
        """Take the engine's first-token latency and stamp `new_tokens` with its last-token time."""
        self.ttft_s = stats.first_token_latency
        self.token_ts.extend([stats.last_token_ts] * new_tokens)


def record_from_engine_times(index: int, input_tokens: int, trace: StreamTrace,
                             times: EngineTimes | None) -> RequestRecord:
    """TTFT from vLLM's first_token_latency; inter-token gaps and the decode span from its
    engine-core stamps (same-clock differences only: the two clocks are never mixed).
    Without engine stats (disable_log_stats=True), or if they miss tokens, the local trace."""
    output_tokens = len(trace.token_times)
    if times is None or times.ttft_s <= 0.0 or len(times.token_ts) != output_tokens:
        return record_from_trace(index, input_tokens, output_tokens, trace)
    ts = times.token_ts
    return RequestRecord(
        index=index,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        e2e_ms=(times.ttft_s + ts[-1] - ts[0]) * 1e3,
        ttft_ms=times.ttft_s * 1e3,
        itl_ms=[(later - earlier) * 1e3 for earlier, later in pairwise(ts)],
        start_s=trace.start_s,
    )


@dataclass
class ArrivalRun:
    """What one run under traffic saw: per-request token times (local clock, and vLLM's where
    it keeps stats), engine load after each step."""

    traces: list[StreamTrace]
    engine_times: list[EngineTimes | None] = field(default_factory=list)
    in_flight: list[tuple[float, int]] = field(default_factory=list)
    finished_s: list[float] = field(default_factory=list)
    last_arrival_s: float = 0.0

    @property
    def token_times_s(self) -> list[float]:
        """Every output token's arrival time, over all requests."""
        return [t for trace in self.traces for t in trace.token_times]

    @property
    def engine_timed(self) -> bool:
        """Every request's times came from vLLM's engine stats."""
        return bool(self.traces) and all(
            t is not None and t.ttft_s > 0.0 and len(t.token_ts) == len(trace.token_times)
            for trace, t in zip(self.traces, self.engine_times))

    def records(self, input_tokens: Sequence[int]) -> list[RequestRecord]:
        """One record per request, in submission order, its lengths from `input_tokens`."""
        return [record_from_engine_times(i, n, trace, times) for i, (n, trace, times)
                in enumerate(zip(input_tokens, self.traces, self.engine_times))]


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
    `params` is one SamplingParams for all, or a list of one per prompt (trace replay).

    Request ids are the prompt indices. A request's clock starts when it is sent (its TTFT
    does not include time before its arrival). An arrival that falls inside an engine step is
    sent when that step returns, as a server's frontend would hand it over between steps.
    When the engine is idle the loop sleeps until the next arrival rather than spinning.
    """
    if len(prompts) != len(offsets_s):
        raise ValueError(f"{len(prompts)} prompts for {len(offsets_s)} arrival times")
    per_request = params if isinstance(params, list) else [params] * len(prompts)
    if len(per_request) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts for {len(per_request)} sampling params")
    clock = clock or time.perf_counter
    sleep = sleep or time.sleep
    start = clock()
    traces: list[StreamTrace | None] = [None] * len(prompts)
    engine_times: list[EngineTimes | None] = [None] * len(prompts)
    run = ArrivalRun(traces=[])
    sent = 0
    while sent < len(prompts) or engine.has_unfinished_requests():
        now = clock()
        while sent < len(prompts) and start + offsets_s[sent] <= now:
            sending = traces[sent] = StreamTrace(start_s=clock())
            engine.add_request(str(sent), prompts[sent], per_request[sent],
                               lora_request=lora_request)
            run.last_arrival_s = sending.start_s
            sent += 1
        if not engine.has_unfinished_requests():
            if sent < len(prompts):
                sleep(max(0.0, start + offsets_s[sent] - clock()))
            continue
        outputs = engine.step()
        now = clock()
        for output in outputs:
            index = int(output.request_id)  # vLLM hands back the id given to add_request
            trace = traces[index]
            if trace is None:
                raise RuntimeError(f"vLLM returned request {index}, which was not sent")
            new_tokens = len(output.outputs[0].token_ids)
            trace.observe(now, len(trace.token_times) + new_tokens)
            if output.metrics is not None:
                times = engine_times[index]
                if times is None:
                    times = engine_times[index] = EngineTimes()
                times.observe(output.metrics, new_tokens)
            if output.finished:
                trace.end_s = now
                run.finished_s.append(now)
        run.in_flight.append((now, engine.get_num_unfinished_requests()))
    run.traces = [t for t in traces if t is not None]
    run.engine_times = engine_times[:len(run.traces)]
    return run
