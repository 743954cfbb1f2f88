"""The one table of backends: name, where its code lives, the modules it needs, and the option
that sets its batch size.

A leaf: it imports nothing of lem_ray, so config (the backend literal and sections), results
(labels read a backend's section of config_json) and backends (the registry that loads from
these paths) read one list without importing each other. Only import paths live here: nothing
imports torch, vLLM or TensorRT-LLM until a worker builds its backend.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendEntry:
    """One backend's row: what config, results, registry and doctor need to know of it."""

    name: str
    options: str
    """`module:Class` of its options model, the experiment's section named after the backend."""
    backend: str
    """`module:Class` of its Backend."""
    engine_args: str
    """`module:function`: config -> what the backend hands its library, with no library import."""
    requires: tuple[str, ...]
    """Top-level modules the backend imports when it loads (its pip extra is its name)."""
    batch_option: str
    """The option of its section that its options model's `concurrency` reads."""


BACKENDS: tuple[BackendEntry, ...] = (
    BackendEntry(
        "pytorch",
        "lem_ray.backends.pytorch.config:PyTorchConfig",
        "lem_ray.backends.pytorch.backend:PyTorchBackend",
        "lem_ray.backends.pytorch.backend:engine_args",
        ("torch", "transformers"),
        "batch_size",
    ),
    BackendEntry(
        "vllm",
        "lem_ray.backends.vllm.config:VLLMConfig",
        "lem_ray.backends.vllm.backend:VLLMBackend",
        "lem_ray.backends.vllm.translate:engine_args",
        ("vllm",),
        "max_num_seqs",
    ),
    BackendEntry(
        "tensorrt",
        "lem_ray.backends.tensorrt.config:TensorRTConfig",
        "lem_ray.backends.tensorrt.backend:TensorRTBackend",
        "lem_ray.backends.tensorrt.translate:engine_args",
        ("tensorrt_llm",),
        "max_batch_size",
    ),
)
BACKEND_NAMES: tuple[str, ...] = tuple(e.name for e in BACKENDS)
# Each backend's batch option as a dotted key of config_json: `pytorch.batch_size`, ...
BATCH_KEYS: frozenset[str] = frozenset(f"{e.name}.{e.batch_option}" for e in BACKENDS)


def entry(name: str) -> BackendEntry:
    """The backend's row; a name not in the table is a KeyError that lists the known ones."""
    for e in BACKENDS:
        if e.name == name:
            return e
    raise KeyError(f"unknown backend {name!r}; known: {', '.join(BACKEND_NAMES)}")
