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


# Every PyTorch option, with a non-default value (and what else it needs to be valid): the
# engine-shaping ones must change the engine key, the runtime ones must not. A new option
# missing here fails the completeness test, so nobody adds one without deciding which it is.
STATIC = {"cache_implementation": "static"}
COMPILED = {"torch_compile": "reduce-overhead", **STATIC}
PYTORCH_ENGINE_CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "attn_implementation": ({"attn_implementation": "eager"}, {}),
    "torch_compile": ({"torch_compile": "default"}, {}),
    "cache_implementation": (STATIC, {}),
    "compile_prefill": ({**COMPILED, "compile_prefill": True}, COMPILED),
    "load_in_4bit": ({"load_in_4bit": True}, {}),
    "load_in_8bit": ({"load_in_8bit": True}, {}),
    "bnb_4bit_quant_type": ({"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
                            {"load_in_4bit": True}),
    "assistant_model": ({"assistant_model": "builtin:tiny-llama"}, {}),
}
PYTORCH_RUNTIME_CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "batch_size": ({"batch_size": 3}, {}),
    "batching_strategy": ({"batching_strategy": "sorted"}, {}),
    "max_tokens_per_batch": ({"batching_strategy": "dynamic", "max_tokens_per_batch": 64},
                             {"batching_strategy": "dynamic"}),
}


def test_every_pytorch_option_is_classified() -> None:
    from lem_ray.backends.pytorch.config import PyTorchConfig

    assert set(PyTorchConfig.model_fields) == {*PYTORCH_ENGINE_CHANGES, *PYTORCH_RUNTIME_CHANGES}
    assert set(PYTORCH_RUNTIME_CHANGES) == PyTorchConfig.RUNTIME_FIELDS


@pytest.mark.parametrize("option", sorted(PYTORCH_ENGINE_CHANGES))
def test_each_engine_shaping_pytorch_option_changes_the_key(option: str) -> None:
    changed, base = PYTORCH_ENGINE_CHANGES[option]
    assert key(pytorch=changed) != key(pytorch=base)


@pytest.mark.parametrize("option", sorted(PYTORCH_RUNTIME_CHANGES))
def test_each_runtime_pytorch_option_keeps_the_key(option: str) -> None:
    changed, base = PYTORCH_RUNTIME_CHANGES[option]
    assert key(pytorch=changed) == key(pytorch=base)


def test_the_quantisations_are_three_engines() -> None:
    keys = {key(pytorch={"load_in_4bit": True}), key(pytorch={"load_in_8bit": True}),
            key(pytorch={"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}), key()}
    assert len(keys) == 4
    assert key(pytorch={"assistant_model": "a"}) != key(pytorch={"assistant_model": "b"})


def test_every_experiment_field_is_classified_for_pytorch() -> None:
    """The experiment's own fields: engine fields but for those the backend applies per run."""
    from lem_ray.backend_table import BACKEND_NAMES
    from lem_ray.backends.pytorch.config import PyTorchConfig
    from lem_ray.config.experiment import EVALUATION_FIELDS

    engine = {"model_name", "load_format", "tokenizer", "backend", "fp_precision",
              "random_seed", "gpus_per_experiment"}
    assert set(ExperimentConfig.model_fields) == {
        *engine, *PyTorchConfig.EXPERIMENT_RUNTIME_FIELDS, *EVALUATION_FIELDS, *BACKEND_NAMES}
    assert key(tokenizer="builtin:tiny-llama") != key()
    assert key(slo={"ttft_ms": 2000}) == key(), "an SLO judges results, the engine is the same"
