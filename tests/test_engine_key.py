"""Which config changes keep a loaded engine and which need a new one."""

from __future__ import annotations

from typing import Any

import pytest

from lem_ray.config.experiment import ExperimentConfig

BASE: dict[str, Any] = {"model_name": "builtin:tiny-llama", "backend": "pytorch"}


def key(**changes: Any) -> str:
    return ExperimentConfig.model_validate({**BASE, **changes}).engine_key


@pytest.mark.parametrize("runtime", [
    {"pytorch": {"batch_size": 8}},
    {"pytorch": {"batching_strategy": "sorted"}},
    {"max_output_tokens": 7, "min_output_tokens": 3, "max_input_tokens": 100},
    {"decoder": {"preset": "creative"}},
    {"warmup": {"mode": "fixed"}},
    {"prompts": {"source": "synthetic", "count": 3}},
])
def test_pytorch_runtime_options_keep_the_engine(runtime: dict[str, Any]) -> None:
    assert key(**runtime) == key()


@pytest.mark.parametrize("engine", [
    {"fp_precision": "float16"},
    {"model_name": "builtin:llama-1b"},
    {"load_format": "dummy"},
    {"random_seed": 7},
    {"gpus_per_experiment": 2},
    {"pytorch": {"attn_implementation": "eager"}},
    {"pytorch": {"torch_compile": "default"}},
    {"pytorch": {"load_in_8bit": True}},
])
def test_pytorch_engine_options_need_a_new_engine(engine: dict[str, Any]) -> None:
    assert key(**engine) != key()


def test_vllm_batch_bound_and_token_limits_are_engine_options() -> None:
    vllm = {"backend": "vllm"}
    assert key(**vllm, vllm={"max_num_seqs": 8}) != key(**vllm)
    assert key(**vllm, max_output_tokens=64) != key(**vllm)
    assert key(**vllm, decoder={"preset": "standard"}) == key(**vllm)
    assert key(**vllm) != key()


def test_compiled_decode_loop_keeps_its_engine_across_batch_sizes_only() -> None:
    """It bakes decoder and output length in, and sizes its cache by the first prompts; it
    holds a cache and a graph per batch shape, so batching is a runtime option."""
    compiled = {"torch_compile": "reduce-overhead", "cache_implementation": "static"}
    assert key(pytorch={**compiled, "batch_size": 4}) == key(pytorch=compiled)
    assert key(pytorch={**compiled, "batching_strategy": "sorted"}) == key(pytorch=compiled)
    assert key(pytorch=compiled, max_output_tokens=7) != key(pytorch=compiled)
    assert key(pytorch=compiled, decoder={"preset": "creative"}) != key(pytorch=compiled)
    assert key(pytorch=compiled, prompts={"source": "synthetic", "count": 3}) != key(
        pytorch=compiled)
    assert key(pytorch=compiled, warmup={"max_steps": 3}) == key(pytorch=compiled)
