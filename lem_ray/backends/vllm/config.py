"""vLLM engine options, named as `vllm.LLM(...)` / `EngineArgs` name them."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from typing_extensions import override

from lem_ray.backends.parallel import ModelParallelOptions
from lem_ray.backends.traffic import TrafficConfig
from lem_ray.config.base import StrictModel, invalid_combination
from lem_ray.config.limits import MAX_PROMPTS

# vLLM 0.26.0's CUDA attention backends (FlashAttention, Triton, FlexAttention) take KV-cache
# blocks in multiples of 16 tokens (their get_supported_kernel_block_sizes: MultipleOf(16),
# vllm/v1/attention/backends/*.py); with any other size no backend is valid and the engine
# fails at start. (Releases up to about 0.11 capped it at 32 instead.)
CUDA_BLOCK_MULTIPLE = 16


class SpeculativeConfig(StrictModel):
    """vLLM's speculative decoding: a draft model or n-gram lookup proposing tokens."""

    method: str | None = Field(None, description="e.g. ngram, eagle, eagle3, medusa, mtp")
    model: str | None = Field(None, description="draft model id or path")
    num_speculative_tokens: int = Field(..., ge=1)
    prompt_lookup_max: int | None = Field(None, ge=1, description="ngram only")
    prompt_lookup_min: int | None = Field(None, ge=1, description="ngram only")


class LoRAConfig(StrictModel):
    """One LoRA adapter, applied to every request of the run."""

    path: str = Field(..., description="local path of the adapter applied to every request")
    # The ranks vLLM accepts in every version from 0.8 (it also takes 1 from 0.12).
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256, 320, 512] = 16


class VLLMConfig(ModelParallelOptions):
    """The experiment's `vllm:` section: vllm.LLM's arguments, traffic and token timing."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"traffic", "token_timing"})
    """How requests arrive and how they are timed; every other field is an argument of
    vllm.LLM(...)."""
    EXPERIMENT_RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"min_output_tokens", "prompts", "decoder", "warmup"}
    )
    """Per-request SamplingParams; max_input/output_tokens size max_model_len, so they are not."""

    max_num_seqs: int = Field(256, ge=1, le=MAX_PROMPTS)
    max_num_batched_tokens: int | None = Field(None, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enable_prefix_caching: bool = Field(
        False,
        description="off by default: the warmup and prefill windows resend the measured "
        "prompts, so a prefix cache would turn their prefill into cache hits; when on, the "
        "cache is reset before every window",
    )
    enable_chunked_prefill: bool | None = Field(None, description="None keeps vLLM's default")
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    block_size: Literal[8, 16, 32, 64, 128] | None = None
    max_model_len: int | None = Field(None, ge=1)
    enforce_eager: bool = False
    # vLLM's QuantizationMethods names. "marlin" went in 0.10.1; "bitsandbytes" went in 0.28
    # but is kept, as valid for vLLM 0.8 to 0.27.
    quantization: (
        Literal["awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors", "awq_marlin",
                "gptq_marlin", "experts_int8", "modelopt"]
        | None
    ) = None
    speculative: SpeculativeConfig | None = None
    lora: LoRAConfig | None = None
    traffic: TrafficConfig = Field(
        default_factory=TrafficConfig,
        description="how the measured window's requests arrive (warmup and prefill: offline)",
    )
    token_timing: Literal["per_token", "per_request"] = Field(
        "per_token",
        description="how the measured window is run and timed. per_token: the engine is "
        "driven step by step with DELTA outputs, every token keeps vLLM's engine-core stamp "
        "(the full inter-token gap distribution; what every traffic mode needs). "
        "per_request (offline traffic only): one plain LLM.generate call, as a user runs "
        "it, each request timed from its final stats (TTFT, e2e, mean inter-token gap; no "
        "gap percentiles)",
    )
    extra_engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to vllm.LLM as keyword arguments, for options not modelled here",
    )

    @model_validator(mode="after")
    def _rules(self) -> VLLMConfig:
        if self.block_size is not None and self.block_size % CUDA_BLOCK_MULTIPLE:
            raise invalid_combination(
                f"vllm.block_size {self.block_size}: vLLM's attention backends on CUDA GPUs "
                f"need a multiple of {CUDA_BLOCK_MULTIPLE}"
            )
        if self.token_timing == "per_request":
            if self.traffic.mode != "offline":
                raise invalid_combination(
                    f"vllm.token_timing per_request times one LLM.generate call, which sends "
                    f"every request at once; vllm.traffic.mode {self.traffic.mode} needs "
                    f"per_token"
                )
            if self.extra_engine_args.get("disable_log_stats"):
                raise invalid_combination(
                    "vllm.token_timing per_request reads vLLM's per-request stats, which "
                    "vllm.extra_engine_args.disable_log_stats: true turns off"
                )
        return self

    @property
    @override
    def concurrency(self) -> int:
        return self.max_num_seqs
