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


def build_tokenizer(target: Path, words: list[str], vocab_size: int | None = None,
                    model_max_length: int = 4096) -> int:
    """vocab_size pads the word list with filler tokens `t<id>`, so every id a dummy model
    can emit decodes; the padded file is written compact to stay small on disk."""
    tokens = SPECIALS + words
    if vocab_size is not None:
        tokens += [f"t{i}" for i in range(len(tokens), vocab_size)]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(str(target / "tokenizer.json"), pretty=vocab_size is None)
    (target / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "padding_side": "left", "model_max_length": model_max_length, "add_bos_token": False,
    }, indent=2) + "\n")
    (target / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
    }, indent=2) + "\n")
    return len(vocab)


def llama_config(vocab_size: int, **shape: object) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", **shape,
    }


# Llama-3.1-8B's published config.json: its shape, rope and vocabulary size
# (8,030,261,248 parameters).
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                rope_theta=500000.0, rope_scaling={
                    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
LLAMA_8B_VOCAB = 128256


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
        # llama-1b's tokenizer pads to its 32000 ids, so every id its dummy weights emit decodes
        n = build_tokenizer(target, words, vocab_size=None if name == "tiny-llama" else 32000)
        vocab_size = n
        (target / "config.json").write_text(
            json.dumps(llama_config(vocab_size, **shape), indent=2) + "\n"
        )
        print(f"{target}: vocab {vocab_size}")
    target = ASSETS / "models" / "llama-8b"
    target.mkdir(parents=True, exist_ok=True)
    build_tokenizer(target, words, vocab_size=LLAMA_8B_VOCAB,
                    model_max_length=LLAMA_8B["max_position_embeddings"])
    config = llama_config(LLAMA_8B_VOCAB, **LLAMA_8B)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"{target}: vocab {LLAMA_8B_VOCAB}")


if __name__ == "__main__":
    main()
