"""Timestamps each decoding step of assisted generation, where a step may yield several tokens."""

from __future__ import annotations

import time
from typing import Any


class StepTimer:
    """A transformers streamer: generate() calls put() once with the prompt, then per step.

    Duck-typed to transformers' BaseStreamer (put/end) so this module imports without it.
    A step may carry several tokens per row (assisted generation): each gets that time.
    Tokens are read on the host (generate moves them to CPU before put), so the times are
    real arrival times, not launch times.
    """

    def __init__(self) -> None:
        self.token_times_s: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        """Stamp the arrival of each row's tokens of one step; the first call is the prompt."""
        now = time.perf_counter()
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        tokens = value.shape[-1] if getattr(value, "dim", lambda: 1)() == 2 else 1
        self.token_times_s.extend([now] * tokens)

    def end(self) -> None:
        """Nothing to flush: times are recorded as they arrive."""
