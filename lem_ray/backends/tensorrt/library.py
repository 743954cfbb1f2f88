"""What reaches into TensorRT-LLM (and torch) for the backend: importing it, the LLM class of
the installed version, its config classes, the GPU an engine is built for, saving an engine,
and which sampler features the PyTorch runtime has."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

from lem_ray.backends.base import BackendUnavailable
from lem_ray.backends.tensorrt.translate import major_version

INSTALL_HINT = (
    "install it on a CUDA machine with "
    "`pip install 'lem-ray[tensorrt]' --extra-index-url https://pypi.nvidia.com`"
)


def import_trtllm() -> ModuleType:
    """tensorrt_llm, or BackendUnavailable saying how to install it."""
    try:
        import tensorrt_llm
    except (ImportError, OSError) as exc:
        raise BackendUnavailable(
            f"tensorrt_llm cannot be imported ({exc}); {INSTALL_HINT}"
        ) from exc
    return tensorrt_llm


def llm_class(runtime: str, trtllm: ModuleType) -> type:
    """The LLM class for the runtime, across the API's versions.

    0.x: tensorrt_llm.LLM builds TensorRT engines by default (its PyTorch flow was
    experimental, so runtime 'pytorch' asks for 1.0+). 1.x: tensorrt_llm.LLM is the PyTorch
    backend and engines moved to tensorrt_llm._tensorrt_engine.LLM. After the TensorRT
    backend's removal only the PyTorch backend is left.
    """
    version = trtllm.__version__
    if runtime == "pytorch":
        if major_version(version) < 1:
            raise BackendUnavailable(
                f"tensorrt.runtime pytorch needs tensorrt_llm >= 1.0, found {version}"
            )
        return trtllm.LLM
    try:
        from tensorrt_llm._tensorrt_engine import LLM as EngineLLM
    except ImportError:
        if major_version(version) < 1:
            return trtllm.LLM
        raise BackendUnavailable(
            f"tensorrt_llm {version} has no TensorRT engine backend; set tensorrt.runtime: "
            "pytorch, or install a release that still builds engines (1.x or older)"
        ) from None
    return EngineLLM


def materialise(kwargs: dict[str, Any], llmapi: ModuleType) -> dict[str, Any]:
    """Turn llm_kwargs' plain dicts into tensorrt_llm.llmapi's config classes."""
    real = dict(kwargs)
    real["kv_cache_config"] = llmapi.KvCacheConfig(**kwargs["kv_cache_config"])
    if "build_config" in kwargs:
        real["build_config"] = llmapi.BuildConfig(**kwargs["build_config"])
    if "calib_config" in kwargs:
        real["calib_config"] = llmapi.CalibConfig(**kwargs["calib_config"])
    if "quant_config" in kwargs:
        real["quant_config"] = llmapi.QuantConfig(
            **{name: llmapi.QuantAlgo[algo] for name, algo in kwargs["quant_config"].items()}
        )
    return real


def device_name() -> str:
    """GPU model and compute capability: a TensorRT engine only runs on the GPU it was built for."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} sm{major}{minor}"


def save_engine(llm: Any, path: str, provenance: dict[str, Any]) -> None:
    """llm.save into a sibling temp folder, then rename: a half-written engine is never reused."""
    target = Path(path)
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    llm.save(str(staging))
    (staging / "lem_ray_build.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def sampler_features() -> tuple[bool, bool]:
    """(penalties, per-request seed) in the installed PyTorch runtime's TorchSampler: each
    came with its own module (see translate.unsupported_sampling)."""
    base = "tensorrt_llm._torch.pyexecutor.sampler"

    def has(module: str) -> bool:
        try:
            return importlib.util.find_spec(f"{base}.{module}") is not None
        except ModuleNotFoundError:
            return False

    return has("penalties"), has("seed_manager")


def torch_or_none() -> ModuleType | None:
    """torch where installed: TensorRT-LLM does not always bring it."""
    try:
        import torch
    except ImportError:
        return None
    return torch
