"""The shipped model definitions: exact published shapes, tokenizers that decode every id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lem_ray.assets import builtin_models, resolve_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_llama_8b_has_llama_3_1_8b_shape_and_parameter_count() -> None:
    config = transformers.AutoConfig.from_pretrained(resolve_model("builtin:llama-8b"))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248
    raw = json.loads((Path(resolve_model("builtin:llama-8b")) / "config.json").read_text())
    assert raw["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert (raw["rope_theta"], raw["max_position_embeddings"], raw["torch_dtype"]) == (
        500000.0,
        131072,
        "bfloat16",
    )


@pytest.mark.parametrize("name", ["tiny-llama", "llama-1b", "llama-8b"])
def test_every_id_a_dummy_model_can_emit_decodes(name: str) -> None:
    """Random weights sample from the whole vocabulary; an id the tokenizer lacks cannot be
    detokenized."""
    folder = resolve_model(f"builtin:{name}")
    vocab_size = transformers.AutoConfig.from_pretrained(folder).vocab_size
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == vocab_size
    assert tokenizer.decode([vocab_size - 1]) != ""


def test_llama_8b_is_small_on_disk() -> None:
    folder = Path(resolve_model("builtin:llama-8b"))
    assert sum(f.stat().st_size for f in folder.iterdir()) < 4_000_000
    assert builtin_models() == ["llama-1b", "llama-8b", "tiny-llama"]
