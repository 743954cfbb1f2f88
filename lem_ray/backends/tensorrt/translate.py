"""Pure translation between lem-ray's config and TensorRT-LLM's LLM API, and of its outputs back.

Nothing here imports tensorrt_llm: nested configs are plain dicts (QuantAlgo given by member
name) so every rule is testable without CUDA; backend.py turns them into the real classes.
API facts relied on (checked against NVIDIA/TensorRT-LLM sources, 0.17 to 1.x):
- LLM(model, tokenizer, dtype, tensor_parallel_size, pipeline_parallel_size, load_format,
  kv_cache_config, enable_chunked_prefill, ...) - BaseLlmArgs in tensorrt_llm/llmapi/llm_args.py.
- TensorRT (engine) backend only: build_config=BuildConfig(max_batch_size, max_input_len,
  max_seq_len, max_num_tokens) and quant_config=QuantConfig(quant_algo, kv_cache_quant_algo);
  KvCacheConfig.dtype must stay "auto" there (TrtLlmArgs.validate_kv_cache_dtype).
- PyTorch backend: the sizes are top-level LLM arguments, the KV cache dtype is
  KvCacheConfig.dtype, and QuantConfig is ignored (quantization comes from the checkpoint).
- load_format="dummy" builds from config.json alone with random weights, in both backends
  (ModelLoader._load_model_from_hf for engines; LoadFormat.DUMMY in the PyTorch flow).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lem_ray.assets import resolve_model
from lem_ray.backends.streaming import StreamTrace, record_from_trace
from lem_ray.backends.tensorrt.config import TensorRTConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.records import RequestRecord

# lem-ray's names are ModelOpt's format names; the same pairs as TensorRT-LLM's own
# QuantConfig._get_modelopt_qformat (tensorrt_llm/models/modeling_utils.py).
QUANT_ALGOS: dict[str, str] = {
    "fp8": "FP8",
    "int8_sq": "W8A8_SQ_PER_CHANNEL",
    "int4_awq": "W4A16_AWQ",
    "w4a8_awq": "W4A8_AWQ",
    "int8_wo": "W8A16",
    "int4_wo": "W4A16",
    "nvfp4": "NVFP4",
}
# QuantConfig._get_modelopt_kv_cache_dtype: the KV cache quantisations an engine can be built with.
KV_CACHE_QUANT_ALGOS: dict[str, str] = {"fp8": "FP8", "int8": "INT8"}

_SIZE_FIELDS = ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens")


def _options(config: ExperimentConfig) -> TensorRTConfig:
    if config.backend != "tensorrt" or not isinstance(config.tensorrt, TensorRTConfig):
        raise ValueError(f"not a tensorrt experiment (backend {config.backend!r})")
    return config.tensorrt


def major_version(version: str) -> int:
    """Major number of a version string such as '1.0.0rc4'; 1.0 changed which LLM is default."""
    return int(version.split(".", 1)[0])


def sequence_limits(config: ExperimentConfig) -> tuple[int, int]:
    """(max_input_len, max_seq_len) the engine is sized for, refused if a request cannot fit."""
    opts = _options(config)
    max_input_len = opts.max_input_len or config.max_input_tokens
    max_seq_len = opts.max_seq_len or max_input_len + config.max_output_tokens
    if config.max_input_tokens > max_input_len:
        raise ValueError(
            f"tensorrt.max_input_len ({max_input_len}) is below max_input_tokens "
            f"({config.max_input_tokens}); TensorRT-LLM would reject the longest prompts"
        )
    if config.max_input_tokens + config.max_output_tokens > max_seq_len:
        raise ValueError(
            f"tensorrt.max_seq_len ({max_seq_len}) is below max_input_tokens + "
            f"max_output_tokens ({config.max_input_tokens + config.max_output_tokens})"
        )
    return max_input_len, max_seq_len


def build_settings(config: ExperimentConfig) -> dict[str, Any]:
    """Everything baked into a built engine: BuildConfig and the engine-cache key come from it."""
    opts = _options(config)
    max_input_len, max_seq_len = sequence_limits(config)
    return {
        "model": config.model_name,
        "load_format": config.load_format,
        "dtype": config.fp_precision,
        "tensor_parallel_size": opts.tensor_parallel_size,
        "pipeline_parallel_size": opts.pipeline_parallel_size,
        "max_batch_size": opts.max_batch_size,
        "max_input_len": max_input_len,
        "max_seq_len": max_seq_len,
        "max_num_tokens": opts.max_num_tokens,
        "quantization": opts.quantization,
        "kv_cache_dtype": opts.kv_cache_dtype,
        # calibration bakes its dataset's scales in; absent when unset, so keys made before
        # it was counted still find their engines
        **({"calib_dataset": opts.calib_dataset} if opts.calib_dataset is not None else {}),
    }


def engine_cache_key(config: ExperimentConfig, *, trtllm_version: str, device_name: str) -> str:
    """Folder name of a cached engine: engines are tied to the build settings, the
    TensorRT-LLM version and the GPU model, so all three are in the key; runtime-only options
    (KV cache fraction and reuse, chunked context, sampling) are not, so they share an engine."""
    payload = json.dumps(
        {"build": build_settings(config), "tensorrt_llm": trtllm_version, "device": device_name},
        sort_keys=True,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", config.model_name).strip("._-")[-48:] or "model"
    return f"{slug}-{digest}"


def engine_ready(path: str | Path, world_size: int) -> bool:
    """A finished engine folder as llm.save writes it: config.json and rank{i}.engine per GPU."""
    folder = Path(path)
    return (folder / "config.json").is_file() and all(
        (folder / f"rank{rank}.engine").is_file() for rank in range(world_size)
    )


@dataclass(frozen=True)
class EnginePlan:
    """Where this run's model comes from, and where a freshly built engine is kept."""

    source: str  # engine_dir | cache | compile_cache | build | checkpoint (PyTorch: no engine)
    load: str | None = None
    save_to: str | None = None


def engine_plan(
    config: ExperimentConfig, cache_key: str | None, compiled: str | None = None
) -> EnginePlan:
    """Build once per cache key, reuse after, unless force_rebuild; engine_dir always wins.
    Without either folder, `compiled` is an engine the campaign's compile cache gave."""
    opts = _options(config)
    if opts.runtime == "pytorch":
        return EnginePlan(source="checkpoint")
    if opts.engine_dir is not None:
        return EnginePlan(source="engine_dir", load=opts.engine_dir)
    if opts.engine_cache_dir is None:
        if compiled is not None:
            return EnginePlan(source="compile_cache", load=compiled)
        return EnginePlan(source="build")
    if cache_key is None:
        raise ValueError("an engine cache needs a cache key")
    path = str(Path(opts.engine_cache_dir) / cache_key)
    if not opts.force_rebuild and engine_ready(path, opts.parallel_gpus):
        return EnginePlan(source="cache", load=path)
    return EnginePlan(source="build", save_to=path)


def llm_kwargs(config: ExperimentConfig, prebuilt_engine: str | None = None) -> dict[str, Any]:
    """Keyword arguments for LLM(...); nested configs as plain dicts.

    With `prebuilt_engine` the engine folder is the model and everything baked into it
    (sizes, dtype, quantization, weights) comes from the engine, not from the config.
    """
    opts = _options(config)
    kv_cache: dict[str, Any] = {"enable_block_reuse": opts.enable_kv_cache_reuse}
    if opts.kv_cache_free_gpu_memory_fraction is not None:
        kv_cache["free_gpu_memory_fraction"] = opts.kv_cache_free_gpu_memory_fraction
    if opts.runtime == "pytorch" and opts.kv_cache_dtype != "auto":
        kv_cache["dtype"] = opts.kv_cache_dtype
    kwargs: dict[str, Any] = {
        "model": prebuilt_engine or resolve_model(config.model_name),
        "tokenizer": resolve_model(config.tokenizer or config.model_name),
        "tensor_parallel_size": opts.tensor_parallel_size,
        "pipeline_parallel_size": opts.pipeline_parallel_size,
        "enable_chunked_prefill": opts.enable_chunked_context,
        "kv_cache_config": kv_cache,
    }
    if prebuilt_engine is not None:
        return kwargs
    build = build_settings(config)
    sizes = {name: build[name] for name in _SIZE_FIELDS if build[name] is not None}
    kwargs["dtype"] = config.fp_precision
    if config.load_format == "dummy":
        kwargs["load_format"] = "dummy"
    if opts.runtime == "pytorch":
        kwargs.update(sizes)
        return kwargs
    kwargs["build_config"] = sizes
    if opts.calib_dataset is not None:
        kwargs["calib_config"] = {"calib_dataset": opts.calib_dataset}
    quant: dict[str, str] = {}
    if opts.quantization is not None:
        quant["quant_algo"] = QUANT_ALGOS[opts.quantization]
    if opts.kv_cache_dtype != "auto":
        quant["kv_cache_quant_algo"] = KV_CACHE_QUANT_ALGOS[opts.kv_cache_dtype]
    if quant:
        kwargs["quant_config"] = quant
    return kwargs


def sampling_params_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for SamplingParams; unset fields keep TensorRT-LLM's runtime defaults.

    Greedy is top_k=1: SamplingParams._greedy_decoding is top_k in (None, 1) and top_p in
    (None, 0), and top-1 is argmax in both the C++ and the PyTorch sampler. EOS is honoured
    (ignore_eos keeps its default False), so outputs may end before max_tokens.
    """
    decoder = config.decoder
    kwargs: dict[str, Any] = {"max_tokens": config.max_output_tokens, "seed": config.random_seed}
    if config.min_output_tokens > 0:
        kwargs["min_tokens"] = config.min_output_tokens
    if decoder.do_sample:
        kwargs["temperature"] = decoder.temperature
        kwargs["top_p"] = decoder.top_p
        if decoder.top_k > 0:
            kwargs["top_k"] = decoder.top_k
    else:
        kwargs["top_k"] = 1
    if decoder.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = decoder.repetition_penalty
    return kwargs


_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def calibration_refusal(config: ExperimentConfig, environ: Mapping[str, str]) -> str | None:
    """Why this engine cannot be built here, or None.

    Calibrating quantizations run ModelOpt over a dataset; without tensorrt.calib_dataset
    TensorRT-LLM's CalibConfig fetches cnn_dailymail from the Hugging Face hub, which on a
    node marked offline fails deep in the build after the model has loaded. Said up front.
    """
    opts = _options(config)
    if not opts.needs_calibration or opts.calib_dataset is not None:
        return None
    offline = [v for v in _OFFLINE_VARIABLES
               if environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
    if not offline:
        return None
    what = f"quantization {opts.quantization}" if opts.quantization else ""
    if opts.kv_cache_dtype != "auto":
        what = " and ".join(filter(None, [what, f"kv_cache_dtype {opts.kv_cache_dtype}"]))
    return (
        f"tensorrt {what} calibrates on a dataset, which TensorRT-LLM would download "
        f"(cnn_dailymail), but this node is offline ({', '.join(offline)} set); give a local "
        "dataset in tensorrt.calib_dataset or build the engine elsewhere and use engine_dir"
    )


def unsupported_sampling(
    config: ExperimentConfig, *, penalties: bool, per_request_seed: bool
) -> tuple[str | None, dict[str, str]]:
    """(refusal, not applied) for the PyTorch runtime's sampler, given what it supports.

    TorchSampler accepted repetition_penalty and seed but ignored them until TensorRT-LLM
    gained `_torch/pyexecutor/sampler/penalties.py` (PR #16485) and `seed_manager.py`
    (PR #17172); the backend probes the installed package for those modules. A penalty
    that silently did not apply changes every output, so it is refused; an unseeded sampler
    only makes runs unrepeatable, so the seed is left out and recorded as not applied. The
    engine runtime's C++ sampler applies both.
    """
    opts = _options(config)
    if opts.runtime != "pytorch":
        return None, {}
    decoder = config.decoder
    if decoder.repetition_penalty != 1.0 and not penalties:
        return (
            f"decoder.repetition_penalty {decoder.repetition_penalty:g}: the installed "
            "TensorRT-LLM's PyTorch sampler ignores penalties; use tensorrt.runtime engine, a "
            "release with sampler penalties, or repetition_penalty 1.0"
        ), {}
    if decoder.do_sample and not per_request_seed:
        return None, {"seed": "the installed TensorRT-LLM's PyTorch sampler ignores "
                              "per-request seeds, so it was not passed"}
    return None, {}


def engine_args(config: ExperimentConfig) -> dict[str, Any]:
    """What the backend hands TensorRT-LLM, computed without it (for `campaign --dry-run`).

    An engine cache or the campaign's compile cache that already holds the engine replaces
    `model` and drops the build settings (see llm_kwargs); which happens is known only on the
    node.
    """
    opts = _options(config)
    call = "tensorrt_llm.LLM" if opts.runtime == "pytorch" else (
        "tensorrt_llm._tensorrt_engine.LLM (tensorrt_llm.LLM before 1.0)")
    return {
        "library": "tensorrt_llm",
        "constructor": {
            "call": call,
            "kwargs": llm_kwargs(config, prebuilt_engine=opts.engine_dir),
        },
        "sampling": {
            "call": "tensorrt_llm.SamplingParams",
            "kwargs": sampling_params_kwargs(config),
        },
        "traffic": opts.traffic.model_dump(),
    }


# Read back from the LLM's resolved arguments (`LLM.args`, tensorrt_llm/llmapi/llm_args.py).
RESOLVED_ARGS = ("backend", "dtype", "tensor_parallel_size", "pipeline_parallel_size",
                 "max_batch_size", "max_num_tokens", "max_seq_len", "max_input_len",
                 "enable_chunked_prefill")
RESOLVED_KV_CACHE = ("enable_block_reuse", "free_gpu_memory_fraction", "dtype", "max_tokens")
RESOLVED_BUILD = ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens")


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def resolved_llm_args(args: Any) -> dict[str, Any]:
    """The settings the LLM runs with, as its LlmArgs resolved them; absent fields left out."""
    resolved: dict[str, Any] = {n: _plain(getattr(args, n)) for n in RESOLVED_ARGS
                                if hasattr(args, n)}
    for key, section, names in (("kv_cache_config", "kv_cache_config", RESOLVED_KV_CACHE),
                                ("build_config", "build_config", RESOLVED_BUILD)):
        found = getattr(args, section, None)
        if found is not None:
            resolved[key] = {n: _plain(getattr(found, n)) for n in names if hasattr(found, n)}
    return resolved


def records_from_outputs(
    outputs: Sequence[Any], prompt_token_counts: Sequence[int], traces: Sequence[StreamTrace]
) -> list[RequestRecord]:
    """One RequestRecord per request, in submission order.

    `outputs` are tensorrt_llm RequestOutput objects (tensorrt_llm/llmapi/llm.py): `.outputs`
    is a list of CompletionOutput (tensorrt_llm/executor/result.py) whose `.token_ids` holds
    the generated ids only (exclude_input_from_output defaults to True).
    """
    if not len(outputs) == len(prompt_token_counts) == len(traces):
        raise ValueError("outputs, prompt_token_counts and traces differ in length")
    records = []
    for index, (output, input_tokens, trace) in enumerate(
        zip(outputs, prompt_token_counts, traces)
    ):
        records.append(record_from_trace(index, input_tokens, len(output.outputs[0].token_ids),
                                         trace))
    return records
