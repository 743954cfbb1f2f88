"""Client-side timing of streamed requests, shared by the backends that stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from lem_ray.records import RequestRecord


@dataclass
class StreamTrace:
    """Arrival times (time.perf_counter) of one streamed request's output tokens."""

    start_s: float
    token_times: list[float] = field(default_factory=list)
    end_s: float | None = None

    def observe(self, now: float, total_tokens: int) -> None:
        """One streamed chunk: every token it added arrived now (a chunk can carry several)."""
        self.token_times.extend([now] * (total_tokens - len(self.token_times)))


def record_from_trace(
    index: int, input_tokens: int, output_tokens: int, trace: StreamTrace
) -> RequestRecord:
    """TTFT is the first token's arrival; ITL the gaps between consecutive tokens, 0 for tokens
    that came in one chunk. If the traced tokens do not match the final count, the gaps are
    left out rather than guessed."""
    if trace.end_s is None:
        raise ValueError(f"request {index}: its stream was not finished")
    times = trace.token_times
    return RequestRecord(
        index=index,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        e2e_ms=(trace.end_s - trace.start_s) * 1e3,
        ttft_ms=(times[0] - trace.start_s) * 1e3 if times else None,
        itl_ms=(
            [(later - earlier) * 1e3 for earlier, later in pairwise(times)]
            if len(times) == output_tokens
            else []
        ),
        start_s=trace.start_s,
    )
