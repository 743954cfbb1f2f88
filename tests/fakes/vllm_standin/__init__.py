"""A CPU stand-in for the part of vLLM 0.26.0's offline API that lem-ray and
dev/gpu-vllm/overhead.py use, to rehearse them on a machine without a GPU; rehearse.sh copies
it into a temp dir as the package `vllm` (it is one only there):

    dev/gpu-vllm/rehearse.sh python3 dev/gpu-vllm/overhead.py --window-s 1 ...

Not vLLM: no model runs. An engine step sleeps `STEP_S + STEP_PER_SEQ_S x running` (a GPU
step's shape, LEM_STANDIN_STEP_S / LEM_STANDIN_STEP_PER_SEQ_S) and gives every running request
one token. What is copied from vLLM is the frontend's shape: LLM.generate sets FINAL_ONLY and
steps until nothing is unfinished (vllm/entrypoints/offline_utils.py), FINAL_ONLY builds an
output only for a finished request, DELTA one per running request per step
(vllm/v1/engine/output_processor.py), and RequestStateStats are kept only with stats on
(disable_log_stats=False), stamped as vllm/v1/metrics/stats.py stamps them.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from vllm.sampling_params import RequestOutputKind, SamplingParams

__version__ = "0.26.0+standin"
__all__ = ["LLM", "SamplingParams"]

STEP_S = float(os.environ.get("LEM_STANDIN_STEP_S", "0.002"))
STEP_PER_SEQ_S = float(os.environ.get("LEM_STANDIN_STEP_PER_SEQ_S", "0.00001"))


@dataclass
class RequestStateStats:
    num_generation_tokens: int = 0
    arrival_time: float = 0.0
    queued_ts: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0
    is_corrupted: bool = False


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestStateStats | None = None


@dataclass
class _Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    stats: RequestStateStats | None
    token_ids: list[int] = field(default_factory=list)
    sent: int = 0


class LLMEngine:
    def __init__(self, max_num_seqs: int, max_model_len: int, log_stats: bool) -> None:
        self.max_num_seqs, self.log_stats = max_num_seqs, log_stats
        self.waiting: list[_Request] = []
        self.running: list[_Request] = []
        self.model_config = _Namespace(max_model_len=max_model_len)
        self.vllm_config = _Namespace(scheduler_config=_Namespace(max_num_seqs=max_num_seqs))
        self.engine_core = _Namespace(shutdown=lambda: None)

    def add_request(self, request_id: str, prompt: dict, params: SamplingParams,
                    lora_request: Any = None, priority: int = 0) -> str:
        stats = RequestStateStats(arrival_time=time.time()) if self.log_stats else None
        self.waiting.append(_Request(request_id, prompt["prompt_token_ids"], params, stats))
        return request_id

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    def step(self) -> list[RequestOutput]:
        while self.waiting and len(self.running) < self.max_num_seqs:
            self.running.append(self.waiting.pop(0))
        time.sleep(STEP_S + STEP_PER_SEQ_S * len(self.running))
        core_ts, now = time.monotonic(), time.time()
        outputs, still = [], []
        for req in self.running:
            req.token_ids.append(7)
            if req.stats is not None:
                if len(req.token_ids) == 1:
                    req.stats.first_token_latency = now - req.stats.arrival_time
                    req.stats.first_token_ts = core_ts
                req.stats.last_token_ts = core_ts
                req.stats.num_generation_tokens += 1
            finished = len(req.token_ids) >= req.params.max_tokens
            if finished or req.params.output_kind == RequestOutputKind.DELTA:
                new = req.token_ids[req.sent:] if (
                    req.params.output_kind == RequestOutputKind.DELTA) else req.token_ids
                req.sent = len(req.token_ids)
                outputs.append(RequestOutput(req.request_id, req.prompt_token_ids,
                                             [CompletionOutput(0, "", list(new))], finished,
                                             req.stats))
            if not finished:
                still.append(req)
        self.running = still
        return outputs


class _Namespace:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class _Tokenizer:
    def encode(self, text: str) -> list[int]:
        return [1] + [100 + len(word) for word in text.split()]


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        self.llm_engine = LLMEngine(kwargs.get("max_num_seqs", 256),
                                    kwargs.get("max_model_len", 2048),
                                    not kwargs.get("disable_log_stats", True))
        self._ids = itertools.count()

    def get_tokenizer(self) -> _Tokenizer:
        return _Tokenizer()

    def reset_prefix_cache(self) -> bool:
        return True

    def generate(self, prompts: list[dict], sampling_params: SamplingParams, *,
                 use_tqdm: bool = True, lora_request: Any = None) -> list[RequestOutput]:
        sampling_params.output_kind = RequestOutputKind.FINAL_ONLY
        for prompt in prompts:
            self.llm_engine.add_request(str(next(self._ids)), prompt, sampling_params)
        finished = []
        while self.llm_engine.has_unfinished_requests():
            finished += [o for o in self.llm_engine.step() if o.finished]
        return sorted(finished, key=lambda o: int(o.request_id))
