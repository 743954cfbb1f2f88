"""Stand-ins for vllm.LLM / SamplingParams and tensorrt_llm.LLM / SamplingParams that accept
only the parameter names the real classes accept, so a misspelt argument fails the test.

The name lists are copied from the libraries' source (reference, not imported):
- vLLM 0.26.0 (the release that runs on the H200 machine): the parameters of `LLM.__init__`
  (vllm/entrypoints/llm.py), whose **kwargs become `EngineArgs` fields (the dataclass in
  vllm/engine/arg_utils.py, private fields left out), and the public fields of the
  `SamplingParams` struct (vllm/sampling_params.py), read from the 0.26.0 wheel.
- TensorRT-LLM: `LLM(...)` validates its keyword arguments into LlmArgs
  (tensorrt_llm/llmapi/llm_args.py: BaseLlmArgs, TrtLlmArgs, TorchLlmArgs), KvCacheConfig,
  CalibConfig, BuildConfig (tensorrt_llm/builder.py) and `SamplingParams`
  (tensorrt_llm/sampling_params.py), 0.20 to 1.x.
Only names are checked here; the tests assert the values.
"""

from __future__ import annotations

from typing import Any

from lem_ray.config.experiment import ExperimentConfig

VLLM_LLM_PARAMS = frozenset({
    "model", "runner", "convert", "tokenizer", "tokenizer_mode", "skip_tokenizer_init",
    "trust_remote_code", "allowed_local_media_path", "allowed_media_domains",
    "tensor_parallel_size", "dtype", "quantization", "revision", "tokenizer_revision",
    "chat_template", "seed", "gpu_memory_utilization", "cpu_offload_gb",
    "offload_group_size", "offload_num_in_group", "offload_prefetch_step", "offload_params",
    "enforce_eager", "enable_return_routed_experts", "disable_custom_all_reduce",
    "hf_token", "hf_overrides", "mm_processor_kwargs", "pooler_config",
    "structured_outputs_config", "profiler_config", "attention_config",
    "kv_cache_memory_bytes", "compilation_config", "quantization_config",
    "logits_processors", "spec_method", "spec_model", "spec_tokens"
})

VLLM_ENGINE_ARGS = frozenset({
    "model", "enable_return_routed_experts", "model_weights", "served_model_name",
    "tokenizer", "hf_config_path", "runner", "convert", "skip_tokenizer_init",
    "enable_prompt_embeds", "tokenizer_mode", "trust_remote_code",
    "allowed_local_media_path", "allowed_media_domains", "download_dir",
    "safetensors_load_strategy", "safetensors_prefetch_num_threads",
    "safetensors_prefetch_block_size", "load_format", "config_format", "dtype",
    "kv_cache_dtype", "seed", "max_model_len", "cudagraph_capture_sizes",
    "max_cudagraph_capture_size", "ir_op_priority", "distributed_executor_backend",
    "pipeline_parallel_size", "master_addr", "master_port", "nnodes", "node_rank",
    "distributed_timeout_seconds", "cpu_distributed_timeout_seconds", "numa_bind",
    "numa_bind_nodes", "numa_bind_cpus", "device_ids", "tensor_parallel_size",
    "prefill_context_parallel_size", "decode_context_parallel_size", "dcp_comm_backend",
    "dcp_kv_cache_interleave_size", "cp_kv_cache_interleave_size", "data_parallel_size",
    "data_parallel_rank", "data_parallel_start_rank", "data_parallel_size_local",
    "data_parallel_address", "data_parallel_rpc_port", "data_parallel_hybrid_lb",
    "data_parallel_external_lb", "data_parallel_multi_port_external_lb",
    "data_parallel_backend", "enable_expert_parallel", "enable_ep_weight_filter",
    "moe_backend", "linear_backend", "all2all_backend", "enable_elastic_ep", "enable_dbo",
    "ubatch_size", "dbo_decode_token_threshold", "dbo_prefill_token_threshold",
    "disable_nccl_for_dp_synchronization", "eplb_config", "enable_eplb",
    "expert_placement_strategy", "max_parallel_loading_workers", "block_size",
    "enable_prefix_caching", "prefix_caching_hash_algo", "disable_sliding_window",
    "disable_cascade_attn", "offload_backend", "cpu_offload_gb", "cpu_offload_params",
    "offload_group_size", "offload_num_in_group", "offload_prefetch_step", "offload_params",
    "gpu_memory_utilization", "kv_cache_memory_bytes", "max_num_batched_tokens",
    "max_num_scheduled_tokens", "max_num_partial_prefills", "max_long_partial_prefills",
    "long_prefill_token_threshold", "max_num_seqs", "max_logprobs", "logprobs_mode",
    "use_fp64_gumbel", "disable_log_stats", "aggregate_engine_logging", "revision",
    "code_revision", "hf_token", "hf_overrides", "model_class_overrides",
    "tokenizer_revision", "quantization", "quantization_config",
    "allow_deprecated_quantization", "enforce_eager", "disable_custom_all_reduce",
    "language_model_only", "limit_mm_per_prompt", "enable_mm_embeds",
    "interleave_mm_strings", "media_io_kwargs", "mm_processor_kwargs",
    "mm_processor_cache_gb", "mm_processor_cache_type", "mm_shm_cache_max_object_size_mb",
    "mm_encoder_only", "mm_encoder_tp_mode", "mm_encoder_attn_backend",
    "mm_encoder_attn_dtype", "mm_encoder_fp8_scale_path", "mm_encoder_fp8_scale_save_path",
    "mm_encoder_fp8_scale_save_margin", "io_processor_plugin", "renderer_num_workers",
    "skip_mm_profiling", "video_pruning_rate", "mm_tensor_ipc", "mm_ipc_gpu_memory_gb",
    "enable_lora", "max_loras", "max_lora_rank", "default_mm_loras", "fully_sharded_loras",
    "max_cpu_loras", "lora_dtype", "lora_target_modules", "enable_tower_connector_lora",
    "specialize_active_lora", "enable_mixed_moe_lora_format", "enable_moe_shared_loras",
    "ray_workers_use_nsight", "num_gpu_blocks_override", "model_loader_extra_config",
    "ignore_patterns", "enable_chunked_prefill", "disable_chunked_mm_input",
    "scheduler_reserve_full_isl", "prefill_schedule_interval", "watermark",
    "disable_hybrid_kv_cache_manager", "structured_outputs_config", "reasoning_parser",
    "reasoning_parser_plugin", "speculative_config", "spec_method", "spec_model",
    "spec_tokens", "diffusion_config", "show_hidden_metrics_for_version",
    "otlp_traces_endpoint", "collect_detailed_traces", "kv_cache_metrics",
    "kv_cache_metrics_sample", "cudagraph_metrics", "enable_layerwise_nvtx_tracing",
    "enable_mfu_metrics", "enable_logging_iteration_details", "jit_monitor_mode",
    "jit_monitor_verbose", "enable_mm_processor_stats", "scheduling_policy",
    "scheduler_cls", "pooler_config", "compilation_config", "attention_config",
    "mamba_config", "kernel_config", "enable_flashinfer_autotune",
    "enable_bf16x3_router_gemm", "worker_cls", "worker_extension_cls", "profiler_config",
    "kv_transfer_config", "kv_events_config", "ec_transfer_config", "reasoning_config",
    "generation_config", "enable_sleep_mode", "enable_cumem_allocator",
    "override_generation_config", "model_impl", "override_attention_dtype",
    "attention_backend", "calculate_kv_scales", "kv_cache_dtype_skip_layers",
    "mamba_cache_dtype", "mamba_ssm_cache_dtype", "mamba_block_size", "prefix_match_unit",
    "mamba_cache_mode", "mamba_backend", "enable_mamba_cache_stochastic_rounding",
    "mamba_cache_philox_rounds", "additional_config", "use_tqdm_on_load",
    "pt_load_map_location", "logits_processors", "async_scheduling", "stream_interval",
    "kv_sharing_fast_prefill", "optimization_level", "performance_mode",
    "kv_offloading_size", "kv_offloading_backend", "tokens_only", "shutdown_timeout",
    "weight_transfer_config", "fail_on_environ_validation", "gdn_prefill_backend"
})

VLLM_SAMPLING_PARAMS = frozenset({
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature",
    "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens",
    "min_tokens", "logprobs", "prompt_logprobs", "logprob_token_ids", "flat_logprobs",
    "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
    "include_stop_str_in_output", "output_kind", "skip_clone", "output_text_buffer_length",
    "structured_outputs", "logit_bias", "allowed_token_ids", "extra_args",
    "routed_experts_prompt_start", "bad_words", "skip_reading_prefix_cache",
    "thinking_token_budget", "repetition_detection"
})

TRTLLM_LLM_ARGS = frozenset({
    "model", "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code",
    "tensor_parallel_size", "dtype", "revision", "tokenizer_revision",
    "pipeline_parallel_size", "context_parallel_size", "gpus_per_node",
    "moe_cluster_parallel_size", "moe_tensor_parallel_size", "moe_expert_parallel_size",
    "enable_attention_dp", "cp_config", "load_format", "enable_lora", "max_lora_rank",
    "max_loras", "max_cpu_loras", "lora_config", "enable_prompt_adapter",
    "max_prompt_adapter_token", "quant_config", "kv_cache_config", "enable_chunked_prefill",
    "guided_decoding_backend", "batched_logits_processor", "iter_stats_max_iterations",
    "request_stats_max_iterations", "peft_cache_config", "scheduler_config",
    "cache_transceiver_config", "speculative_config", "batching_type", "normalize_log_probs",
    "max_batch_size", "max_input_len", "max_seq_len", "max_beam_width", "max_num_tokens",
    "gather_generation_logits", "num_postprocess_workers", "postprocess_tokenizer_dir",
    "reasoning_parser", "garbage_collection_gen0_threshold", "backend", "build_config",
    "calib_config", "embedding_parallel_mode", "fast_build", "enable_build_cache",
    "extended_runtime_perf_knob_config", "workspace", "auto_parallel",
    "auto_parallel_world_size", "decoding_config",
})
TRTLLM_KV_CACHE_CONFIG = frozenset({
    "enable_block_reuse", "max_tokens", "max_attention_window", "sink_token_length",
    "free_gpu_memory_fraction", "host_cache_size", "onboard_blocks",
    "cross_kv_cache_fraction", "secondary_offload_min_priority", "event_buffer_max_size",
    "enable_partial_reuse", "copy_on_partial_reuse", "use_uvm", "dtype",
})
TRTLLM_CALIB_CONFIG = frozenset({
    "device", "calib_dataset", "calib_batches", "calib_batch_size", "calib_max_seq_length",
    "random_seed", "tokenizer_max_seq_length",
})
TRTLLM_BUILD_CONFIG = frozenset({
    "max_input_len", "max_seq_len", "opt_batch_size", "max_batch_size", "max_beam_width",
    "max_num_tokens", "opt_num_tokens", "max_prompt_embedding_table_size",
    "kv_cache_type", "gather_context_logits", "gather_generation_logits", "strongly_typed",
    "force_num_profiles", "profiling_verbosity", "enable_debug_output", "max_draft_len",
    "speculative_decoding_mode", "use_refit", "input_timing_cache", "output_timing_cache",
    "lora_config", "auto_parallel_config", "weight_sparsity", "weight_streaming",
    "plugin_config", "use_strip_plan", "max_encoder_input_len", "monitor_memory",
    "use_mrope",
})
TRTLLM_QUANT_CONFIG = frozenset({
    "quant_algo", "kv_cache_quant_algo", "group_size", "smoothquant_val", "clamp_val",
    "use_meta_recipe", "has_zero_point", "pre_quant_scale", "exclude_modules",
})
TRTLLM_SAMPLING_PARAMS = frozenset({
    "end_id", "pad_id", "max_tokens", "bad", "bad_token_ids", "stop", "stop_token_ids",
    "include_stop_str_in_output", "embedding_bias", "logits_processor",
    "apply_batched_logits_processor", "n", "best_of", "use_beam_search", "top_k", "top_p",
    "top_p_min", "top_p_reset_ids", "top_p_decay", "seed", "temperature", "min_tokens",
    "beam_search_diversity_rate", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "length_penalty", "early_stopping", "no_repeat_ngram_size",
    "min_p", "beam_width_array", "logprobs", "prompt_logprobs", "return_context_logits",
    "return_generation_logits", "exclude_input_from_output", "return_encoder_output",
    "return_perf_metrics", "additional_model_outputs", "lookahead_config",
    "guided_decoding", "ignore_eos", "detokenize", "add_special_tokens",
    "truncate_prompt_tokens", "skip_special_tokens", "spaces_between_special_tokens",
})


def check_names(what: str, given: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise TypeError(f"{what} got unexpected keyword arguments {unknown}")


class StrictKwargs:
    """Keeps the keyword arguments it was built with, after checking their names."""

    allowed: frozenset[str] = frozenset()
    what = ""

    def __init__(self, **kwargs: Any) -> None:
        check_names(self.what, kwargs, self.allowed)
        self.kwargs = kwargs
        for name, value in kwargs.items():
            setattr(self, name, value)


class VLLMSamplingParams(StrictKwargs):
    allowed = VLLM_SAMPLING_PARAMS
    what = "vllm.SamplingParams"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.top_k = kwargs.get("top_k", 0)  # vLLM >= 0.9's default, its "no top-k"


def check_vllm_llm_kwargs(kwargs: dict[str, Any]) -> None:
    """LLM(model, *, <its own params>, **EngineArgs fields)."""
    if "model" not in kwargs:
        raise TypeError("vllm.LLM missing required argument 'model'")
    check_names("vllm.LLM", kwargs, VLLM_LLM_PARAMS | VLLM_ENGINE_ARGS)


class TrtKvCacheConfig(StrictKwargs):
    allowed = TRTLLM_KV_CACHE_CONFIG
    what = "tensorrt_llm.llmapi.KvCacheConfig"


class TrtCalibConfig(StrictKwargs):
    allowed = TRTLLM_CALIB_CONFIG
    what = "tensorrt_llm.llmapi.CalibConfig"


class TrtBuildConfig(StrictKwargs):
    allowed = TRTLLM_BUILD_CONFIG
    what = "tensorrt_llm.llmapi.BuildConfig"


class TrtQuantConfig(StrictKwargs):
    allowed = TRTLLM_QUANT_CONFIG
    what = "tensorrt_llm.llmapi.QuantConfig"


class TrtSamplingParams(StrictKwargs):
    allowed = TRTLLM_SAMPLING_PARAMS
    what = "tensorrt_llm.SamplingParams"


def check_trtllm_llm_kwargs(kwargs: dict[str, Any]) -> None:
    if "model" not in kwargs:
        raise TypeError("tensorrt_llm.LLM missing required argument 'model'")
    check_names("tensorrt_llm.LLM", kwargs, TRTLLM_LLM_ARGS)


# vLLM's per-step stats (vllm/v1/metrics/stats.py): the attributes each object has, so reading
# a misspelt or absent one fails here as it would there. Read from vLLM's V1 source of the
# 0.2x releases (not from the 0.26.0 wheel itself, which is not on this machine); the four
# lem-ray reads, num_running_reqs, num_waiting_reqs, kv_cache_usage and num_preempted_reqs,
# are in every V1 release since kv_cache_usage replaced gpu_cache_usage.
VLLM_SCHEDULER_STATS = (
    "num_running_reqs", "num_waiting_reqs", "step_counter", "current_wave", "kv_cache_usage",
    "prefix_cache_stats", "connector_prefix_cache_stats", "spec_decoding_stats",
    "kv_connector_stats",
)
VLLM_ITERATION_STATS = (
    "iteration_timestamp", "num_generation_tokens", "prompt_token_stats", "num_preempted_reqs",
    "finished_requests", "max_num_generation_tokens_iter", "n_params_iter",
    "time_to_first_tokens_iter", "inter_token_latencies_iter", "waiting_lora_adapters",
    "running_lora_adapters", "num_corrupted_reqs",
)


class _Slotted:
    """Only the named attributes exist; each defaults to None unless given."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, values.pop(name, None))
        if values:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(values)}")


class VLLMSchedulerStats(_Slotted):
    __slots__ = VLLM_SCHEDULER_STATS


class VLLMIterationStats(_Slotted):
    __slots__ = VLLM_ITERATION_STATS


class VLLMStatLoggerManager:
    """vllm.v1.metrics.loggers.StatLoggerManager as LLMEngine.step() calls it: record() with
    keyword arguments only (scheduler_stats=, iteration_stats=, mm_cache_stats=)."""

    def __init__(self) -> None:
        self.recorded: list[tuple[Any, Any]] = []

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        self.recorded.append((scheduler_stats, iteration_stats))


def vllm_config(**vllm: Any) -> ExperimentConfig:
    """A vLLM experiment of the tiny model with these `vllm:` options."""
    return ExperimentConfig.model_validate(
        {"model_name": "builtin:tiny-llama", "backend": "vllm", "vllm": vllm})
