"""The one table of backends: name, options model, backend class, dry-run translation, and
the modules it needs.

Only import paths live here, so config reads the names and options models from it without
importing any backend module, and nothing imports torch, vLLM or TensorRT-LLM until a worker
builds its backend.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lem_ray.backends.base import Backend
    from lem_ray.config.base import BackendOptions
    from lem_ray.config.experiment import ExperimentConfig


@dataclass(frozen=True)
class BackendEntry:
    """Where one backend's pieces live, as import paths, so naming one imports nothing heavy."""

    name: str
    options: str
    """`module:Class` of its options model, the experiment's section named after the backend."""
    backend: str
    """`module:Class` of its Backend."""
    engine_args: str
    """`module:function`: config -> what the backend hands its library, with no library import."""
    requires: tuple[str, ...]
    """Top-level modules the backend imports when it loads (its pip extra is its name)."""


BACKENDS: tuple[BackendEntry, ...] = (
    BackendEntry(
        "pytorch",
        "lem_ray.backends.pytorch.config:PyTorchConfig",
        "lem_ray.backends.pytorch.backend:PyTorchBackend",
        "lem_ray.backends.pytorch.backend:engine_args",
        ("torch", "transformers"),
    ),
    BackendEntry(
        "vllm",
        "lem_ray.backends.vllm.config:VLLMConfig",
        "lem_ray.backends.vllm.backend:VLLMBackend",
        "lem_ray.backends.vllm.translate:engine_args",
        ("vllm",),
    ),
    BackendEntry(
        "tensorrt",
        "lem_ray.backends.tensorrt.config:TensorRTConfig",
        "lem_ray.backends.tensorrt.backend:TensorRTBackend",
        "lem_ray.backends.tensorrt.translate:engine_args",
        ("tensorrt_llm",),
    ),
)
BACKEND_NAMES: tuple[str, ...] = tuple(e.name for e in BACKENDS)


def entry(name: str) -> BackendEntry:
    """The entry of backend `name`; a KeyError lists the known ones."""
    for e in BACKENDS:
        if e.name == name:
            return e
    raise KeyError(f"unknown backend {name!r}; known: {', '.join(BACKEND_NAMES)}")


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def options_class(name: str) -> type[BackendOptions]:
    """The options model; its module imports only pydantic and lem_ray.config.base."""
    return _load(entry(name).options)


def backend_class(name: str) -> type[Backend[Any]]:
    """Import and return backend `name`'s Backend class (its library is imported on load)."""
    return _load(entry(name).backend)


def engine_args(config: ExperimentConfig) -> dict[str, Any]:
    """What the experiment's backend will hand its library, from pure translations (no
    library import), for `campaign --dry-run`; a setting the backend would refuse at load
    shows as {"error": reason}."""
    try:
        return _load(entry(config.backend).engine_args)(config)
    except ValueError as exc:
        return {"error": str(exc)}


def missing_modules(name: str) -> list[str]:
    """The backend's required modules not installed here (found without importing them)."""
    return [m for m in entry(name).requires if importlib.util.find_spec(m) is None]
