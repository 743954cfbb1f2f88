"""When each decoding step of generate() produced its tokens, without slowing generate down.

On CUDA a step's time is a CUDA event recorded on the stream that computes the logits,
read only once the batch is done: no host synchronisation and no device-to-host copy per
step (a streamer gets every step's tokens copied to the host, which stalls the stream). On the
CPU the work is synchronous, so the host clock at each step is the step's end.
"""

from __future__ import annotations

import time
from typing import Any

CUDA_EVENT = "cuda_event"
HOST_CLOCK = "host_clock"


def times_from_offsets(start_s: float, offsets_ms: list[float]) -> list[float]:
    """Absolute perf_counter times from event offsets (ms after the start event).

    The start event is recorded when the host starts the batch, on an idle stream (the
    previous batch was synchronised), so it runs at start_s: every stamp shares the host
    clock's origin and TTFT / e2e stay comparable with host-timed backends.
    """
    return [start_s + offset / 1000 for offset in offsets_ms]


class StepClock:
    """A logits processor that changes nothing and notes the time of each decoding step.

    generate() calls its logits processors exactly once per generated token position, right
    after the forward pass that produced the logits; returning the scores untouched adds no
    kernel to the step.
    """

    def __init__(self, torch: Any, device: Any) -> None:
        self._torch = torch
        self._cuda = getattr(device, "type", str(device)) == "cuda"
        self._device = device
        self._stream = torch.cuda.current_stream(device) if self._cuda else None
        self._events: list[Any] = []
        self._host_s: list[float] = []
        self._start: Any = None
        self.start_s = 0.0

    @property
    def method(self) -> str:
        """How the steps are timed: CUDA events on a GPU, the host clock on CPU."""
        return CUDA_EVENT if self._cuda else HOST_CLOCK

    def start(self) -> None:
        """Mark the start of the batch: after its inputs are on the device, before generate."""
        self.start_s = time.perf_counter()
        if self._cuda:
            self._start = self._torch.cuda.Event(enable_timing=True)
            self._start.record(self._stream)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Note this step's time and return the scores unchanged."""
        if self._cuda:
            event = self._torch.cuda.Event(enable_timing=True)
            event.record(self._stream)
            self._events.append(event)
        else:
            self._host_s.append(time.perf_counter())
        return scores

    def token_times_s(self) -> list[float]:
        """One time per step; on CUDA call only after the device was synchronised."""
        if not self._cuda:
            return list(self._host_s)
        return times_from_offsets(self.start_s, [self._start.elapsed_time(e) for e in self._events])
