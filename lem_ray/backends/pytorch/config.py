"""PyTorch / transformers options, as `generate` and `from_pretrained` name them."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from typing_extensions import override

from lem_ray.config.base import BackendOptions, invalid_combination
from lem_ray.config.limits import MAX_PROMPTS


class PyTorchConfig(BackendOptions):
    """The experiment's `pytorch:` section: model loading, batching and the decoding path."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"batch_size", "batching_strategy", "max_tokens_per_batch"}
    )
    """Change between runs on a loaded model; every other field needs a new load."""
    EXPERIMENT_RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"max_input_tokens", "max_output_tokens", "min_output_tokens", "prompts", "decoder",
         "warmup"}
    )
    """The experiment's own fields that this backend applies per generate() call."""
    COMPILED_RUNTIME_FIELDS: ClassVar[frozenset[str]] = RUNTIME_FIELDS
    """Batching decides the batch shapes a compiled step is built for."""

    batch_size: int = Field(1, ge=1, le=MAX_PROMPTS, description="prompts per generate() call")
    batching_strategy: Literal["static", "sorted", "dynamic"] = Field(
        "static",
        description="static: prompts in file order; sorted: by length to cut padding; "
        "dynamic: sorted, and a batch closes early at max_tokens_per_batch padded tokens",
    )
    max_tokens_per_batch: int | None = Field(
        None, ge=1, description="padded input tokens per batch (dynamic batching only)"
    )
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    torch_compile: Literal["default", "reduce-overhead", "max-autotune"] | None = Field(
        None,
        description="with cache_implementation static: transformers compiles the decoding step "
        "(reduce-overhead: CUDA graphs, the fast path); compiled and captured at load time",
    )
    cache_implementation: Literal["dynamic", "static"] = Field(
        "dynamic", description="static without torch_compile: eager decode over a static cache"
    )
    compile_prefill: bool = Field(
        False,
        description="compiled loop only: compile the prompt's forward too (dynamic shapes), "
        "so TTFT is not the host's eager kernel launches; adds ~1-3 min to each load",
    )
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    assistant_model: str | None = Field(
        None, description="hub id or path of a draft model for assisted generation"
    )

    @property
    def compiled_loop(self) -> bool:
        """torch_compile over a static cache runs lem-ray's compiled decode loop, not generate()."""
        return self.torch_compile is not None and self.cache_implementation == "static"

    def runtime_fields(self) -> tuple[frozenset[str], frozenset[str]]:
        """The compiled loop bakes decoder and output length in at load, and its static cache
        is sized by the first prompts it sees: of the experiment's fields only the warmup
        changes on a loaded one. Batching does: the loop keeps a static cache and a captured
        graph per batch shape, and prepare() captures the shapes a run's batches make."""
        if self.compiled_loop:
            return self.RUNTIME_FIELDS, frozenset({"warmup"})
        return super().runtime_fields()

    @property
    @override
    def concurrency(self) -> int:
        return self.batch_size

    @override
    def conflict_with(self, experiment: Any) -> str | None:
        if self.compiled_loop and experiment.decoder.repetition_penalty != 1.0:
            return ("decoder.repetition_penalty: not supported by lem-ray's compiled decode loop "
                    "(pytorch.torch_compile with cache_implementation 'static'); leave it at 1.0")
        return None

    @model_validator(mode="after")
    def _rules(self) -> PyTorchConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise invalid_combination(
                "pytorch.load_in_4bit and pytorch.load_in_8bit are exclusive"
            )
        if self.max_tokens_per_batch is not None and self.batching_strategy != "dynamic":
            raise invalid_combination(
                "pytorch.max_tokens_per_batch only applies to batching_strategy 'dynamic'"
            )
        if self.torch_compile == "reduce-overhead" and self.cache_implementation != "static":
            raise invalid_combination(
                "pytorch.torch_compile 'reduce-overhead' (CUDA graphs) needs "
                "cache_implementation 'static': graphs replay fixed shapes only"
            )
        if self.compiled_loop and self.attn_implementation == "flash_attention_2":
            raise invalid_combination(
                "pytorch.attn_implementation 'flash_attention_2': lem-ray's compiled decode loop "
                "passes a 4D attention mask, which needs 'sdpa' or 'eager'"
            )
        if self.compile_prefill and not self.compiled_loop:
            raise invalid_combination(
                "pytorch.compile_prefill: only with lem-ray's compiled decode loop "
                "(torch_compile with cache_implementation 'static')"
            )
        if self.compiled_loop and self.assistant_model is not None:
            raise invalid_combination(
                "pytorch.assistant_model: not with lem-ray's compiled decode loop "
                "(torch_compile with cache_implementation 'static')"
            )
        if self.assistant_model is not None and self.batch_size != 1:
            raise invalid_combination(
                "pytorch.assistant_model: transformers' assisted generation needs batch_size 1"
            )
        return self
