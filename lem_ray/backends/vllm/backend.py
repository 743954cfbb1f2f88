"""vLLM backend: warmup and prefill windows are one LLM.generate call each; the measured
window drives the engine step by step (arrivals.py), or, under `vllm.token_timing:
per_request`, is one LLM.generate call too. vLLM batches continuously in all of them."""

from __future__ import annotations

import os
import time
from typing import Any

from typing_extensions import override

from lem_ray.backends.base import Backend, BackendUnavailable, RequestRecord
from lem_ray.backends.compile_dir import CompileDir, installed_versions
from lem_ray.backends.traffic import (
    EngineLoad,
    SteadyWindow,
    arrival_offsets_s,
    engine_load,
    fit_tokens,
    read_trace,
    steady_window,
    stream_sha256,
)
from lem_ray.backends.vllm.arrivals import drive_arrivals
from lem_ray.backends.vllm.config import VLLMConfig
from lem_ray.backends.vllm.stats import SchedulerTap
from lem_ray.backends.vllm.translate import (
    LORA_NAME,
    engine_kwargs,
    prefix_cache_policy,
    records_from_outputs,
    resolved_engine_config,
    sampling_params_kwargs,
    truncated_token_ids,
)

# The `timing_method` column's values (docs/results.md) this backend can give.
VLLM_ENGINE_STATS = "vllm_engine_stats"
VLLM_REQUEST_STATS = "vllm_request_stats"
HOST_CLOCK = "host_clock"


def _import_vllm() -> Any:
    # Usage-stats reporting is opt-out through the environment, read when vLLM starts
    # (docs.vllm.ai/en/latest/usage/usage_stats.html); setdefault keeps a user's choice.
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    try:
        import vllm
    except ImportError as exc:
        raise BackendUnavailable(
            f"the vllm backend needs vLLM ({exc}); on a machine with an NVIDIA GPU and "
            "CUDA install it with: pip install 'lem-ray[vllm]'"
        ) from None
    return vllm


def visible_gpu_ids(count: int, visible: str | None) -> list[str] | None:
    """The NVML ids of the first `count` GPUs this process may use, or None if unknowable.

    vLLM puts ranks on the first visible devices and, like lem-ray under
    CUDA_DEVICE_ORDER=PCI_BUS_ID, reads CUDA_VISIBLE_DEVICES entries as NVML indices
    (vllm/platforms: device_id_to_physical_device_id); "GPU-..." entries are UUIDs.
    MIG instances ("MIG-...") share a GPU whose used memory is not theirs: None.
    """
    if visible is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in visible.split(",") if e.strip()][:count]
    if len(entries) < count or any(e.startswith("MIG-") for e in entries):
        return None
    return entries


class VLLMBackend(Backend[VLLMConfig]):
    """vLLM's LLM on whole local GPUs: offline batches, or requests arriving at a rate."""

    name = "vllm"
    exclusive = True

    @override
    def load(self) -> None:
        vllm = _import_vllm()
        self._engine_kwargs = engine_kwargs(self.config)
        if self.compiler_versions() is not None:
            compilation = self._engine_kwargs.get("compilation_config") or {}
            self._engine_kwargs["compilation_config"] = {
                **compilation, "cache_dir": self._compile_dir.path}
        self._llm = vllm.LLM(**self._engine_kwargs)
        self._tokenizer = self._llm.get_tokenizer()
        self._tap = SchedulerTap.install(self._llm.llm_engine)
        # SamplingParams' default top_k is the installed version's "off" value (-1 or 0).
        self._sampling_kwargs = sampling_params_kwargs(
            self.config, top_k_off=vllm.SamplingParams().top_k
        )
        self._sampling_cls = vllm.SamplingParams
        self._sampling = vllm.SamplingParams(**self._sampling_kwargs)
        self._lora_request = None
        if self.options.lora is not None:
            from vllm.lora.request import LoRARequest

            self._lora_request = LoRARequest(
                lora_name=LORA_NAME, lora_int_id=1, lora_path=self.options.lora.path
            )

    def configure(self, config: Any) -> None:
        """Decoder and output bounds are per-request SamplingParams."""
        super().configure(config)
        self._sampling_kwargs = sampling_params_kwargs(
            config, top_k_off=self._sampling_cls().top_k
        )
        self._sampling = self._sampling_cls(**self._sampling_kwargs)

    @property
    def warmup_batch_size(self) -> int:
        """A few concurrent requests, so warmup runs batched decode like the measured runs,
        capped at 8 to keep warmup short; never more than the engine would run at once."""
        return min(self.options.max_num_seqs, 8)

    def generate(
        self, prompts: list[str], max_output_tokens: int | None = None
    ) -> list[RequestRecord]:
        """All prompts go in one LLM.generate call; vLLM's scheduler batches them
        continuously (at most max_num_seqs at once), as a serving engine would."""
        token_ids = truncated_token_ids(self._tokenizer, prompts, self.config.max_input_tokens)
        if self.options.enable_prefix_caching:
            # Each call is one window (warmup step, measurement, prefill pass) sending the
            # same prompts again: a cold cache keeps the windows from measuring cache hits.
            self._llm.reset_prefix_cache()
        requests = [{"prompt_token_ids": ids} for ids in token_ids]
        sampling = self._sampling
        if max_output_tokens is not None:
            most, least = self.output_bounds(max_output_tokens)
            sampling = self._sampling_cls(
                **{**self._sampling_kwargs, "max_tokens": most, "min_tokens": least}
            )
        start = time.perf_counter()
        outputs = self._llm.generate(
            requests, sampling, use_tqdm=False, lora_request=self._lora_request
        )
        end = time.perf_counter()
        return records_from_outputs(outputs, [len(ids) for ids in token_ids], start, end)

    def measure(self, prompts: list[str]) -> list[RequestRecord]:
        """per_token: the engine is driven step by step (arrivals.py), so each token keeps
        vLLM's own time: offline sends every prompt before the first step, as LLM.generate
        does; constant / poisson / gamma / trace send each at its arrival time and keep the
        steady-state window. per_request (offline only, config.py): one plain LLM.generate
        call, so the window is exactly what a user's call costs; each request timed from its
        final stats. Both read the scheduler's load over the window (stats.SchedulerTap)."""
        traffic = self.options.traffic
        self._steady: SteadyWindow | None = None
        self._load: EngineLoad | None = None
        self._stream: str | None = None
        if self._tap is not None:
            self._tap.start()
        if self.options.token_timing == "per_request":
            records = self.generate(prompts)
            stats = all(r.ttft_ms is not None for r in records)
            self._timing = VLLM_REQUEST_STATS if records and stats else HOST_CLOCK
            self._load_over()
            return records
        from vllm.sampling_params import RequestOutputKind

        token_ids = truncated_token_ids(self._tokenizer, prompts, self.config.max_input_tokens)
        if self.options.enable_prefix_caching:
            self._llm.reset_prefix_cache()
        outputs: list[int | None] = [None] * len(prompts)
        if traffic.mode == "trace":
            assert traffic.trace is not None, "TrafficConfig refuses trace mode without a trace"
            trace = read_trace(traffic.trace)
            if len(trace) != len(prompts):
                raise ValueError(f"traffic.trace has {len(trace)} requests for {len(prompts)} "
                                 f"measured prompts; set prompts.count to {len(trace)}")
            offsets, outputs = trace.arrival_s, list(trace.output_tokens)
            token_ids = [fit_tokens(ids, n) for ids, n in zip(token_ids, trace.input_tokens)]
            sampling: Any = [self._sampling_cls(**{**self._sampling_kwargs, "max_tokens": n,
                                                   "min_tokens": n},
                                                output_kind=RequestOutputKind.DELTA)
                             for n in trace.output_tokens]
        else:
            offsets = arrival_offsets_s(traffic.mode, len(prompts), traffic.rate_rps,
                                        traffic.seed, traffic.burstiness)
            sampling = self._sampling_cls(**self._sampling_kwargs,
                                          output_kind=RequestOutputKind.DELTA)
        self._stream = stream_sha256(offsets, token_ids, outputs)
        run = drive_arrivals(self._llm.llm_engine,
                             [{"prompt_token_ids": ids} for ids in token_ids], offsets,
                             sampling, lora_request=self._lora_request)
        self._timing = VLLM_ENGINE_STATS if run.engine_timed else HOST_CLOCK
        if traffic.mode != "offline":
            self._steady = steady_window(run.in_flight, run.finished_s, run.last_arrival_s,
                                         run.token_times_s, self.options.max_num_seqs,
                                         traffic.steady_after_responses)
        self._load_over()
        return run.records([len(ids) for ids in token_ids])

    def _load_over(self) -> None:
        """The scheduler's load over the steady window under traffic (without one, none),
        over the whole measured window offline."""
        steps = self._tap.stop() if self._tap is not None else []
        offline = self.options.traffic.mode == "offline"
        if offline or self._steady is not None:
            self._load = engine_load(steps, offline, self._steady)

    @override
    def engine_load(self) -> EngineLoad | None:
        return getattr(self, "_load", None)

    def stream_sha256(self) -> str | None:
        """The request stream the last step-driven window sent (arrivals, prompt token ids,
        trace output lengths); None for a per_request window or before any."""
        return getattr(self, "_stream", None)

    @property
    def timing_method(self) -> str | None:
        """per_token: `vllm_engine_stats` when every measured request was timed by vLLM's
        own stats (see arrivals.EngineTimes), else `host_clock` (tokens stamped as they
        reached this process). per_request: `vllm_request_stats` (each request's final
        stats: TTFT, e2e, mean gap), else `host_clock` (the call's span as e2e, no TTFT).
        None before a measured window."""
        return getattr(self, "_timing", None)

    @override
    def steady_window(self) -> SteadyWindow | None:
        return getattr(self, "_steady", None)

    def synchronize(self) -> None:
        """LLM.generate returns only once every request has finished and its tokens are on
        the host, so there is no queued work to wait for from here. In V1 the model runs in
        an engine-core process; calling torch.cuda in this process would only create a
        CUDA context (GPU memory) here. Only an engine running in-process (V0, or
        VLLM_ENABLE_V1_MULTIPROCESSING=0) has initialised CUDA here; then sync it."""
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def memory_gpu_ids(self) -> list[str] | None:
        """The experiment's GPUs, whose NVML used memory after the run is the engine's peak.

        torch's allocator counters would be wrong: the weights and KV cache live in vLLM's
        worker processes. vLLM reserves its KV cache up front and its workers' caching
        allocators keep what they took, so memory used now is the peak of the run. NVML
        counts every process on those GPUs, so it assumes they are this experiment's alone.
        """
        return visible_gpu_ids(
            self.config.gpus_per_experiment, os.environ.get("CUDA_VISIBLE_DEVICES")
        )

    @property
    def _compile_dir(self) -> CompileDir:
        if not hasattr(self, "_own_compile_dir"):
            self._own_compile_dir = CompileDir("lem-ray-vllm-compile-")
        return self._own_compile_dir

    def compiler_versions(self) -> dict[str, str] | None:
        """vLLM compiles the model (torch.compile, Inductor) unless enforce_eager; a
        compilation_config of the user's own (extra_engine_args) other than a dict, or naming
        its own cache_dir, is left alone. CUDA graphs are captured at every start either way:
        the cache holds the compiled code, not the graphs."""
        compilation = self.options.extra_engine_args.get("compilation_config", {})
        if self.options.enforce_eager or not isinstance(compilation, dict) or (
            "cache_dir" in compilation
        ):
            return None
        return installed_versions("vllm", "torch", "triton", "transformers")

    def use_compiled(self, artifact: bytes) -> None:
        """vLLM's compile cache directory as an earlier engine of the key left it."""
        self._compile_dir.unpack(artifact)

    @override
    def compiled_artifact(self) -> bytes | None:
        return self._compile_dir.pack()

    @override
    def versions(self) -> dict[str, str]:
        import torch

        vllm = _import_vllm()
        return {"vllm": vllm.__version__, "torch": torch.__version__}

    @override
    def details(self) -> dict[str, Any]:
        engine = self._llm.llm_engine
        return {
            "engine": f"{type(engine).__module__}.{type(engine).__name__}",
            "max_model_len": engine.model_config.max_model_len,
            "engine_kwargs": self._engine_kwargs,
            "sampling_params": self._sampling_kwargs,
            "prefix_cache": prefix_cache_policy(self.config),
        }

    def engine_config(self) -> dict[str, Any] | None:
        """Read back from the running engine: vLLM may have overridden what was asked."""
        vllm_config = getattr(self._llm.llm_engine, "vllm_config", None)
        return None if vllm_config is None else resolved_engine_config(vllm_config)

    def release(self) -> None:
        """Stop the engine and free its GPU memory, the way vLLM's maintainers advise.

        V1's LLMEngine holds an engine-core client whose shutdown() stops the engine-core
        process (V0 has none). cleanup_dist_env_and_memory (vllm.distributed.parallel_state,
        0.8 to current) destroys the parallel groups, then gc-collects and empties the CUDA
        cache itself.
        """
        self._compile_dir.remove()
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        self._llm = None
        engine_core = getattr(llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        del llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
