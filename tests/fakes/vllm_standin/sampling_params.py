"""Stand-in for vllm.sampling_params (see __init__.py): the fields lem-ray sets."""

from __future__ import annotations

import enum


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingParams:
    def __init__(self, max_tokens: int = 16, min_tokens: int = 0, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 ignore_eos: bool = False,
                 output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE) -> None:
        self.max_tokens, self.min_tokens, self.top_k = max_tokens, min_tokens, top_k
        self.output_kind = output_kind
