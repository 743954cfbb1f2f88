"""vLLM's offline engine loop, simulated on a manual clock: an engine shaped like vllm.v1's
LLMEngine (one token a step per running request, vLLM 0.26.0's per-request stats), and
`install_simulated_vllm`, a `vllm` module whose LLM runs it (tests/backends/conftest.py's
`simulated_vllm` fixture), so the vLLM backend's arrival loop runs
without vLLM or a GPU."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes.clock import ManualClock
from tests.fakes.llm_apis import VLLMSamplingParams, check_vllm_llm_kwargs


@dataclass
class RequestStateStats:
    """vLLM 0.26.0's (vllm/v1/metrics/stats.py), field for field."""

    num_generation_tokens: int = 0
    arrival_time: float = 0.0
    queued_ts: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0
    is_corrupted: bool = False


class SimulatedEngine:
    """Shaped like vllm.v1 LLMEngine: each step emits one new token (a DELTA RequestOutput) for
    every running request; a request finishes after `length` tokens. Time is the test's clock.

    With `stats`, each output carries its request's RequestStateStats, updated in place per
    step as vLLM's output processor does: the engine core's stamps on a clock of their own
    (`ENGINE_CLOCK_OFFSET_S` apart, and `core_lag_s` before the frontend sees the step), the
    first-token latency on the frontend's."""

    ENGINE_CLOCK_OFFSET_S = -5000.0

    def __init__(self, clock: ManualClock, length: int = 3, step_s: float = 0.1,
                 stats: bool = False, core_lag_s: float = 0.0) -> None:
        self.clock, self.length, self.step_s = clock, length, step_s
        self.stats, self.core_lag_s = stats, core_lag_s
        self.running: dict[str, int] = {}
        self.added: list[tuple[str, float]] = []
        self.request_stats: dict[str, RequestStateStats] = {}

    def add_request(self, request_id: str, prompt: Any, params: Any, *,
                    lora_request: Any = None) -> None:
        self.running[request_id] = 0
        self.added.append((request_id, self.clock.t_s))
        if self.stats:
            self.request_stats[request_id] = RequestStateStats(arrival_time=self.clock.t_s)

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def get_num_unfinished_requests(self) -> int:
        return len(self.running)

    def step(self) -> list[Any]:
        self.clock.t_s += self.step_s
        core_ts = self.clock.t_s - self.core_lag_s + self.ENGINE_CLOCK_OFFSET_S
        outputs = []
        for rid in list(self.running):
            self.running[rid] += 1
            finished = self.running[rid] == self.length
            if finished:
                del self.running[rid]
            stats = self.request_stats.get(rid)
            if stats is not None:
                if self.running.get(rid) == 1 or (finished and self.length == 1):
                    stats.first_token_latency = self.clock.t_s - stats.arrival_time
                    stats.first_token_ts = core_ts
                stats.last_token_ts = core_ts
            outputs.append(types.SimpleNamespace(
                request_id=rid, finished=finished, metrics=stats,
                outputs=[types.SimpleNamespace(token_ids=[7])]))
        return outputs


def install_simulated_vllm(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """A `vllm` module whose LLM runs a SimulatedEngine; the clock that drives it."""
    clock = ManualClock(t_s=100.0)

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            check_vllm_llm_kwargs(kwargs)
            self.llm_engine = SimulatedEngine(clock, length=2, step_s=0.125)

        def get_tokenizer(self) -> Any:
            return types.SimpleNamespace(encode=lambda text: [1] * len(text.split()))

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, VLLMSamplingParams
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = types.SimpleNamespace(DELTA="DELTA")
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    monkeypatch.setattr("lem_ray.backends.vllm.arrivals.time",
                        types.SimpleNamespace(perf_counter=clock, sleep=clock.sleep))
    return clock
