"""Loads what lem_ray/backend_table.py names: a backend's options model, its class, its dry-run
translation, and which of the modules it needs are missing.

Each loads one module when asked, so config reads the options models without importing any
backend module, and nothing imports torch, vLLM or TensorRT-LLM until a worker builds its
backend.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from lem_ray.backend_table import entry

if TYPE_CHECKING:
    from lem_ray.backends.base import Backend
    from lem_ray.config.base import BackendOptions
    from lem_ray.config.experiment import ExperimentConfig


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
