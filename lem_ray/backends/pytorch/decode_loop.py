"""lem-ray's compiled decode loop: static KV cache, one compiled token step, no host sync.

Why not generate(): on an H200, transformers' own compiled static-cache generate tops out at
~280-345 tok/s for a 1 B model at batch 1 (~3 ms a step against a ~0.45 ms memory floor):
its per-step Python and the host sync it makes every step dominate. Here the prompt is
prefilled once (eager: its shape varies), then one compiled step (forward + token choice) is
replayed per token as a CUDA graph (`torch_compile: reduce-overhead`), its bookkeeping done on
the device, a CUDA event recorded after each step for the token times, and the host waits
once, at the end (and every `EOS_CHECK_EVERY` steps when answers may end early).

What it supports: greedy decoding and sampling (temperature, top-k, top-p), EOS with
min_new_tokens, left-padded batches. Not repetition_penalty or assisted generation (the config
refuses them with this loop).
"""

from __future__ import annotations

import inspect
from typing import Any

from lem_ray.backends.pytorch.fastpath import StaticCaches
from lem_ray.backends.pytorch.timing import StepClock

EOS_CHECK_EVERY = 32


def _choose(torch: Any, logits: Any, sampling: dict[str, Any] | None) -> Any:
    """Next token per row. Sampling without torch.multinomial (which CUDA graphs refuse):
    argmax of probs / Exp(1) noise draws from the same distribution."""
    if sampling is None:
        return torch.argmax(logits, dim=-1)
    logits = logits / sampling["temperature"]
    if sampling["top_k"]:
        kth = torch.topk(logits, sampling["top_k"], dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling["top_p"] < 1.0:
        ordered, index = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        # Drop a token once the tokens before it already reach top_p (the first always stays).
        drop = (cumulative - torch.softmax(ordered, dim=-1)) > sampling["top_p"]
        logits = logits.scatter(-1, index, ordered.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    noise = torch.empty_like(probs).exponential_(1)
    return torch.argmax(probs / noise, dim=-1)


class DecodeLoop:
    """Runs batches through the model's own forward with lem-ray's loop; one per engine."""

    def __init__(
        self, torch: Any, transformers: Any, model: Any, compile_mode: str | None,
        sampling: dict[str, Any] | None, eos_ids: set[int], pad_id: int,
    ) -> None:
        self._torch = torch
        self._model = model
        self._caches = StaticCaches(transformers, model.config)
        self._sampling = sampling
        self._out_device = model.get_output_embeddings().weight.device
        self._eos = torch.tensor(sorted(eos_ids), device=self._out_device)
        self._pad_id = pad_id
        self._takes_cache_position = "cache_position" in inspect.signature(model.forward).parameters
        self._longest = 0
        step = self._step
        if compile_mode is not None and model.device.type == "cuda":
            step = torch.compile(step, mode=compile_mode, fullgraph=False, dynamic=False)
        self._compiled = step
        self._cuda = model.device.type == "cuda"

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, cache_position: Any) -> Any:
        kwargs = {self._caches.argument: cache, "use_cache": True}
        if self._takes_cache_position:
            kwargs["cache_position"] = cache_position
        out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1].float()

    def _step(
        self, ids: Any, mask: Any, positions: Any, cache: Any, cache_position: Any,
        allow_eos: Any,
    ) -> Any:
        logits = self._forward(ids, mask, positions, cache, cache_position)
        logits[:, self._eos] = self._torch.where(
            allow_eos, logits[:, self._eos], self._torch.full_like(logits[:, self._eos], float("-inf"))
        )
        return _choose(self._torch, logits, self._sampling)

    def cache_len(self, input_len: int, max_new_tokens: int, reserve: int) -> int:
        """The longest prompt seen so far plus the longest answer: one length for all batches,
        so caches (and the graphs recorded against their addresses) are reused."""
        self._longest = max(self._longest, input_len)
        return self._longest + max(max_new_tokens, reserve)

    def run(
        self, input_ids: Any, attention_mask: Any, max_new_tokens: int, min_new_tokens: int,
        clock: StepClock, reserve_tokens: int,
    ) -> Any:
        """Generated token ids (batch x max_new_tokens; rows that ended hold pad after EOS)."""
        torch = self._torch
        batch, prompt_len = input_ids.shape
        cache_len = self.cache_len(prompt_len, max_new_tokens, reserve_tokens)
        device = input_ids.device
        mask = torch.ones(batch, cache_len, dtype=attention_mask.dtype, device=device)
        mask[:, :prompt_len] = attention_mask
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out_device = self._out_device
        out = torch.full((batch, max_new_tokens), self._pad_id, dtype=torch.long, device=out_device)
        finished = torch.zeros(batch, dtype=torch.bool, device=out_device)
        may_end_early = min_new_tokens < max_new_tokens
        with torch.inference_mode():
            cache = self._caches.for_batch(batch, cache_len)
            logits = self._forward(input_ids, mask, positions, cache,
                                   torch.arange(prompt_len, device=device))
            if min_new_tokens > 0:
                logits[:, self._eos] = float("-inf")
            token = _choose(torch, logits, self._sampling)
            clock(None, None)
            cur = token[:, None].clone()
            pos = positions[:, -1:].clone()
            cache_position = torch.tensor([prompt_len - 1], device=device)
            allow_eos = torch.tensor(min_new_tokens == 0, device=out_device)
            out[:, 0] = token
            finished |= torch.isin(token, self._eos)
            for step in range(1, max_new_tokens):
                pos += 1
                cache_position += 1
                if step == min_new_tokens:
                    # generate's rule: EOS may be the (min_new_tokens + 1)-th token at the earliest.
                    allow_eos.fill_(True)
                if self._cuda:
                    torch.compiler.cudagraph_mark_step_begin()
                token = self._compiled(cur, mask, pos, cache, cache_position, allow_eos)
                token = torch.where(finished, self._pad_id, token)
                clock(None, None)
                out[:, step] = token
                cur.copy_(token[:, None])
                finished |= torch.isin(token, self._eos)
                if may_end_early and step % EOS_CHECK_EVERY == 0 and bool(finished.all()):
                    break
        return out
