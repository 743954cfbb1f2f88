"""TensorRT-LLM options, named as its LLM API (`tensorrt_llm.LLM`, BuildConfig) names them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lem_ray.config.base import StrictModel


class TensorRTConfig(StrictModel):
    engine_dir: str | None = Field(
        None, description="a prebuilt engine to load; when unset the engine is built"
    )
    engine_cache_dir: str | None = Field(
        None, description="where built engines are kept, keyed by experiment id"
    )
    force_rebuild: bool = False
    max_batch_size: int = Field(8, ge=1)
    max_input_len: int | None = Field(None, ge=1, description="defaults to max_input_tokens")
    max_output_len: int | None = Field(None, ge=1, description="defaults to max_output_tokens")
    max_num_tokens: int | None = Field(None, ge=1)
    builder_opt_level: int | None = Field(None, ge=0, le=5)
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    quantization: (
        Literal["fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "nvfp4"] | None
    ) = None
    kv_cache_dtype: Literal["auto", "fp8", "int8"] = "auto"
    kv_cache_free_gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    enable_chunked_context: bool = False
    enable_kv_cache_reuse: bool = False

    @property
    def parallel_gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size
