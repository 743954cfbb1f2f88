"""TensorRT-LLM options, named as its LLM API (`tensorrt_llm.LLM`, BuildConfig) names them."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator
from typing_extensions import override

from lem_ray.backends.parallel import ModelParallelOptions
from lem_ray.backends.traffic import TrafficConfig
from lem_ray.config.base import invalid_combination
from lem_ray.config.limits import MAX_PROMPTS

# ModelOpt calibrates activation scales for these on a dataset; weight-only ones need none.
CALIBRATED_QUANTIZATIONS = frozenset({"fp8", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4"})


class TensorRTConfig(ModelParallelOptions):
    """The experiment's `tensorrt:` section: engine build settings, parallelism and traffic."""

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset()
    """Every field here is a build or LLM(...) argument: a change needs a new engine."""
    EXPERIMENT_RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"min_output_tokens", "prompts", "decoder", "warmup"}
    )
    """Per-request SamplingParams; max_input/output_tokens size the built engine, so they are
    not."""

    runtime: Literal["engine", "pytorch"] = Field(
        "engine",
        description="engine: TensorRT-LLM's TensorRT backend, which compiles TensorRT engines "
        "(the default LLM before 1.0, tensorrt_llm._tensorrt_engine.LLM in 1.x); pytorch: its "
        "PyTorch backend (the default LLM since 1.0, the only one once engines were removed)",
    )
    engine_dir: str | None = Field(
        None,
        description="a prebuilt engine to load (your choice wins: the campaign's compile cache "
        "is not used); unset, the engine comes from the compile cache or is built",
    )
    engine_cache_dir: str | None = Field(
        None,
        description="your own folder for built engines, one per model and build settings, in "
        "place of the campaign's compile cache (execution.compile_cache), which keeps them "
        "when this and engine_dir are unset",
    )
    force_rebuild: bool = Field(
        False, description="build even when engine_cache_dir holds the engine"
    )
    max_batch_size: int = Field(8, ge=1, le=MAX_PROMPTS)
    max_input_len: int | None = Field(None, ge=1, description="defaults to max_input_tokens")
    max_seq_len: int | None = Field(
        None, ge=1, description="prompt + output; defaults to max_input_len + max_output_tokens"
    )
    max_num_tokens: int | None = Field(
        None, ge=1, description="tokens per engine step; None keeps TensorRT-LLM's default"
    )
    quantization: (
        Literal["fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "nvfp4"] | None
    ) = Field(
        None,
        description="ModelOpt format names; engine runtime only; all but the weight-only "
        "int8_wo and int4_wo calibrate on a dataset",
    )
    calib_dataset: str | None = Field(
        None,
        description="local path of the calibration dataset for quantizations that calibrate "
        "(fp8, int8_sq, int4_awq, w4a8_awq, nvfp4, an fp8/int8 KV cache); unset, TensorRT-LLM "
        "downloads cnn_dailymail, which an offline node cannot",
    )
    kv_cache_dtype: Literal["auto", "fp8", "int8"] = "auto"
    kv_cache_free_gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    enable_chunked_context: bool = False
    enable_kv_cache_reuse: bool = False
    traffic: TrafficConfig = Field(
        default_factory=TrafficConfig,
        description="how the measured window's requests arrive (warmup and prefill: offline); "
        "the steady window's 'engine full' is max_batch_size requests in flight",
    )

    @model_validator(mode="after")
    def _rules(self) -> TensorRTConfig:
        if self.traffic.mode == "trace":
            raise invalid_combination("tensorrt.traffic: trace replay is implemented for vllm only")
        if self.engine_dir is not None and self.engine_cache_dir is not None:
            raise invalid_combination("tensorrt.engine_dir and engine_cache_dir are exclusive")
        if self.force_rebuild and self.engine_cache_dir is None:
            raise invalid_combination("tensorrt.force_rebuild only applies with engine_cache_dir")
        if self.engine_dir is not None and (
            self.quantization is not None or self.kv_cache_dtype != "auto"
            or self.calib_dataset is not None
        ):
            raise invalid_combination(
                "tensorrt.quantization, kv_cache_dtype and calib_dataset are built into a "
                "prebuilt engine_dir"
            )
        if self.calib_dataset is not None and not self.needs_calibration:
            raise invalid_combination(
                "tensorrt.calib_dataset only applies to a quantization that calibrates "
                f"({', '.join(sorted(CALIBRATED_QUANTIZATIONS))}) or an fp8/int8 KV cache"
            )
        if self.runtime == "pytorch":
            engine_only = [
                name
                for name, is_set in (
                    ("engine_dir", self.engine_dir is not None),
                    ("engine_cache_dir", self.engine_cache_dir is not None),
                    ("force_rebuild", self.force_rebuild),
                    ("quantization", self.quantization is not None),
                    ("calib_dataset", self.calib_dataset is not None),
                    ("kv_cache_dtype int8", self.kv_cache_dtype == "int8"),
                )
                if is_set
            ]
            if engine_only:
                raise invalid_combination(
                    f"tensorrt.runtime pytorch builds no engine and reads quantization from the "
                    f"checkpoint; not applicable: {', '.join(engine_only)}"
                )
        return self

    @property
    def needs_calibration(self) -> bool:
        """Building this engine runs ModelOpt calibration over a dataset."""
        return self.runtime == "engine" and (
            self.quantization in CALIBRATED_QUANTIZATIONS or self.kv_cache_dtype != "auto"
        )

    @property
    @override
    def concurrency(self) -> int:
        return self.max_batch_size
