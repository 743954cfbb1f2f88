"""Backend name -> class, imported lazily so the core never imports torch or vLLM."""

from __future__ import annotations

import importlib

from lem_ray.backends.base import Backend

_BACKENDS = {
    "pytorch": "lem_ray.backends.pytorch.backend:PyTorchBackend",
    "vllm": "lem_ray.backends.vllm.backend:VLLMBackend",
    "tensorrt": "lem_ray.backends.tensorrt.backend:TensorRTBackend",
}


def backend_class(name: str) -> type[Backend]:
    module, _, attr = _BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
