"""Pure translations between lem-ray's config / records and vLLM's API; no vLLM import here.

Kept apart from the backend class so they can be tested on machines without vLLM or a GPU.
Facts about vLLM these rely on are cited next to the code, with the versions they hold for.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from lem_ray.assets import resolve_model
from lem_ray.backends.vllm.config import VLLMConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.records import RequestRecord

LORA_NAME = "lem-ray-adapter"

# What the engine resolved, read back from `LLM.llm_engine.vllm_config` after start: these
# are VllmConfig's sections and field names (vllm/config/*.py); a field a version lacks is
# left out. vLLM overrides some requests (chunked prefill, prefix caching per model,
# max_num_batched_tokens), so the row keeps these beside the config that was asked for.
RESOLVED_FIELDS: dict[str, tuple[str, ...]] = {
    "model_config": ("model", "dtype", "max_model_len", "enforce_eager", "seed",
                     "quantization"),
    "cache_config": ("block_size", "enable_prefix_caching", "cache_dtype",
                     "gpu_memory_utilization", "num_gpu_blocks"),
    "scheduler_config": ("max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill",
                         "async_scheduling"),
    "parallel_config": ("tensor_parallel_size", "pipeline_parallel_size",
                        "distributed_executor_backend", "world_size"),
    # "level" is "mode" before vLLM 0.11; 0.26.0 has only "mode".
    "compilation_config": ("mode", "level", "cudagraph_mode", "max_cudagraph_capture_size"),
}


class Tokenizer(Protocol):
    """The one tokenizer call the translation needs, so tests pass any object with it."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""


def engine_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)`, which passes the non-explicit ones to EngineArgs.

    Options left None are omitted so vLLM's own (version- and hardware-dependent) defaults apply.
    `extra_engine_args` is merged last and so may override anything set here.

    Executor: the worker actor runs inside the run's placement group, whose one bundle holds
    all the run's GPUs. Left to choose, vLLM (ParallelConfig.__post_init__) picks its Ray
    executor whenever it finds itself in a placement group, and that executor wants one GPU
    per bundle, so tensor or pipeline parallel > 1 failed at start. lem-ray names the
    executor instead: "mp" (one process per rank, on this node) when the run has several
    GPUs, which Ray has already made the actor's CUDA_VISIBLE_DEVICES, and "uni" (vLLM's
    own choice for one GPU) otherwise.
    """
    options: VLLMConfig = config.vllm
    kwargs: dict[str, Any] = {
        "model": resolve_model(config.model_name),
        "tokenizer": resolve_model(config.tokenizer or config.model_name),
        "dtype": config.fp_precision,
        # "dummy" is vLLM's own loader that builds the architecture with random weights.
        "load_format": config.load_format,
        "seed": config.random_seed,
        "tensor_parallel_size": options.tensor_parallel_size,
        "pipeline_parallel_size": options.pipeline_parallel_size,
        "max_num_seqs": options.max_num_seqs,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "kv_cache_dtype": options.kv_cache_dtype,
        "max_model_len": options.max_model_len
        or config.max_input_tokens + config.max_output_tokens,
        "enforce_eager": options.enforce_eager,
        "distributed_executor_backend": "mp" if options.parallel_gpus > 1 else "uni",
        "enable_prefix_caching": options.enable_prefix_caching,
        # LLM() defaults this to True (0.26.0: entrypoints/llm.py, `if "disable_log_stats"
        # not in kwargs`), and then RequestOutput.metrics is None: V1 keeps a request's
        # RequestStateStats only with stats on (v1/engine/output_processor.py, `self.stats =
        # RequestStateStats(...) if log_stats else None`, handed out as `metrics=self.stats`),
        # from vLLM 0.12; V0 (vLLM <= 0.10) fills them either way. The measured window's
        # TTFT and inter-token gaps come from these stats (arrivals.EngineTimes).
        "disable_log_stats": False,
    }
    optional = {
        "max_num_batched_tokens": options.max_num_batched_tokens,
        "enable_chunked_prefill": options.enable_chunked_prefill,
        "block_size": options.block_size,
        "quantization": options.quantization,
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if options.speculative is not None:
        # The dict form of EngineArgs.speculative_config (vLLM >= 0.8); keys are
        # SpeculativeConfig's own field names.
        spec = options.speculative.model_dump(exclude_none=True)
        if "model" in spec:
            spec["model"] = resolve_model(spec["model"])
        kwargs["speculative_config"] = spec
    if options.lora is not None:
        kwargs.update(enable_lora=True, max_lora_rank=options.lora.max_lora_rank)
    kwargs.update(options.extra_engine_args)
    return kwargs


def sampling_params_kwargs(config: ExperimentConfig, top_k_off: int = 0) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams(...)`.

    `top_k_off` is the installed vLLM's "no top-k" value: -1 in 0.8.x (0 is rejected
    there), 0 from 0.9 (which still quietly accepts -1). The backend reads it from
    `SamplingParams().top_k`, whose default is that value in every version.

    Greedy decoding is temperature 0, with top-k/top-p neutral: vLLM resets them under
    greedy anyway, so these kwargs show what really runs. EOS is honoured (no ignore_eos);
    min_tokens is what keeps EOS away until the minimum is reached.

    No per-request `seed`: V1 samples seeded requests one by one with their own generator
    ("This can be slow", v1/sample/ops/topk_topp_sampler.py `random_sample`), which would
    put a cost into the measurement that unseeded serving never pays. The engine-wide
    `seed` from engine_kwargs seeds vLLM's sampler instead.
    """
    decoder = config.decoder
    kwargs: dict[str, Any] = {
        "max_tokens": config.max_output_tokens,
        "min_tokens": config.min_output_tokens,
        "repetition_penalty": decoder.repetition_penalty,
    }
    if decoder.do_sample:
        kwargs.update(
            temperature=decoder.temperature,
            top_k=decoder.top_k if decoder.top_k > 0 else top_k_off,
            top_p=decoder.top_p,
        )
    else:
        kwargs.update(temperature=0.0, top_k=top_k_off, top_p=1.0)
    return kwargs


def engine_args(config: ExperimentConfig) -> dict[str, Any]:
    """What the backend hands vLLM, computed without vLLM (for `campaign --dry-run`).

    Sampling uses top_k 0 for "no top-k", vLLM's value from 0.9 on; on 0.8.x the backend
    passes -1, read from the installed SamplingParams.
    """
    traffic = config.vllm.traffic
    arrival = "every request before the first step" if traffic.mode == "offline" else (
        "each request at its arrival time")
    if config.vllm.token_timing == "per_request":
        measured = {
            "call": "LLM.generate, every request at once (its own output_kind FINAL_ONLY), "
                    "each request timed from its final RequestStateStats",
            "sampling_kwargs": sampling_params_kwargs(config),
        }
    else:
        measured = {
            "call": f"LLM.llm_engine.add_request, {arrival}, then step() until done",
            "sampling_kwargs": {**sampling_params_kwargs(config), "output_kind": "DELTA"},
        }
    return {
        "library": "vllm",
        "constructor": {"call": "vllm.LLM", "kwargs": engine_kwargs(config)},
        "sampling": {"call": "vllm.SamplingParams", "kwargs": sampling_params_kwargs(config)},
        "prefix_cache": prefix_cache_policy(config),
        "traffic": traffic.model_dump(),
        "warmup_and_prefill": "LLM.generate",
        "token_timing": config.vllm.token_timing,
        "measured_window": measured,
    }


def prefix_cache_policy(config: ExperimentConfig) -> str:
    """Recorded with every row: how the prefix cache was kept from measuring cache hits."""
    return "reset before each window" if config.vllm.enable_prefix_caching else "off"


def _plain(value: Any) -> Any:
    """A JSON-able form of a config value (torch.dtype, enums, classes become names)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return str(value)


def resolved_engine_config(vllm_config: Any) -> dict[str, dict[str, Any]]:
    """The settings the engine runs with, from its VllmConfig (see RESOLVED_FIELDS)."""
    resolved: dict[str, dict[str, Any]] = {}
    for section_name, names in RESOLVED_FIELDS.items():
        section = getattr(vllm_config, section_name, None)
        if section is None:
            continue
        values = {n: _plain(getattr(section, n)) for n in names if hasattr(section, n)}
        if values:
            resolved[section_name] = values
    return resolved


def truncated_token_ids(
    tokenizer: Tokenizer, prompts: Iterable[str], max_input_tokens: int
) -> list[list[int]]:
    """Token ids of each prompt, cut to its first `max_input_tokens` tokens.

    Sending token ids (vLLM's TokensPrompt, `{"prompt_token_ids": [...]}`) instead of text
    makes the input length exactly what is recorded, and vLLM does not re-tokenize them.
    Keeping the head keeps the BOS token the tokenizer adds.
    """
    return [tokenizer.encode(prompt)[:max_input_tokens] for prompt in prompts]


def _v1_timings(stats: Any) -> tuple[float, float] | None:
    """(ttft_s, e2e_s) from V1's RequestStateStats (vllm/v1/metrics/stats.py, vLLM >= 0.12;
    0.26.0: the dataclass at line 218, filled by IterationStats.update_from_output).

    Its clocks differ: arrival_time is the frontend's wall clock (time.time()), the *_ts
    fields are the engine core's time.monotonic(), maybe in another process. Only
    same-clock differences are used: first_token_latency (frontend: first token seen minus
    arrival) and last_token_ts - first_token_ts (engine core: the decode span).
    """
    if stats.first_token_ts <= 0.0 or stats.first_token_latency <= 0.0:
        return None
    ttft = stats.first_token_latency
    return ttft, ttft + (stats.last_token_ts - stats.first_token_ts)


def _v0_timings(metrics: Any) -> tuple[float, float] | None:
    """(ttft_s, e2e_s) from V0's RequestMetrics (vllm/sequence.py, vLLM <= 0.10).

    All of its times are the engine's time.time(); finished_time is stamped when the
    finished RequestOutput is built, last_token_time is the fallback where it is unset.
    """
    if metrics.first_token_time is None:
        return None
    end = metrics.finished_time if metrics.finished_time is not None else metrics.last_token_time
    return metrics.first_token_time - metrics.arrival_time, end - metrics.arrival_time


def mean_gap_ms(metrics: Any, output_tokens: int) -> float | None:
    """A request's mean inter-token gap from V1's final RequestStateStats: its engine core's
    first and last token stamps (one clock), (last - first) / (output_tokens - 1). This is
    the mean of the per-token gaps the step-driven window would have recorded (a step that
    makes several tokens gives gaps of 0 there). None without V1 stats or a second token."""
    if metrics is None or output_tokens < 2 or not hasattr(metrics, "first_token_ts"):
        return None
    if metrics.first_token_ts <= 0.0:
        return None
    return (metrics.last_token_ts - metrics.first_token_ts) / (output_tokens - 1) * 1e3


def request_timings(metrics: Any) -> tuple[float, float] | None:
    """(ttft_s, e2e_s) of one request from `RequestOutput.metrics`, or None when unknown.

    The shape tells the engine apart: V1's RequestStateStats has `first_token_ts`, V0's
    RequestMetrics has `first_token_time`. None (stats disabled, or V1 before 0.12, which
    never filled it) or no first token yet gives None.
    """
    if metrics is None:
        return None
    if hasattr(metrics, "first_token_ts"):
        return _v1_timings(metrics)
    if hasattr(metrics, "first_token_time"):
        return _v0_timings(metrics)
    return None


def records_from_outputs(
    outputs: Sequence[Any],
    prompt_token_counts: Sequence[int],
    batch_start_s: float,
    batch_end_s: float,
) -> list[RequestRecord]:
    """One RequestRecord per vLLM RequestOutput, in prompt order (LLM.generate keeps it).

    TTFT and end-to-end latency come from the engine's per-request metrics. Where those are
    missing, ttft_ms is None and e2e_ms is what the caller observed: LLM.generate hands
    every output back at once, so each request's caller-side latency is the batch's
    `batch_end_s - batch_start_s` (perf_counter seconds).

    itl_ms stays empty: LLM.generate hands back only the final output, whose
    RequestStateStats holds the first and last token's times, not each one's; itl_mean_ms
    is their mean gap (mean_gap_ms). These records are the warmup and prefill windows', and
    the measured window's under `vllm.token_timing: per_request`; under per_token the
    measured window's come from the engine driven step by step (arrivals.py), which keeps
    every token's time.
    """
    if len(outputs) != len(prompt_token_counts):
        raise ValueError(
            f"vLLM returned {len(outputs)} outputs for {len(prompt_token_counts)} prompts"
        )
    batch_ms = (batch_end_s - batch_start_s) * 1000.0
    records = []
    for index, (output, input_tokens) in enumerate(zip(outputs, prompt_token_counts)):
        timings = request_timings(output.metrics)
        output_tokens = len(output.outputs[0].token_ids)
        records.append(
            RequestRecord(
                index=index,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                e2e_ms=timings[1] * 1000.0 if timings else batch_ms,
                ttft_ms=timings[0] * 1000.0 if timings else None,
                start_s=batch_start_s,
                itl_mean_ms=mean_gap_ms(output.metrics, output_tokens) if timings else None,
            )
        )
    return records
