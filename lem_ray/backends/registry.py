"""Backend name -> class, imported lazily so the core never imports torch or vLLM."""

from __future__ import annotations

import importlib

from typing import Any

from lem_ray.backends.base import Backend
from lem_ray.config.experiment import ExperimentConfig

_BACKENDS = {
    "pytorch": "lem_ray.backends.pytorch.backend:PyTorchBackend",
    "vllm": "lem_ray.backends.vllm.backend:VLLMBackend",
    "tensorrt": "lem_ray.backends.tensorrt.backend:TensorRTBackend",
}


def backend_class(name: str) -> type[Backend]:
    module, _, attr = _BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _pytorch_engine_args(config: ExperimentConfig) -> dict[str, Any]:
    from lem_ray.backends.pytorch.backend import generation_kwargs

    generate = generation_kwargs(config, pad_token_id=0, eos_token_id=0)
    for name in ("pad_token_id", "eos_token_id"):
        del generate[name]
    return {
        "library": "transformers",
        "sampling": {"call": "model.generate", "kwargs": generate,
                     "resolved_at_load": ["pad_token_id", "eos_token_id"]},
    }


def _vllm_engine_args(config: ExperimentConfig) -> dict[str, Any]:
    from lem_ray.backends.vllm.translate import engine_args

    return engine_args(config)


def _tensorrt_engine_args(config: ExperimentConfig) -> dict[str, Any]:
    from lem_ray.backends.tensorrt.translate import engine_args

    return engine_args(config)


_ENGINE_ARGS = {
    "pytorch": _pytorch_engine_args,
    "vllm": _vllm_engine_args,
    "tensorrt": _tensorrt_engine_args,
}


def engine_args(config: ExperimentConfig) -> dict[str, Any]:
    """What the experiment's backend will hand its library, from pure translations (no
    library import), for `campaign --dry-run`; a setting the backend would refuse at load
    shows as {"error": reason}."""
    try:
        return _ENGINE_ARGS[config.backend](config)
    except ValueError as exc:
        return {"error": str(exc)}
