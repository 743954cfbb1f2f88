"""Regenerate the model definitions shipped in lem_ray/assets (configs and tokenizer, no weights).

Run from the repo root: python scripts/build_tiny_model.py. Needs `tokenizers` and
`transformers`. The word list doubles as the synthetic prompt vocabulary, so with the tiny
tokenizer one synthetic word is exactly one token.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

ASSETS = Path(__file__).resolve().parents[1] / "lem_ray" / "assets"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def build_tokenizer(target: Path, words: list[str]) -> int:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(str(target / "tokenizer.json"))
    (target / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "padding_side": "left", "model_max_length": 4096, "add_bos_token": False,
    }, indent=2) + "\n")
    (target / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
    }, indent=2) + "\n")
    return len(vocab)


def llama_config(vocab_size: int, **shape: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", **shape,
    }


def main() -> None:
    words = (ASSETS / "words.txt").read_text().split()
    for name, shape in {
        "tiny-llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=2048),
        # TinyLlama-1.1B's shape with its 32000-token vocabulary: a ~1.1 B-parameter GPU workload.
        "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4,
                         max_position_embeddings=4096),
    }.items():
        target = ASSETS / "models" / name
        target.mkdir(parents=True, exist_ok=True)
        n = build_tokenizer(target, words)
        vocab_size = n if name == "tiny-llama" else 32000
        (target / "config.json").write_text(json.dumps(llama_config(vocab_size, **shape), indent=2) + "\n")
        print(f"{target}: vocab {vocab_size}")


if __name__ == "__main__":
    main()
