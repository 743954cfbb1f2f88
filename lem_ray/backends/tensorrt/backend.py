"""TensorRT-LLM backend: builds or loads an engine through the LLM API and streams every prompt.

All prompts are submitted at once with generate_async(streaming=True); TensorRT-LLM's
in-flight batching runs up to max_batch_size of them together, and each streamed chunk is
timestamped as it reaches this process, which gives measured TTFT and inter-token gaps.
Which LLM class runs depends on the installed version (see `llm_class`).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import importlib.util
import os
import time
from typing import Any

from typing_extensions import override

from lem_ray.backends.base import Backend, BackendUnavailable, DeviceInfo, RequestRecord
from lem_ray.backends.compile_dir import CompileDir, installed_versions
from lem_ray.backends.streaming import StreamTrace
from lem_ray.backends.tensorrt.config import TensorRTConfig
from lem_ray.backends.tensorrt.library import (
    device_name,
    import_trtllm,
    llm_class,
    materialise,
    sampler_features,
    save_engine,
    torch_or_none,
)
from lem_ray.backends.tensorrt.translate import (
    EnginePlan,
    build_settings,
    calibration_refusal,
    engine_cache_key,
    engine_plan,
    engine_ready,
    llm_kwargs,
    records_from_outputs,
    resolved_llm_args,
    sampling_params_kwargs,
    unsupported_sampling,
)
from lem_ray.backends.traffic import (
    SteadyWindow,
    arrival_offsets_s,
    in_flight_from_traces,
    steady_window,
)
from lem_ray.config.experiment import ExperimentConfig

PEAK_MEMORY_NOTE = (
    "not reported: TensorRT-LLM allocates engine, activation and KV-cache memory through "
    "TensorRT and its C++ pools, often in worker processes, so torch's counters in this process "
    "miss it; use the GPU telemetry (NVML) instead"
)
COMPILER_DISTRIBUTIONS = ("tensorrt_llm", "tensorrt", "torch", "nvidia-cuda-runtime-cu12",
                          "nvidia-cuda-runtime")
"""What builds an engine, by installed distribution: TensorRT-LLM (its plugins), TensorRT (an
engine runs only under the TensorRT that built it), torch, and the CUDA runtime where pip
installed it (the -cu12 name up to CUDA 12, the plain name from CUDA 13)."""
TIMING_NOTE = (
    "client-side time.perf_counter at each streamed chunk's arrival; tokens delivered in one "
    "chunk share its arrival time"
)


class TensorRTBackend(Backend[TensorRTConfig]):
    """TensorRT-LLM's LLM API on whole local GPUs, its engine built or read from the cache."""

    name = "tensorrt"
    exclusive = True
    artifact_is_file = True

    def __init__(self, config: ExperimentConfig, device: DeviceInfo) -> None:
        super().__init__(config, device)
        self._llm: Any = None
        self._sampling_params: Any = None
        self._details: dict[str, Any] = {}
        self._plan: EnginePlan | None = None
        self._engine = CompileDir("lem-ray-trt-engine-")
        """The engine's local folder: unpacked from the compile cache, or saved there by a
        build to be packed for it."""
        self._compiled: str | None = None

    @override
    def load(self) -> None:
        if self.device.kind != "cuda":
            raise BackendUnavailable(f"tensorrt needs NVIDIA GPUs, got device {self.device.kind!r}")
        if self.device.gpu_count < self.options.parallel_gpus:
            raise BackendUnavailable(
                f"tensorrt needs {self.options.parallel_gpus} GPUs (tensor x pipeline parallel), "
                f"{self.device.gpu_count} visible"
            )
        refusal = calibration_refusal(self.config, os.environ)
        if refusal is not None:
            raise BackendUnavailable(refusal)
        trtllm = import_trtllm()
        from tensorrt_llm import SamplingParams, llmapi

        not_applied: dict[str, str] = {}
        if self.options.runtime == "pytorch":
            penalties, seed = sampler_features()
            refusal, not_applied = unsupported_sampling(
                self.config, penalties=penalties, per_request_seed=seed
            )
            if refusal is not None:
                raise BackendUnavailable(refusal)

        llm_cls = llm_class(self.options.runtime, trtllm)
        key = None
        if self.options.runtime == "engine" and self.options.engine_cache_dir is not None:
            key = engine_cache_key(
                self.config, trtllm_version=trtllm.__version__, device_name=device_name()
            )
        plan = self._plan = engine_plan(self.config, key, self._compiled)
        kwargs = llm_kwargs(self.config, prebuilt_engine=plan.load)
        sampling = {k: v for k, v in sampling_params_kwargs(self.config).items()
                    if k not in not_applied}
        started = time.perf_counter()
        self._llm = llm_cls(**materialise(kwargs, llmapi))
        load_s = time.perf_counter() - started
        if plan.save_to is not None:
            provenance = {
                "build": build_settings(self.config),
                "tensorrt_llm": trtllm.__version__,
                "cache_key": key,
            }
            save_engine(self._llm, plan.save_to, provenance)
        self._sampling_cls = SamplingParams
        self._sampling_kwargs = sampling
        self._sampling_params = SamplingParams(**sampling)
        self._details = {
            "runtime": self.options.runtime,
            "llm_class": f"{llm_cls.__module__}.{llm_cls.__qualname__}",
            "engine_source": plan.source,
            "engine_path": plan.load or plan.save_to,
            "engine_cache_key": key,
            "load_s": load_s,
            "llm_kwargs": kwargs,
            "sampling_params": sampling,
            "sampling_not_applied": not_applied,
            "prompt_truncation": "first max_input_tokens tokens of the tokenized prompt",
            "timing": TIMING_NOTE,
            "peak_memory": PEAK_MEMORY_NOTE,
        }

    def configure(self, config: ExperimentConfig) -> None:
        """Decoder and output bounds are per-request SamplingParams."""
        super().configure(config)
        self._sampling_kwargs = sampling_params_kwargs(config)
        self._sampling_params = self._sampling_cls(**self._sampling_kwargs)
        self._details["sampling_params"] = self._sampling_kwargs

    @override
    def generate(
        self, prompts: list[str], max_output_tokens: int | None = None
    ) -> list[RequestRecord]:
        token_ids = [self._encode(index, prompt) for index, prompt in enumerate(prompts)]
        sampling = self._sampling_params
        if max_output_tokens is not None:
            most, least = self.output_bounds(max_output_tokens)
            limits = {"max_tokens": most, **({"min_tokens": least} if least else {})}
            kwargs = {k: v for k, v in self._sampling_kwargs.items() if k != "min_tokens"}
            sampling = self._sampling_cls(**kwargs, **limits)
        return self._run(token_ids, sampling, [0.0] * len(token_ids))

    def measure(self, prompts: list[str]) -> list[RequestRecord]:
        """Offline: every prompt at once, as generate(). constant / poisson / gamma: each request is
        submitted at its arrival time, and the steady-state window is kept."""
        traffic = self.options.traffic
        self._steady = None
        if traffic.mode == "offline":
            return self.generate(prompts)
        token_ids = [self._encode(index, prompt) for index, prompt in enumerate(prompts)]
        offsets = arrival_offsets_s(traffic.mode, len(prompts), traffic.rate_rps, traffic.seed,
                                    traffic.burstiness)
        records = self._run(token_ids, self._sampling_params, offsets)
        traces = self._last_traces
        ends = [t.end_s for t in traces if t.end_s is not None]
        self._steady = steady_window(
            in_flight_from_traces([t.start_s for t in traces], ends), ends,
            max(t.start_s for t in traces), [x for t in traces for x in t.token_times],
            self.options.max_batch_size, traffic.steady_after_responses, "max_batch_size",
        )
        return records

    @override
    def steady_window(self) -> SteadyWindow | None:
        return getattr(self, "_steady", None)

    def _run(self, token_ids: list[list[int]], sampling: Any,
             offsets_s: list[float]) -> list[RequestRecord]:
        results = asyncio.run(self._stream_all(token_ids, sampling, offsets_s))
        self._last_traces = [trace for _, trace in results]
        return records_from_outputs(
            [output for output, _ in results],
            [len(ids) for ids in token_ids],
            self._last_traces,
        )

    def _encode(self, index: int, prompt: str) -> list[int]:
        """Tokenize with the LLM's own tokenizer, so the count is what the engine receives."""
        if self._llm is None:
            raise RuntimeError("TensorRTBackend.generate called before load()")
        ids = list(self._llm.tokenizer.encode(prompt))[: self.config.max_input_tokens]
        if not ids:
            raise ValueError(f"prompt {index} tokenizes to nothing")
        return ids

    async def _stream_all(
        self, token_ids: list[list[int]], sampling: Any, offsets_s: list[float]
    ) -> list[tuple[Any, StreamTrace]]:
        start = time.perf_counter()
        return list(await asyncio.gather(*(
            self._stream_one(ids, sampling, start + offset)
            for ids, offset in zip(token_ids, offsets_s)
        )))

    async def _stream_one(
        self, ids: list[int], sampling: Any, send_at_s: float
    ) -> tuple[Any, StreamTrace]:
        """Submitted at send_at_s (perf_counter); its clock starts then, not before."""
        wait_s = send_at_s - time.perf_counter()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        trace = StreamTrace(start_s=time.perf_counter())
        result = self._llm.generate_async(ids, sampling_params=sampling, streaming=True)
        async for chunk in result:
            trace.observe(time.perf_counter(), len(chunk.outputs[0].token_ids))
        trace.end_s = time.perf_counter()
        return result, trace

    @property
    def warmup_batch_size(self) -> int:
        """Up to 8 prompts at once: enough to exercise in-flight batching (and, on the PyTorch
        runtime, its CUDA graphs for small batches) without a long warmup on large models."""
        return min(self.options.max_batch_size, 8)

    def synchronize(self) -> None:
        """Waits on this process's GPU work; generate() itself returns only after every
        request's final response, so the engine's work for them is already done."""
        torch = torch_or_none()
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()

    def peak_memory_mib(self) -> float | None:
        """None: see PEAK_MEMORY_NOTE, also recorded in details()."""
        return None

    def compiler_versions(self) -> dict[str, str] | None:
        """The engine runtime builds a TensorRT engine in load(): the whole engine is the
        artifact, built once per compile key. None where the user chose where engines live
        (engine_dir, engine_cache_dir: their choice wins), and for the PyTorch runtime, which
        builds no engine."""
        opts = self.options
        if opts.runtime != "engine" or opts.engine_dir is not None or (
            opts.engine_cache_dir is not None
        ):
            return None
        return installed_versions(*COMPILER_DISTRIBUTIONS)

    def use_compiled_file(self, path: str) -> None:
        """The engine folder an earlier engine of the key saved (a tar), unpacked locally:
        load() reads the engine from there instead of building one."""
        try:
            self._engine.unpack_file(path)
            if not engine_ready(self._engine.path, self.options.parallel_gpus):
                raise ValueError(
                    f"no engine for {self.options.parallel_gpus} GPU(s) in the archive")
        except BaseException:
            self._engine.remove()
            raise
        self._compiled = self._engine.path

    def compiled_file(self, directory: str) -> str | None:
        """The engine load() built, saved by the LLM API (llm.save) and packed as a tar into
        directory; None when it loaded one instead."""
        if self._llm is None or self._plan is None or self._plan.source != "build":
            return None
        try:
            self._llm.save(self._engine.path)
            return self._engine.pack_file(os.path.join(directory, "engine.tar"))
        finally:
            self._engine.remove()

    @override
    def versions(self) -> dict[str, str]:
        found = {}
        for dist in ("tensorrt_llm", "tensorrt", "torch"):
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return found

    @override
    def details(self) -> dict[str, Any]:
        return dict(self._details)

    def engine_config(self) -> dict[str, Any] | None:
        """The LLM's resolved arguments (`LLM.args`), where this version exposes them."""
        args = getattr(self._llm, "args", None)
        return None if args is None else resolved_llm_args(args)

    @override
    def release(self) -> None:
        if self._llm is not None:
            shutdown = getattr(self._llm, "shutdown", None)
            if callable(shutdown):
                shutdown()
            self._llm = None
        self._sampling_params = None
        self._engine.remove()
        self._compiled = None
        gc.collect()
        torch = torch_or_none()
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
