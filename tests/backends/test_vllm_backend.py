"""vLLM backend: config -> vLLM kwargs, vLLM outputs -> records, and the backend's wiring.

Everything but the last test runs without vLLM: the stand-ins below copy the shapes of
vllm.outputs.RequestOutput / CompletionOutput, V1's RequestStateStats (vllm/v1/metrics/
stats.py) and V0's RequestMetrics (vllm/sequence.py), field for field; LLM and
SamplingParams stand-ins accept only the real parameter names (tests/fakes/llm_apis.py).
"""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pytest
from pydantic import ValidationError

from lem_ray.assets import resolve_model
from lem_ray.backends.base import BackendUnavailable, DeviceInfo
from lem_ray.backends.registry import backend_class, engine_args
from lem_ray.backends.vllm.backend import VLLMBackend, visible_gpu_ids
from lem_ray.backends.vllm.translate import (
    engine_kwargs,
    records_from_outputs,
    request_timings,
    resolved_engine_config,
    sampling_params_kwargs,
    truncated_token_ids,
)
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.worker.runs import peak_memory_mib
from lem_ray.telemetry import nvml
from tests.fakes.llm_apis import VLLMSamplingParams, check_vllm_llm_kwargs


def make_config(**overrides: Any) -> ExperimentConfig:
    data: dict[str, Any] = {"model_name": "builtin:tiny-llama", "backend": "vllm"}
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = "length"
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Any = None


@dataclass
class RequestStateStats:
    """V1 (vLLM >= 0.12 fills it on RequestOutput); arrival wall clock, *_ts monotonic.
    Fields as in vLLM 0.26.0 (vllm/v1/metrics/stats.py)."""

    num_generation_tokens: int = 0
    arrival_time: float = 0.0
    queued_ts: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0
    is_corrupted: bool = False


@dataclass
class RequestMetrics:
    """V0 (vLLM <= 0.10): every time is time.time()."""

    arrival_time: float
    last_token_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    time_in_queue: float | None
    finished_time: float | None = None
    scheduler_time: float | None = None
    model_forward_time: float | None = None
    model_execute_time: float | None = None


def output(n_tokens: int, metrics: Any = None, prompt_len: int = 3) -> RequestOutput:
    completion = CompletionOutput(0, "x" * n_tokens, list(range(n_tokens)))
    return RequestOutput("0", None, list(range(prompt_len)), None, [completion], True, metrics)


# The V1 numbers are a real RequestStateStats printed by vLLM (vllm-ascend issue #5027).
V1_STATS = RequestStateStats(
    num_generation_tokens=16, arrival_time=1766124576.2940407, queued_ts=1438012.75633069,
    scheduled_ts=1438012.756344277, first_token_ts=1438012.804867502,
    last_token_ts=1438012.909537651, first_token_latency=0.05423879623413086,
)


# ---- engine_kwargs -------------------------------------------------------------------------


def test_engine_kwargs_dummy_defaults() -> None:
    kw = engine_kwargs(make_config(load_format="dummy", random_seed=7, fp_precision="float16"))
    assert kw["model"] == kw["tokenizer"] == resolve_model("builtin:tiny-llama")
    assert kw["model"].endswith("tiny-llama") and not kw["model"].startswith("builtin:")
    assert (kw["load_format"], kw["dtype"], kw["seed"]) == ("dummy", "float16", 7)
    assert kw["max_model_len"] == 512 + 128
    assert (kw["tensor_parallel_size"], kw["pipeline_parallel_size"]) == (1, 1)
    assert (kw["max_num_seqs"], kw["gpu_memory_utilization"]) == (256, 0.9)
    assert (kw["kv_cache_dtype"], kw["enforce_eager"]) == ("auto", False)
    assert kw["disable_log_stats"] is False  # else RequestOutput.metrics is None
    assert kw["enable_prefix_caching"] is False  # windows resend the same prompts
    assert kw["distributed_executor_backend"] == "uni"
    check_vllm_llm_kwargs(kw)


def test_engine_kwargs_omit_unset_options() -> None:
    kw = engine_kwargs(make_config())
    assert kw["load_format"] == "auto"
    for name in (
        "max_num_batched_tokens",
        "enable_chunked_prefill",
        "block_size",
        "quantization",
        "speculative_config",
        "enable_lora",
        "max_lora_rank",
    ):
        assert name not in kw, name


def test_engine_kwargs_parallel_and_set_options() -> None:
    expected = {
        "tensor_parallel_size": 2, "max_num_seqs": 32, "max_num_batched_tokens": 4096,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True, "kv_cache_dtype": "fp8", "block_size": 32,
        "max_model_len": 1000, "enforce_eager": True, "quantization": "fp8",
    }
    options = {k: v for k, v in expected.items() if k != "max_model_len"}
    cfg = make_config(gpus_per_experiment=2, tokenizer="some/tokenizer",
                      vllm={**options, "max_model_len": 1000})
    kw = engine_kwargs(cfg)
    assert kw["tokenizer"] == "some/tokenizer"
    assert {k: kw[k] for k in expected} == expected
    check_vllm_llm_kwargs(kw)


@pytest.mark.parametrize(
    ("gpus", "tp", "pp", "executor"),
    [(1, 1, 1, "uni"), (2, 2, 1, "mp"), (2, 1, 2, "mp"), (4, 2, 2, "mp"), (8, 8, 1, "mp")],
)
def test_parallel_layout_runs_vllm_processes_inside_the_run_gpus(
    gpus: int, tp: int, pp: int, executor: str
) -> None:
    """Inside the worker's placement group vLLM would pick its Ray executor, which refuses a
    bundle of several GPUs: lem-ray names mp (or uni for one GPU) itself."""
    cfg = make_config(gpus_per_experiment=gpus,
                      vllm={"tensor_parallel_size": tp, "pipeline_parallel_size": pp})
    kw = engine_kwargs(cfg)
    assert (kw["tensor_parallel_size"], kw["pipeline_parallel_size"]) == (tp, pp)
    assert kw["distributed_executor_backend"] == executor


def test_parallel_sizes_must_fill_the_run_gpus() -> None:
    with pytest.raises(ValidationError, match="must equal gpus_per_experiment"):
        make_config(gpus_per_experiment=4, vllm={"tensor_parallel_size": 2})


def test_block_size_not_a_multiple_of_16_is_rejected_with_a_reason() -> None:
    with pytest.raises(ValidationError, match="need a multiple of 16"):
        make_config(vllm={"block_size": 8})
    for size in (16, 32, 64, 128):  # vLLM 0.26.0's FlashAttention takes any multiple of 16
        assert engine_kwargs(make_config(vllm={"block_size": size}))["block_size"] == size


def test_a_misspelt_engine_argument_fails_against_the_real_names() -> None:
    kw = engine_kwargs(make_config(vllm={"extra_engine_args": {"max_num_seq": 3}}))
    with pytest.raises(TypeError, match="max_num_seq"):
        check_vllm_llm_kwargs(kw)


def test_dry_run_engine_args_show_constructor_and_sampling() -> None:
    cfg = make_config(load_format="dummy", max_input_tokens=100, max_output_tokens=20,
                      random_seed=3, vllm={"max_num_seqs": 16})
    assert engine_args(cfg) == {
        "library": "vllm",
        "constructor": {"call": "vllm.LLM", "kwargs": {
            "model": resolve_model("builtin:tiny-llama"),
            "tokenizer": resolve_model("builtin:tiny-llama"),
            "dtype": "bfloat16", "load_format": "dummy", "seed": 3,
            "tensor_parallel_size": 1, "pipeline_parallel_size": 1, "max_num_seqs": 16,
            "gpu_memory_utilization": 0.9, "kv_cache_dtype": "auto", "max_model_len": 120,
            "enforce_eager": False, "distributed_executor_backend": "uni",
            "enable_prefix_caching": False, "disable_log_stats": False,
        }},
        "sampling": {"call": "vllm.SamplingParams", "kwargs": {
            "max_tokens": 20, "min_tokens": 0, "repetition_penalty": 1.0,
            "temperature": 0.0, "top_k": 0, "top_p": 1.0,
        }},
        "prefix_cache": "off",
        "traffic": {"mode": "offline", "rate_rps": None, "seed": 0, "burstiness": 1.0,
                    "trace": None, "steady_after_responses": 16},
        "warmup_and_prefill": "LLM.generate",
        "token_timing": "per_token",
        "measured_window": {
            "call": "LLM.llm_engine.add_request, every request before the first step, "
                    "then step() until done",
            "sampling_kwargs": {
                "max_tokens": 20, "min_tokens": 0, "repetition_penalty": 1.0,
                "temperature": 0.0, "top_k": 0, "top_p": 1.0, "output_kind": "DELTA",
            },
        },
    }


def test_dry_run_shows_per_request_timing_as_one_plain_generate_call() -> None:
    cfg = make_config(max_output_tokens=20, vllm={"token_timing": "per_request"})
    args = engine_args(cfg)
    assert args["token_timing"] == "per_request"
    assert args["constructor"]["kwargs"]["disable_log_stats"] is False  # stats stay on
    assert args["measured_window"] == {
        "call": "LLM.generate, every request at once (its own output_kind FINAL_ONLY), "
                "each request timed from its final RequestStateStats",
        "sampling_kwargs": args["sampling"]["kwargs"],
    }
    assert "output_kind" not in args["measured_window"]["sampling_kwargs"]
    VLLMSamplingParams(**args["measured_window"]["sampling_kwargs"])


@pytest.mark.parametrize("vllm_options, match", [
    ({"token_timing": "per_request", "traffic": {"mode": "poisson", "rate_rps": 4.0}},
     "vllm.token_timing per_request .* vllm.traffic.mode poisson needs per_token"),
    ({"token_timing": "per_request", "extra_engine_args": {"disable_log_stats": True}},
     "vllm.token_timing per_request reads vLLM's per-request stats"),
    ({"token_timing": "per_step"}, "token_timing"),
])
def test_per_request_timing_refuses_traffic_and_stats_off(vllm_options: dict,
                                                          match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        make_config(vllm=vllm_options)


def test_token_timing_is_a_runtime_option_that_keeps_the_engine() -> None:
    per_token, per_request = make_config(), make_config(vllm={"token_timing": "per_request"})
    assert engine_kwargs(per_token) == engine_kwargs(per_request)
    assert per_token.engine_key == per_request.engine_key


class _Dtype:
    """Prints like torch.bfloat16 does."""

    def __str__(self) -> str:
        return "torch.bfloat16"


def test_resolved_engine_config_reads_what_the_engine_chose() -> None:
    import enum

    mode = enum.Enum("CUDAGraphMode", ["FULL_AND_PIECEWISE"])
    vllm_config = types.SimpleNamespace(
        model_config=types.SimpleNamespace(model="/m", dtype=_Dtype(), max_model_len=640,
                                           enforce_eager=False, seed=42, quantization=None),
        cache_config=types.SimpleNamespace(block_size=16, enable_prefix_caching=False,
                                           cache_dtype="auto", gpu_memory_utilization=0.9),
        scheduler_config=types.SimpleNamespace(max_num_seqs=256, max_num_batched_tokens=8192,
                                               enable_chunked_prefill=True),
        parallel_config=types.SimpleNamespace(tensor_parallel_size=2, pipeline_parallel_size=1,
                                              distributed_executor_backend="mp", world_size=2),
        compilation_config=types.SimpleNamespace(mode=3, cudagraph_mode=mode.FULL_AND_PIECEWISE),
        speculative_config=None,
    )
    assert resolved_engine_config(vllm_config) == {
        "model_config": {"model": "/m", "dtype": "torch.bfloat16", "max_model_len": 640,
                         "enforce_eager": False, "seed": 42, "quantization": None},
        "cache_config": {"block_size": 16, "enable_prefix_caching": False,
                         "cache_dtype": "auto", "gpu_memory_utilization": 0.9},
        "scheduler_config": {"max_num_seqs": 256, "max_num_batched_tokens": 8192,
                             "enable_chunked_prefill": True},
        "parallel_config": {"tensor_parallel_size": 2, "pipeline_parallel_size": 1,
                            "distributed_executor_backend": "mp", "world_size": 2},
        "compilation_config": {"mode": 3, "cudagraph_mode": "FULL_AND_PIECEWISE"},
    }


def test_engine_kwargs_speculative_lora_and_extra_args_last() -> None:
    cfg = make_config(
        vllm={
            "speculative": {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3},
            "lora": {"path": "/adapters/a", "max_lora_rank": 32},
            "extra_engine_args": {"max_num_seqs": 3, "swap_space": 0},
        }
    )
    kw = engine_kwargs(cfg)
    assert kw["speculative_config"] == {
        "method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3,
    }
    assert kw["enable_lora"] is True and kw["max_lora_rank"] == 32
    assert kw["max_num_seqs"] == 3
    assert kw["swap_space"] == 0
    draft = make_config(vllm={"speculative": {"model": "builtin:tiny-llama",
                                              "num_speculative_tokens": 2}})
    assert engine_kwargs(draft)["speculative_config"] == {
        "model": resolve_model("builtin:tiny-llama"), "num_speculative_tokens": 2,
    }


def test_config_rejects_values_vllm_rejects() -> None:
    with pytest.raises(ValueError):
        make_config(vllm={"quantization": "marlin"})
    with pytest.raises(ValueError):
        make_config(vllm={"lora": {"path": "/a", "max_lora_rank": 12}})


# ---- sampling_params_kwargs ----------------------------------------------------------------


def test_sampling_greedy_is_temperature_zero_with_neutral_filters() -> None:
    cfg = make_config(max_output_tokens=64, min_output_tokens=10, decoder={
        "do_sample": False, "temperature": 0.7, "top_k": 20, "top_p": 0.5,
        "repetition_penalty": 1.1,
    })
    assert sampling_params_kwargs(cfg) == {
        "max_tokens": 64, "min_tokens": 10, "repetition_penalty": 1.1,
        "temperature": 0.0, "top_k": 0, "top_p": 1.0,
    }
    assert sampling_params_kwargs(cfg, top_k_off=-1)["top_k"] == -1


def test_sampling_sampled_passes_settings_and_no_ignore_eos_or_seed() -> None:
    cfg = make_config(decoder={"do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9})
    kw = sampling_params_kwargs(cfg, top_k_off=-1)
    assert kw["temperature"] == 0.8 and kw["top_k"] == 20 and kw["top_p"] == 0.9
    assert kw["max_tokens"] == 128 and kw["min_tokens"] == 0
    assert "ignore_eos" not in kw and "seed" not in kw


@pytest.mark.parametrize(
    ("preset", "temperature", "top_k", "top_p"),
    [
        ("deterministic", 0.0, -1, 1.0),
        ("standard", 1.0, 50, 0.95),
        ("creative", 1.2, -1, 0.95),  # top_k 0 means off: vLLM's own off value
        ("factual", 0.3, 40, 0.9),
    ],
)
def test_sampling_presets(preset: str, temperature: float, top_k: int, top_p: float) -> None:
    kw = sampling_params_kwargs(make_config(decoder={"preset": preset}), top_k_off=-1)
    assert (kw["temperature"], kw["top_k"], kw["top_p"]) == (temperature, top_k, top_p)


# ---- prompts -------------------------------------------------------------------------------


class WordTokenizer:
    """One token per word, after a BOS id 1, like an HF tokenizer that adds BOS."""

    def encode(self, text: str) -> list[int]:
        return [1] + [100 + len(w) for w in text.split()]


def test_truncated_token_ids_keep_head_and_exact_length() -> None:
    ids = truncated_token_ids(WordTokenizer(), ["a bb ccc dddd", "short"], 3)
    assert ids == [[1, 101, 102], [1, 105]]


def test_truncated_token_ids_with_shipped_tokenizer() -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(resolve_model("builtin:tiny-llama"))
    long_prompt = " ".join(["energy"] * 50)
    ids = truncated_token_ids(tok, [long_prompt, "hi"], 16)
    assert len(ids[0]) == 16
    assert ids[0] == tok.encode(long_prompt)[:16]
    assert ids[1] == tok.encode("hi")


# ---- records_from_outputs ------------------------------------------------------------------


def test_records_v1_metrics_use_same_clock_differences() -> None:
    recs = records_from_outputs([output(16, V1_STATS)], [5], batch_start_s=10.0, batch_end_s=11.0)
    rec = recs[0]
    assert rec.index == 0 and rec.input_tokens == 5 and rec.output_tokens == 16
    assert rec.ttft_ms == pytest.approx(54.2388, abs=1e-3)
    # ttft + decode span (last_token_ts - first_token_ts = 104.670 ms)
    assert rec.e2e_ms == pytest.approx(54.2388 + 104.6701, abs=1e-3)
    assert rec.itl_ms == []
    assert rec.start_s == 10.0


def test_records_v1_metrics_give_the_mean_gap_from_first_and_last_stamp() -> None:
    (rec,) = records_from_outputs([output(16, V1_STATS)], [3], 0.0, 1.0)
    span_ms = (V1_STATS.last_token_ts - V1_STATS.first_token_ts) * 1e3
    assert rec.itl_ms == [] and rec.itl_mean_ms == pytest.approx(span_ms / 15)
    assert rec.e2e_ms == pytest.approx(rec.ttft_ms + 15 * rec.itl_mean_ms)
    (one,) = records_from_outputs([output(1, V1_STATS)], [3], 0.0, 1.0)
    assert one.itl_mean_ms is None  # one token: no gap


def test_records_v0_metrics() -> None:
    metrics = RequestMetrics(
        arrival_time=1000.0, last_token_time=1000.30, first_scheduled_time=1000.01,
        first_token_time=1000.05, time_in_queue=0.01, finished_time=1000.31,
    )
    rec = records_from_outputs([output(4, metrics)], [3], 0.0, 9.0)[0]
    assert rec.ttft_ms == pytest.approx(50.0)
    assert rec.e2e_ms == pytest.approx(310.0)
    metrics.finished_time = None
    assert records_from_outputs([output(4, metrics)], [3], 0.0, 9.0)[0].e2e_ms == pytest.approx(
        300.0
    )


def test_records_without_metrics_report_caller_latency_and_no_ttft() -> None:
    outs = [output(7), output(2, RequestStateStats(arrival_time=5.0))]  # second: no token yet
    recs = records_from_outputs(outs, [4, 9], batch_start_s=2.0, batch_end_s=2.5)
    assert [(r.index, r.input_tokens, r.output_tokens) for r in recs] == [(0, 4, 7), (1, 9, 2)]
    assert all(r.ttft_ms is None for r in recs)
    assert all(r.e2e_ms == pytest.approx(500.0) for r in recs)
    assert all(r.itl_ms == [] for r in recs)


def test_request_timings_unknown_shape_and_count_mismatch() -> None:
    assert request_timings(object()) is None
    assert request_timings(None) is None
    with pytest.raises(ValueError, match="2 outputs for 1 prompts"):
        records_from_outputs([output(1), output(1)], [3], 0.0, 1.0)


# ---- the backend, wired to a stand-in vllm module -----------------------------------------


class FakeLLM:
    def __init__(self, **kwargs: Any) -> None:
        check_vllm_llm_kwargs(kwargs)
        self.kwargs = kwargs
        self.calls: list[tuple[Any, ...]] = []
        self.prefix_resets = 0
        self.llm_engine = types.SimpleNamespace(
            engine_core=types.SimpleNamespace(shutdown=self._shutdown),
            model_config=types.SimpleNamespace(max_model_len=kwargs["max_model_len"]),
            vllm_config=types.SimpleNamespace(scheduler_config=types.SimpleNamespace(
                max_num_seqs=kwargs["max_num_seqs"], enable_chunked_prefill=True)),
        )
        self.shut_down = False

    def reset_prefix_cache(self) -> bool:
        self.prefix_resets += 1
        return True

    def _shutdown(self) -> None:
        self.shut_down = True

    def get_tokenizer(self) -> WordTokenizer:
        return WordTokenizer()

    def generate(self, prompts: list[dict], params: Any, *, use_tqdm: bool, lora_request: Any):
        self.calls.append((prompts, params, use_tqdm, lora_request))
        return [output(2 + i, V1_STATS, len(p["prompt_token_ids"])) for i, p in enumerate(prompts)]


class SamplingParams08(VLLMSamplingParams):
    """vLLM 0.8.x: top_k's default, its "no top-k", was -1."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.top_k = kwargs.get("top_k", -1)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    cleaned: list[bool] = []
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = SamplingParams08
    vllm.__version__ = "0.0-test"
    distributed = types.ModuleType("vllm.distributed")
    parallel_state = types.ModuleType("vllm.distributed.parallel_state")
    parallel_state.cleanup_dist_env_and_memory = lambda: cleaned.append(True)
    lora = types.ModuleType("vllm.lora")
    lora_request = types.ModuleType("vllm.lora.request")
    lora_request.LoRARequest = lambda **kw: ("lora", kw["lora_name"], kw["lora_int_id"],
                                             kw["lora_path"])
    modules = {
        "vllm": vllm, "vllm.distributed": distributed,
        "vllm.distributed.parallel_state": parallel_state,
        "vllm.lora": lora, "vllm.lora.request": lora_request,
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(cleaned=cleaned)


def test_backend_generate_sends_truncated_token_prompts(fake_vllm: Any) -> None:
    cfg = make_config(max_input_tokens=3, decoder={"preset": "creative"})
    backend = VLLMBackend(cfg, DeviceInfo("cuda", 1))
    backend.load()
    llm = backend._llm
    cache_dir = llm.kwargs["compilation_config"]["cache_dir"]
    assert llm.kwargs == {**engine_kwargs(cfg), "compilation_config": {"cache_dir": cache_dir}}, \
        "vLLM compiles into a directory of this engine's own (the compile cache's artifact)"
    recs = backend.generate(["a bb ccc dddd", "hi"])
    prompts, params, use_tqdm, lora_req = llm.calls[0]
    assert prompts == [{"prompt_token_ids": [1, 101, 102]}, {"prompt_token_ids": [1, 102]}]
    assert params.kwargs["top_k"] == -1  # the installed version's own "off" value
    assert use_tqdm is False and lora_req is None
    assert [(r.input_tokens, r.output_tokens) for r in recs] == [(3, 2), (2, 3)]
    assert recs[0].ttft_ms == pytest.approx(54.2388, abs=1e-3)
    assert backend.details()["max_model_len"] == 3 + 128
    assert backend.details()["prefix_cache"] == "off"
    assert llm.prefix_resets == 0
    assert backend.engine_config() == {
        "scheduler_config": {"max_num_seqs": 256, "enable_chunked_prefill": True}}
    assert backend.versions()["vllm"] == "0.0-test"
    backend.release()
    assert llm.shut_down and fake_vllm.cleaned == [True]
    backend.release()  # a second release is a no-op
    assert fake_vllm.cleaned == [True]


def test_per_request_window_is_one_plain_generate_call_timed_from_final_stats(
    fake_vllm: Any,
) -> None:
    backend = VLLMBackend(make_config(vllm={"token_timing": "per_request"}),
                          DeviceInfo("cuda", 1))
    backend.load()
    assert backend.timing_method is None
    recs = backend.measure(["a bb", "c", "d"])
    llm = backend._llm
    (prompts, params, use_tqdm, _), = llm.calls  # one call; the engine is never stepped here
    assert prompts == [{"prompt_token_ids": [1, 101, 102]}, {"prompt_token_ids": [1, 101]},
                       {"prompt_token_ids": [1, 101]}]
    assert "output_kind" not in params.kwargs and use_tqdm is False  # generate: FINAL_ONLY
    assert backend.timing_method == "vllm_request_stats" and backend.steady_window() is None
    assert [r.output_tokens for r in recs] == [2, 3, 4]
    span_ms = (V1_STATS.last_token_ts - V1_STATS.first_token_ts) * 1e3
    assert [r.itl_mean_ms for r in recs] == pytest.approx([span_ms, span_ms / 2, span_ms / 3])
    assert all(r.itl_ms == [] and r.ttft_ms == pytest.approx(54.2388, abs=1e-3)
               and r.e2e_ms == pytest.approx(r.ttft_ms + span_ms) for r in recs)

    llm.generate = lambda prompts, params, **kw: [output(2, None, 1) for _ in prompts]
    recs = backend.measure(["a"])
    assert backend.timing_method == "host_clock" and recs[0].ttft_ms is None


def test_prefix_cache_on_is_reset_before_every_window(fake_vllm: Any) -> None:
    backend = VLLMBackend(make_config(vllm={"enable_prefix_caching": True}),
                          DeviceInfo("cuda", 1))
    backend.load()
    backend.generate(["a"])
    backend.generate(["a"], max_output_tokens=1)
    assert backend._llm.prefix_resets == 2
    assert backend.details()["prefix_cache"] == "reset before each window"


def test_backend_lora_request_and_warmup_size(fake_vllm: Any) -> None:
    cfg = make_config(vllm={"max_num_seqs": 4, "lora": {"path": "/adapters/a"}})
    backend = VLLMBackend(cfg, DeviceInfo("cuda", 1))
    assert backend.warmup_batch_size == 4
    assert VLLMBackend(make_config(), DeviceInfo("cuda", 1)).warmup_batch_size == 8
    backend.load()
    backend.generate(["x"])
    assert backend._llm.calls[0][3] == ("lora", "lem-ray-adapter", 1, "/adapters/a")


def test_load_without_vllm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'lem-ray\[vllm\]'"):
        VLLMBackend(make_config(), DeviceInfo("cuda", 1)).load()


def test_module_import_pulls_in_neither_vllm_nor_torch() -> None:
    code = (
        "import sys; from lem_ray.backends.registry import backend_class; "
        "backend_class('vllm'); "
        "assert 'vllm' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert backend_class("vllm") is VLLMBackend


def test_visible_gpu_ids() -> None:
    assert visible_gpu_ids(2, None) == ["0", "1"]
    assert visible_gpu_ids(2, "3, 5,6") == ["3", "5"]
    assert visible_gpu_ids(1, "GPU-abc") == ["GPU-abc"]
    assert visible_gpu_ids(2, "3") is None
    assert visible_gpu_ids(1, "") is None
    assert visible_gpu_ids(1, "MIG-xyz") is None


def test_peak_memory_sums_nvml_used_on_the_experiments_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    used = {"GPU-4": 1000.0, "GPU-5": 500.0, "GPU-6": 7.0}
    monkeypatch.setattr(nvml, "uuids_for_indices", lambda ids: [f"GPU-{i}" for i in ids])
    monkeypatch.setattr(nvml, "GpuDevice", lambda uuid: types.SimpleNamespace(
        sample=lambda: types.SimpleNamespace(memory_used_mib=used[uuid])))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    backend = VLLMBackend(make_config(gpus_per_experiment=2, vllm={"tensor_parallel_size": 2}),
                          DeviceInfo("cuda", 2))
    assert backend.peak_memory_mib() is None and backend.memory_gpu_ids() == ["4", "5"]
    assert peak_memory_mib(backend) == 1500.0

    def no_nvml(ids: list[str]) -> list[str]:
        raise nvml.NvmlUnavailableError("no NVML")

    monkeypatch.setattr(nvml, "uuids_for_indices", no_nvml)
    assert peak_memory_mib(backend) is None


# ---- on a GPU with vLLM --------------------------------------------------------------------


def gpu_config(**overrides: Any) -> ExperimentConfig:
    """One engine config for every single-GPU test below: they share one engine (a start
    takes a minute or more), changing only per-run fields through configure(). llama-1b is
    the model seen running under vLLM 0.26.0 on the H200 (head size 64: FlashAttention 3);
    enforce_eager skips compilation and CUDA-graph capture, which these tests do not need."""
    data: dict[str, Any] = {
        "model_name": "builtin:llama-1b",
        "load_format": "dummy",
        "max_input_tokens": 16,
        "max_output_tokens": 8,
        "min_output_tokens": 4,
        "vllm": {"gpu_memory_utilization": 0.3, "max_num_seqs": 4, "enforce_eager": True},
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return make_config(**data)


@pytest.fixture(scope="module")
def gpu_backend() -> Any:
    pytest.importorskip("vllm")
    backend = VLLMBackend(gpu_config(), DeviceInfo("cuda", 1))
    backend.load()
    yield backend
    backend.release()


@pytest.mark.gpu
def test_vllm_generates_with_dummy_weights(gpu_backend: VLLMBackend) -> None:
    import vllm

    backend = gpu_backend
    backend.configure(gpu_config())
    recs = backend.generate([" ".join(["energy"] * 40), "hello", "a b c"])
    assert [r.index for r in recs] == [0, 1, 2]
    assert recs[0].input_tokens == 16 and all(r.input_tokens <= 16 for r in recs)
    assert all(4 <= r.output_tokens <= 8 for r in recs)
    assert all(r.ttft_ms is not None and 0 < r.ttft_ms <= r.e2e_ms for r in recs)
    assert backend.versions()["vllm"] == vllm.__version__
    resolved = backend.engine_config()
    assert resolved["cache_config"]["enable_prefix_caching"] is False
    assert resolved["scheduler_config"]["max_num_seqs"] == 4
    assert resolved["parallel_config"]["distributed_executor_backend"] == "uni"


@pytest.mark.gpu
def test_vllm_offline_window_is_timed_by_vllms_own_stats(gpu_backend: VLLMBackend) -> None:
    backend = gpu_backend
    backend.configure(gpu_config(min_output_tokens=8))
    recs = backend.measure(["energy " * 10] * 6)
    assert backend.timing_method == "vllm_engine_stats"
    assert backend.steady_window() is None
    # the scheduler's own per-step stats reached the backend: 6 requests on max_num_seqs 4
    load = backend.engine_load()
    assert load is not None and load.steps >= 8 and 1 <= load.running_mean <= 4
    assert [r.output_tokens for r in recs] == [8] * 6
    assert all(len(r.itl_ms) == 7 and all(gap >= 0 for gap in r.itl_ms) for r in recs)
    assert all(0 < r.ttft_ms <= r.e2e_ms for r in recs)
    # the engine's decode span is the sum of its gaps, on its own clock
    assert all(r.e2e_ms == pytest.approx(r.ttft_ms + sum(r.itl_ms)) for r in recs)


@pytest.mark.gpu
def test_vllm_per_request_window_is_timed_from_final_stats(gpu_backend: VLLMBackend) -> None:
    backend = gpu_backend
    backend.configure(gpu_config(min_output_tokens=8, vllm={"token_timing": "per_request"}))
    recs = backend.measure(["energy " * 10] * 6)
    assert backend.timing_method == "vllm_request_stats"
    assert [r.output_tokens for r in recs] == [8] * 6
    assert all(r.itl_ms == [] and r.itl_mean_ms > 0 and 0 < r.ttft_ms <= r.e2e_ms for r in recs)
    assert all(r.e2e_ms == pytest.approx(r.ttft_ms + 7 * r.itl_mean_ms) for r in recs)


@pytest.mark.gpu
def test_vllm_under_poisson_traffic_streams_every_token(gpu_backend: VLLMBackend) -> None:
    backend = gpu_backend
    backend.configure(gpu_config(
        min_output_tokens=8,
        vllm={"traffic": {"mode": "poisson", "rate_rps": 20.0, "steady_after_responses": 2}}))
    recs = backend.measure(["energy " * 10] * 8)
    assert [r.output_tokens for r in recs] == [8] * 8
    assert all(len(r.itl_ms) == 7 and 0 < r.ttft_ms <= r.e2e_ms for r in recs)
    assert all(later.start_s >= earlier.start_s for earlier, later in pairwise(recs))
    assert backend.timing_method == "vllm_engine_stats"


@pytest.mark.gpu
def test_vllm_tensor_parallel_two_inside_a_ray_placement_group() -> None:
    """The layout lem-ray uses: an actor holding both GPUs in one bundle starts vLLM with
    the mp executor (vLLM would otherwise pick its Ray executor there and refuse)."""
    pytest.importorskip("vllm")
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    try:
        nvml.uuids_for_indices(["0", "1"])
    except nvml.TelemetryError:
        pytest.skip("needs two GPUs")
    cfg = make_config(load_format="dummy", max_input_tokens=16, max_output_tokens=4,
                      gpus_per_experiment=2,
                      vllm={"gpu_memory_utilization": 0.3, "tensor_parallel_size": 2})

    @ray.remote(num_cpus=1, num_gpus=2)
    def run(config_json: str) -> dict:
        backend = VLLMBackend(ExperimentConfig.model_validate_json(config_json),
                              DeviceInfo("cuda", 2))
        backend.load()
        try:
            backend.generate(["hello"])
            return backend.engine_config()["parallel_config"]
        finally:
            backend.release()

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False)
    try:
        pg = placement_group([{"CPU": 1, "GPU": 2}], strategy="STRICT_PACK")
        ray.get(pg.ready())
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        parallel = ray.get(run.options(scheduling_strategy=strategy).remote(cfg.model_dump_json()))
        assert parallel["distributed_executor_backend"] == "mp"
        assert parallel["tensor_parallel_size"] == 2
        remove_placement_group(pg)
    finally:
        ray.shutdown()


def test_backend_hands_its_compile_directory_to_the_next_engine(fake_vllm: Any) -> None:
    """What vLLM compiled into this engine's cache_dir comes back for the next engine of the
    key, in a directory of its own; release removes both."""
    from pathlib import Path

    cfg = make_config()
    first = VLLMBackend(cfg, DeviceInfo("cuda", 1))
    first.load()
    compiled = Path(first._llm.kwargs["compilation_config"]["cache_dir"], "rank_0_0", "backbone")
    compiled.mkdir(parents=True)
    (compiled / "vllm_compile_cache.py").write_text("{}")
    artifact = first.compiled_artifact()
    assert artifact is not None
    second = VLLMBackend(cfg, DeviceInfo("cuda", 1))
    second.use_compiled(artifact)
    second.load()
    given = Path(second._llm.kwargs["compilation_config"]["cache_dir"])
    assert given != compiled.parent.parent
    assert (given / "rank_0_0" / "backbone" / "vllm_compile_cache.py").read_text() == "{}"
    first.release()
    second.release()
    assert not compiled.exists() and not given.exists()
