"""Clocks that stand in for time.perf_counter / time.sleep and datetime.now: time moves only
when the test or the code under test (through sleep) moves it, so timings are exact."""

from __future__ import annotations

from datetime import datetime, timedelta


class ManualClock:
    """A perf_counter-like clock in seconds: call it to read, `advance` or `sleep` to move it."""

    def __init__(self, t_s: float = 1000.0) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s

    def advance(self, dt_s: float) -> None:
        self.t_s += dt_s

    def sleep(self, seconds: float) -> None:
        self.t_s += seconds


class WallClock:
    """A datetime clock: time moves when the code under test sleeps (each sleep kept) or a test
    moves `t` (a run taking its time)."""

    def __init__(self, start: datetime) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += timedelta(seconds=seconds)
