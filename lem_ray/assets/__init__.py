"""Model definitions shipped with lem-ray (config + tokenizer, no weights), for dummy loading."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
BUILTIN_PREFIX = "builtin:"
QUICKSTART_CAMPAIGN = ASSETS_DIR / "campaigns" / "quickstart.yaml"


def builtin_models() -> list[str]:
    """The names `builtin:<name>` accepts, for the error that lists them."""
    return sorted(p.name for p in (ASSETS_DIR / "models").iterdir() if p.is_dir())


def resolve_model(name: str) -> str:
    """`builtin:NAME` -> the shipped folder; hub ids and local paths pass through unchanged."""
    if not name.startswith(BUILTIN_PREFIX):
        return name
    folder = ASSETS_DIR / "models" / name[len(BUILTIN_PREFIX):]
    if not folder.is_dir():
        raise ValueError(f"unknown builtin model {name!r}; builtin models: {builtin_models()}")
    return str(folder)


def word_list() -> list[str]:
    """The vocabulary synthetic prompts are drawn from."""
    return (ASSETS_DIR / "words.txt").read_text().split()
