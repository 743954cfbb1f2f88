"""A model's context window, read from its config.json where that is on this machine (shipped,
a local folder, or the Hugging Face cache; never the network): an experiment whose longest
request (max_input_tokens + max_output_tokens) does not fit is refused before Ray starts,
not found by every backend after a model load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lem_ray.assets import BUILTIN_PREFIX, resolve_model
from lem_ray.errors import ConfigError
from lem_ray.planning.expand import PlannedExperiment

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""Where transformers' configs keep the longest sequence, by model family."""
PRESCALED_ROPE = ("su", "longrope", "llama3")
"""RoPE scalings whose config already states the scaled length (vLLM's rule)."""


def _config_file(model_name: str) -> Path | None:
    if model_name.startswith(BUILTIN_PREFIX):
        return Path(resolve_model(model_name)) / "config.json"
    local = Path(model_name).expanduser()
    if local.is_dir():
        return local / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(model_name, "config.json")
    except ValueError:  # not a hub id (HFValidationError): a path that is not there
        return None
    return Path(cached) if isinstance(cached, str) else None


def _positions_in(config: dict[str, Any]) -> int | None:
    for key in POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            scaling = config.get("rope_scaling")
            if not isinstance(scaling, dict):
                return value
            kind = scaling.get("rope_type", scaling.get("type"))
            factor = scaling.get("factor")
            if kind in PRESCALED_ROPE or not isinstance(factor, (int, float)) or factor <= 1:
                return value
            return int(value * factor)
    text = config.get("text_config")
    return _positions_in(text) if isinstance(text, dict) else None


def max_positions(model_name: str) -> int | None:
    """The model's longest sequence in tokens; None when its config is not here or says none
    (the backend then finds out)."""
    path = _config_file(model_name)
    try:
        config = json.loads(path.read_text()) if path is not None and path.is_file() else None
    except (OSError, ValueError):
        return None
    return _positions_in(config) if isinstance(config, dict) else None


def check_positions(experiments: list[PlannedExperiment]) -> None:
    """Refuse an experiment whose input + output tokens exceed its model's positions."""
    limits: dict[str, int | None] = {}
    for e in experiments:
        name = e.config.model_name
        if name not in limits:
            limits[name] = max_positions(name)
        limit, need = limits[name], e.config.max_input_tokens + e.config.max_output_tokens
        if limit is not None and need > limit:
            raise ConfigError(
                f"max_input_tokens + max_output_tokens = {need}, more than the {limit} positions "
                f"of {name}", path=f"experiment {e.experiment_id} ({name}, {e.backend})")
