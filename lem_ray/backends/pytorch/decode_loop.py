"""lem-ray's compiled decode loop: static KV cache, one decode step captured as a CUDA graph.

Why not generate(): on an H200, transformers' own compiled static-cache generate tops out at
~280-345 tok/s for a 1 B model at batch 1 (~3 ms a step against a ~0.45 ms memory floor):
its per-step Python and the host sync it makes every step dominate. Inductor's cudagraph
trees (torch.compile mode reduce-overhead) still leave ~2 ms of host work per step on that
machine (480-530 tok/s measured). Here the prompt is prefilled once (eager, or compiled with
dynamic shapes under pytorch.compile_prefill: its shape varies), then one decode step (the
compiled forward, token choice, and all bookkeeping: positions, the attention mask, EOS,
writing the token out) is captured once per batch shape as a CUDA graph whose inputs are
buffers it owns, so a step costs the host one `graph.replay()` and one CUDA event. The host
waits once, at the end (and every `EOS_CHECK_EVERY` steps when answers may end early).

What it supports: greedy decoding and sampling (temperature, top-k, top-p), EOS with
min_new_tokens, left-padded batches, sdpa or eager attention. Not repetition_penalty or
assisted generation (the config refuses them with this loop).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from lem_ray.backends.pytorch.fastpath import StaticCaches
from lem_ray.backends.pytorch.timing import StepClock

EOS_CHECK_EVERY = 32
# Runs before capture, on a side stream: compilation, autotuning and lazy allocations happen
# there, never inside the graph.
WARM_STEPS = 3
# Steps the warm-up and capture write past the prompt: room kept in the cache and the output.
SPARE = WARM_STEPS + 1
COMPILE_MODES = {"default": "default", "reduce-overhead": "default",
                 "max-autotune": "max-autotune-no-cudagraphs"}
# With coordinate-descent tuning on, Inductor turns each batch-1 matmul into a tuned Triton
# reduction instead of a cuBLAS GEMV; combo kernels launch independent kernels (the q, k and v
# reductions over one input) as one: 204 kernels a step instead of 293. One H200, llama-1b at
# batch 1 (bench/profile_decode.py, one compile each): cuBLAS 1.69-1.71 ms a step, tuned
# 1.37-1.67, tuned with combo kernels 1.15-1.36. The tuning picks each kernel's launch
# configuration by timing it, and picks differently from one compile to the next: the spread.
# It changes only how kernels run, so it applies to the compiled step alone and is recorded in
# the backend's details.
INDUCTOR_TUNING = {"coordinate_descent_tuning": True, "combo_kernels": True}
# Dynamo compiles the step once per batch shape and loop (dynamic=False), and past its default
# of 8 compilations of one function it would run the step eagerly inside the graph, silently
# ~1.7x slower (bench/profile_decode.py). A worker keeping several engines meets more shapes
# than that: allow many, and fail loudly rather than fall back if even those run out.
DYNAMO_LIMITS = {"recompile_limit": 64, "fail_on_recompile_limit_hit": True}


def choose_tokens(torch: Any, logits: Any, sampling: dict[str, Any] | None) -> Any:
    """Next token per row. Sampling without torch.multinomial (which syncs with the host):
    argmax of probs / Exp(1) noise draws from the same distribution."""
    if sampling is None:
        return torch.argmax(logits, dim=-1)
    logits = logits / sampling["temperature"]
    if sampling["top_k"]:
        kth = torch.topk(logits, sampling["top_k"], dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling["top_p"] < 1.0:
        ordered, index = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(ordered, dim=-1)
        # Drop a token once the tokens before it already reach top_p (the first always stays).
        drop = (probs.cumsum(dim=-1) - probs) > sampling["top_p"]
        logits = logits.scatter(-1, index, ordered.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    noise = torch.empty_like(probs).exponential_(1)
    return torch.argmax(probs / noise, dim=-1)


class _State:
    """Buffers of one batch shape that the captured step reads and writes in place."""

    def __init__(self, torch: Any, batch: int, cache_len: int, max_new: int, cache: Any,
                 in_device: Any, out_device: Any) -> None:
        long = torch.long
        self.cache = cache
        self.cache_len = cache_len
        self.cur = torch.zeros(batch, 1, dtype=long, device=in_device)
        self.pos = torch.zeros(batch, 1, dtype=long, device=in_device)
        self.cache_position = torch.zeros(1, dtype=long, device=in_device)
        self.keys = torch.arange(cache_len, device=in_device)
        self.pad = torch.ones(batch, cache_len, dtype=torch.bool, device=in_device)
        self.step = torch.zeros(1, dtype=long, device=out_device)
        self.allow_eos = torch.zeros((), dtype=torch.bool, device=out_device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=out_device)
        self.out = torch.zeros(batch, max_new + SPARE, dtype=long, device=out_device)
        self.graph: Any = None


class DecodeLoop:
    """Runs batches through the model's own forward with lem-ray's loop; one per engine."""

    def __init__(
        self, torch: Any, transformers: Any, model: Any, compile_mode: str,
        sampling: dict[str, Any] | None, eos_ids: set[int], pad_id: int, max_new_tokens: int,
        compile_prefill: bool = False,
    ) -> None:
        self._torch = torch
        self._model = model
        self._caches = StaticCaches(transformers, model.config)
        self._sampling = sampling
        self._in_device = model.get_input_embeddings().weight.device
        self._out_device = model.get_output_embeddings().weight.device
        self._eos = torch.tensor(sorted(eos_ids), device=self._out_device)
        self._pad_id = pad_id
        self._dtype = model.dtype
        self._max_new = max_new_tokens
        self._takes_cache_position = "cache_position" in inspect.signature(model.forward).parameters
        self._longest = 0
        self._states: dict[tuple[int, int], _State] = {}
        self._cuda = self._in_device.type == "cuda"
        # A graph records one device's stream: a model split over GPUs runs compiled, ungraphed.
        self._graphs_on = self._cuda and self._in_device == self._out_device
        self._advance = self._step_body
        self._prefill_forward: Callable[..., Any] = self._forward
        if self._cuda:
            from torch._dynamo import config as dynamo_config
            from torch._inductor import config as inductor_config

            compiled = torch.compile(
                self._step_body, mode=COMPILE_MODES[compile_mode], fullgraph=False, dynamic=False)

            def advance(s: _State) -> None:
                # Both read their config when they compile (the first calls of each shape).
                with inductor_config.patch(INDUCTOR_TUNING), dynamo_config.patch(DYNAMO_LIMITS):
                    compiled(s)

            self._advance = advance
            if compile_prefill:
                # Eager, the prompt's forward is the host launching every kernel: ~25 ms of a
                # 128-token prompt's TTFT at batch 1 on an H200. Compiled with dynamic shapes,
                # one compile serves every prompt length (Dynamo adds one for length or batch 1,
                # and one for the cache's first use: prepare() meets them before any window).
                prefill = torch.compile(self._forward, dynamic=True, fullgraph=False)

                def prefill_forward(*args: Any) -> Any:
                    with dynamo_config.patch(DYNAMO_LIMITS):
                        return prefill(*args)

                self._prefill_forward = prefill_forward

    @property
    def inductor_tuning(self) -> dict[str, bool]:
        """The inductor settings the loop compiles with (none on CPU), for the run's details."""
        return dict(INDUCTOR_TUNING) if self._cuda else {}

    @property
    def graphs(self) -> int:
        """CUDA graphs captured so far (one per batch shape): 0 means nothing runs as a graph."""
        return sum(s.graph is not None for s in self._states.values())

    def _mask(self, allowed: Any) -> Any:
        """An additive 4D mask (0 where attended, the dtype's minimum elsewhere): transformers
        uses a 4D mask as given, with no data-dependent checks a graph could not capture."""
        torch = self._torch
        zero = torch.zeros((), dtype=self._dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(self._dtype).min)

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, cache_position: Any) -> Any:
        kwargs = {self._caches.argument: cache, "use_cache": True}
        if self._takes_cache_position:
            kwargs["cache_position"] = cache_position
        out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1].float()

    def _no_early_eos(self, logits: Any, allow: Any) -> Any:
        torch = self._torch
        blocked = torch.full_like(logits[:, self._eos], float("-inf"))
        logits[:, self._eos] = torch.where(allow, logits[:, self._eos], blocked)
        return logits

    def _step_body(self, s: _State) -> None:
        """One token for every row, everything in place on the state's buffers."""
        torch = self._torch
        s.pos.add_(1)
        s.cache_position.add_(1)
        allowed = s.pad[:, None, None, :] & (s.keys <= s.cache_position)[None, None, None, :]
        logits = self._forward(s.cur, self._mask(allowed), s.pos, s.cache, s.cache_position)
        token = choose_tokens(torch, self._no_early_eos(logits, s.allow_eos), self._sampling)
        token = torch.where(s.finished, self._pad_id, token)
        s.out.index_copy_(1, s.step, token[:, None])
        s.step.add_(1)
        s.cur.copy_(token[:, None])
        s.finished |= torch.isin(token, self._eos)

    def _state(self, batch: int, prompt_len: int) -> _State:
        """The buffers (and graph) for this batch size; one cache length for all batches (the
        longest prompt seen plus the answer), so states and graphs are reused."""
        self._longest = max(self._longest, prompt_len)
        cache_len = self._longest + self._max_new + SPARE
        key = (batch, cache_len)
        if key not in self._states:
            cache = self._caches.for_batch(batch, cache_len)
            self._states[key] = _State(self._torch, batch, cache_len, self._max_new, cache,
                                       self._in_device, self._out_device)
        return self._states[key]

    def _prefill(self, s: _State, input_ids: Any, attention_mask: Any, min_new: int) -> None:
        """The prompt through the model (eager), its first token, and the step buffers set."""
        torch = self._torch
        prompt_len = input_ids.shape[1]
        s.cache.reset()
        s.pad.fill_(True)
        s.pad[:, :prompt_len] = attention_mask.bool()
        queries = torch.arange(prompt_len, device=self._in_device)
        allowed = s.pad[:, None, None, :] & (s.keys[None, :] <= queries[:, None])[None, None]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = self._prefill_forward(input_ids, self._mask(allowed), positions, s.cache, queries)
        s.allow_eos.fill_(min_new == 0)
        token = choose_tokens(torch, self._no_early_eos(logits, s.allow_eos), self._sampling)
        s.out.fill_(self._pad_id)
        s.out[:, 0] = token
        s.step.fill_(1)
        s.cur.copy_(token[:, None])
        s.pos.copy_(positions[:, -1:])
        s.cache_position.fill_(prompt_len - 1)
        s.finished.copy_(torch.isin(token, self._eos))

    def _capture(self, s: _State) -> None:
        """Warm the compiled step on a side stream, then record it as a graph. The warm steps
        write into the cache past the prompt; the next prefill resets the cache."""
        torch = self._torch
        side = torch.cuda.Stream(device=self._in_device)
        side.wait_stream(torch.cuda.current_stream(self._in_device))
        with torch.cuda.stream(side):
            for _ in range(WARM_STEPS):
                self._advance(s)
        torch.cuda.current_stream(self._in_device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._advance(s)
        s.graph = graph

    def run(
        self, input_ids: Any, attention_mask: Any, max_new_tokens: int, min_new_tokens: int,
        clock: StepClock,
    ) -> Any:
        """Generated token ids (batch x max_new_tokens; rows that ended hold pad after EOS)."""
        torch = self._torch
        batch, prompt_len = input_ids.shape
        with torch.inference_mode():
            s = self._state(batch, prompt_len)
            if self._graphs_on and s.graph is None:
                self._prefill(s, input_ids, attention_mask, min_new_tokens)
                self._capture(s)
            self._prefill(s, input_ids, attention_mask, min_new_tokens)
            clock(None, None)
            may_end_early = min_new_tokens < max_new_tokens
            for step in range(1, max_new_tokens):
                if step == min_new_tokens:
                    # generate's rule: EOS may be the (min_new_tokens + 1)-th token at the earliest.
                    s.allow_eos.fill_(True)
                if s.graph is not None:
                    s.graph.replay()
                else:
                    self._advance(s)
                clock(None, None)
                if may_end_early and step % EOS_CHECK_EVERY == 0 and bool(s.finished.all()):
                    break
            return s.out[:, :max_new_tokens].clone()
