"""TensorRT-LLM backend: config translation, engine cache, sampling, records, and the streaming
loop driven through stand-ins shaped like tensorrt_llm's objects (no CUDA needed)."""

from __future__ import annotations

import asyncio
import enum
import importlib.metadata
import sys
import tarfile
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from lem_ray.assets import resolve_model
from lem_ray.backends.base import BackendUnavailable, DeviceInfo
from lem_ray.backends.registry import backend_class, engine_args
from lem_ray.backends.streaming import StreamTrace
from lem_ray.backends.tensorrt import backend as trt_backend
from lem_ray.backends.tensorrt.backend import TensorRTBackend
from lem_ray.backends.tensorrt.translate import (
    QUANT_ALGOS,
    calibration_refusal,
    engine_cache_key,
    engine_plan,
    engine_ready,
    llm_kwargs,
    major_version,
    records_from_outputs,
    resolved_llm_args,
    sampling_params_kwargs,
    unsupported_sampling,
)
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.worker.compiled import CacheUse, CompiledArtifacts
from tests.fakes.llm_apis import (
    TRTLLM_SAMPLING_PARAMS,
    TrtBuildConfig,
    TrtCalibConfig,
    TrtKvCacheConfig,
    TrtQuantConfig,
    TrtSamplingParams,
    check_names,
    check_trtllm_llm_kwargs,
)

MODEL = "builtin:tiny-llama"


def experiment(tensorrt: dict[str, Any] | None = None, **fields: Any) -> ExperimentConfig:
    return ExperimentConfig(
        model_name=fields.pop("model_name", MODEL),
        backend="tensorrt",
        tensorrt=tensorrt or {},
        **fields,
    )


# --- LLM(...) arguments ---------------------------------------------------------------------


def test_defaults_come_from_the_experiment_token_budget() -> None:
    kwargs = llm_kwargs(experiment(max_input_tokens=300, max_output_tokens=50))
    assert kwargs["model"] == resolve_model(MODEL)
    assert kwargs["tokenizer"] == resolve_model(MODEL)
    assert kwargs["dtype"] == "bfloat16"
    assert kwargs["tensor_parallel_size"] == 1
    assert kwargs["pipeline_parallel_size"] == 1
    assert kwargs["build_config"] == {"max_batch_size": 8, "max_input_len": 300, "max_seq_len": 350}
    assert kwargs["kv_cache_config"] == {"enable_block_reuse": False}
    assert kwargs["enable_chunked_prefill"] is False
    assert "quant_config" not in kwargs
    assert "load_format" not in kwargs


def test_explicit_sizes_and_kv_cache_options() -> None:
    config = experiment(
        {
            "max_batch_size": 64,
            "max_input_len": 1024,
            "max_seq_len": 2048,
            "max_num_tokens": 4096,
            "kv_cache_free_gpu_memory_fraction": 0.5,
            "enable_kv_cache_reuse": True,
            "enable_chunked_context": True,
        },
        fp_precision="float16",
        tokenizer="some/tokenizer",
    )
    kwargs = llm_kwargs(config)
    assert kwargs["build_config"] == {
        "max_batch_size": 64,
        "max_input_len": 1024,
        "max_seq_len": 2048,
        "max_num_tokens": 4096,
    }
    assert kwargs["kv_cache_config"] == {
        "enable_block_reuse": True,
        "free_gpu_memory_fraction": 0.5,
    }
    assert kwargs["enable_chunked_prefill"] is True
    assert kwargs["dtype"] == "float16"
    assert kwargs["tokenizer"] == "some/tokenizer"


def test_tensor_parallel_two() -> None:
    config = experiment({"tensor_parallel_size": 2}, gpus_per_experiment=2)
    assert llm_kwargs(config)["tensor_parallel_size"] == 2


@pytest.mark.parametrize(
    ("quantization", "algo"),
    [
        ("fp8", "FP8"),
        ("int8_sq", "W8A8_SQ_PER_CHANNEL"),
        ("int4_awq", "W4A16_AWQ"),
        ("w4a8_awq", "W4A8_AWQ"),
        ("int8_wo", "W8A16"),
        ("int4_wo", "W4A16"),
        ("nvfp4", "NVFP4"),
    ],
)
def test_quantization_maps_to_quant_algo_members(quantization: str, algo: str) -> None:
    kwargs = llm_kwargs(experiment({"quantization": quantization}))
    assert kwargs["quant_config"] == {"quant_algo": algo}


def test_every_allowed_quantization_has_a_quant_algo() -> None:
    from lem_ray.backends.tensorrt.config import TensorRTConfig

    allowed = TensorRTConfig.model_fields["quantization"].annotation.__args__[0].__args__
    assert set(allowed) == set(QUANT_ALGOS)


def test_kv_cache_dtype_is_a_quant_config_field_on_engines() -> None:
    kwargs = llm_kwargs(experiment({"quantization": "fp8", "kv_cache_dtype": "fp8"}))
    assert kwargs["quant_config"] == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    assert "dtype" not in kwargs["kv_cache_config"]
    kwargs = llm_kwargs(experiment({"kv_cache_dtype": "int8"}))
    assert kwargs["quant_config"] == {"kv_cache_quant_algo": "INT8"}


def test_pytorch_runtime_takes_top_level_sizes_and_kv_dtype() -> None:
    config = experiment(
        {"runtime": "pytorch", "kv_cache_dtype": "fp8", "max_num_tokens": 2048},
        max_input_tokens=128,
        max_output_tokens=32,
    )
    kwargs = llm_kwargs(config)
    assert "build_config" not in kwargs and "quant_config" not in kwargs
    assert kwargs["max_batch_size"] == 8
    assert kwargs["max_input_len"] == 128
    assert kwargs["max_seq_len"] == 160
    assert kwargs["max_num_tokens"] == 2048
    assert kwargs["kv_cache_config"] == {"enable_block_reuse": False, "dtype": "fp8"}


def test_prebuilt_engine_replaces_model_and_build_settings() -> None:
    config = experiment({"engine_dir": "/engines/llama", "kv_cache_free_gpu_memory_fraction": 0.8})
    kwargs = llm_kwargs(config, prebuilt_engine="/engines/llama")
    assert kwargs["model"] == "/engines/llama"
    assert kwargs["tokenizer"] == resolve_model(MODEL)
    assert kwargs["kv_cache_config"]["free_gpu_memory_fraction"] == 0.8
    for baked in ("build_config", "quant_config", "dtype", "load_format"):
        assert baked not in kwargs


@pytest.mark.parametrize("runtime", ["engine", "pytorch"])
def test_dummy_weights_use_load_format_dummy(runtime: str) -> None:
    dummy = experiment({"runtime": runtime}, load_format="dummy")
    assert llm_kwargs(dummy)["load_format"] == "dummy"
    assert "load_format" not in llm_kwargs(experiment({"runtime": runtime}))


def test_requests_that_cannot_fit_the_engine_are_refused() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        llm_kwargs(experiment({"max_seq_len": 100}, max_input_tokens=80, max_output_tokens=40))
    with pytest.raises(ValueError, match="max_input_len"):
        llm_kwargs(experiment({"max_input_len": 64}, max_input_tokens=128))


def test_a_non_tensorrt_experiment_is_refused() -> None:
    with pytest.raises(ValueError, match="not a tensorrt experiment"):
        llm_kwargs(ExperimentConfig(model_name=MODEL, backend="vllm"))


@pytest.mark.parametrize(
    "options",
    [
        {"runtime": "pytorch", "quantization": "fp8"},
        {"runtime": "pytorch", "engine_cache_dir": "/cache"},
        {"runtime": "pytorch", "kv_cache_dtype": "int8"},
        {"engine_dir": "/e", "engine_cache_dir": "/c"},
        {"force_rebuild": True},
        {"engine_dir": "/e", "quantization": "int4_awq"},
    ],
)
def test_invalid_combinations_are_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="tensorrt"):
        experiment(options)


def test_builder_opt_level_is_not_an_llm_api_option() -> None:
    with pytest.raises(ValidationError, match="builder_opt_level"):
        experiment({"builder_opt_level": 3})


# --- engine cache ---------------------------------------------------------------------------


def key(config: ExperimentConfig, version: str = "0.21.0", device: str = "NVIDIA H200 sm90") -> str:
    return engine_cache_key(config, trtllm_version=version, device_name=device)


def test_cache_key_is_stable_and_readable() -> None:
    first = key(experiment({"max_batch_size": 16}))
    assert first == key(experiment({"max_batch_size": 16}))
    assert first.startswith("builtin_tiny-llama-")


@pytest.mark.parametrize(
    "change",
    [
        {"tensorrt": {"max_batch_size": 16}},
        {"tensorrt": {"quantization": "fp8"}},
        {"tensorrt": {"kv_cache_dtype": "fp8"}},
        {"tensorrt": {"max_num_tokens": 1024}},
        {"fields": {"fp_precision": "float16"}},
        {"fields": {"load_format": "dummy"}},
        {"fields": {"model_name": "builtin:llama-1b"}},
        {"fields": {"max_input_tokens": 1024}},
    ],
)
def test_cache_key_changes_with_build_settings(change: dict[str, Any]) -> None:
    assert key(experiment()) != key(experiment(change.get("tensorrt"), **change.get("fields", {})))


def test_cache_key_changes_with_the_calibration_dataset() -> None:
    def calibrated(dataset: str) -> ExperimentConfig:
        return experiment({"quantization": "fp8", "calib_dataset": dataset})

    assert key(calibrated("/data/a")) != key(calibrated("/data/b"))


def test_cache_key_changes_with_version_and_gpu() -> None:
    config = experiment()
    assert key(config) != key(config, version="1.0.0")
    assert key(config) != key(config, device="NVIDIA H100 sm90")


def test_runtime_only_options_share_an_engine() -> None:
    pinned = {"max_input_len": 512, "max_seq_len": 1024}
    base = key(experiment(pinned))
    assert base == key(
        experiment(
            {
                **pinned,
                "kv_cache_free_gpu_memory_fraction": 0.3,
                "enable_kv_cache_reuse": True,
                "enable_chunked_context": True,
                "engine_cache_dir": "/elsewhere",
            },
            max_output_tokens=256,
            max_input_tokens=100,
            decoder={"preset": "creative"},
            random_seed=7,
        )
    )


def write_engine(folder: Path, world_size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    for rank in range(world_size):
        (folder / f"rank{rank}.engine").write_bytes(b"engine")


def test_engine_ready_needs_config_and_every_rank(tmp_path: Path) -> None:
    assert not engine_ready(tmp_path / "missing", 1)
    write_engine(tmp_path / "tp2", 1)
    assert engine_ready(tmp_path / "tp2", 1)
    assert not engine_ready(tmp_path / "tp2", 2)


def test_engine_plan_builds_then_reuses_then_rebuilds_on_request(tmp_path: Path) -> None:
    config = experiment({"engine_cache_dir": str(tmp_path)})
    cache_key = key(config)
    plan = engine_plan(config, cache_key)
    assert (plan.source, plan.load, plan.save_to) == ("build", None, str(tmp_path / cache_key))
    write_engine(tmp_path / cache_key, 1)
    plan = engine_plan(config, cache_key)
    assert (plan.source, plan.load, plan.save_to) == ("cache", str(tmp_path / cache_key), None)
    forced = experiment({"engine_cache_dir": str(tmp_path), "force_rebuild": True})
    assert engine_plan(forced, cache_key).save_to == str(tmp_path / cache_key)


def test_engine_plan_without_cache_and_with_engine_dir() -> None:
    plan = engine_plan(experiment(), None)
    assert (plan.source, plan.load, plan.save_to) == ("build", None, None)
    plan = engine_plan(experiment({"engine_dir": "/engines/x"}), None)
    assert (plan.source, plan.load) == ("engine_dir", "/engines/x")
    assert engine_plan(experiment({"runtime": "pytorch"}), None).source == "checkpoint"


def test_major_version() -> None:
    assert major_version("0.21.0") == 0
    assert major_version("1.0.0rc4") == 1
    assert major_version("1.2.0") == 1


# --- SamplingParams arguments ---------------------------------------------------------------


def test_greedy_sampling_is_top_1() -> None:
    kwargs = sampling_params_kwargs(experiment(max_output_tokens=64, random_seed=5))
    assert kwargs == {"max_tokens": 64, "seed": 5, "top_k": 1}


def test_sampled_decoding_keeps_the_decoder_settings() -> None:
    config = experiment(
        decoder={"preset": "standard", "repetition_penalty": 1.1},
        min_output_tokens=16,
        max_output_tokens=32,
    )
    assert sampling_params_kwargs(config) == {
        "max_tokens": 32,
        "min_tokens": 16,
        "seed": 42,
        "temperature": 1.0,
        "top_p": 0.95,
        "top_k": 50,
        "repetition_penalty": 1.1,
    }


def test_top_k_zero_means_no_top_k() -> None:
    kwargs = sampling_params_kwargs(experiment(decoder={"preset": "creative"}))
    assert "top_k" not in kwargs
    assert kwargs["temperature"] == 1.2
    assert "ignore_eos" not in kwargs


# --- records ----------------------------------------------------------------------------------


def request_output(token_ids: list[int]) -> types.SimpleNamespace:
    """Shaped like tensorrt_llm.llmapi.RequestOutput: .outputs[0] is a CompletionOutput whose
    .token_ids are the generated ids (tensorrt_llm/executor/result.py)."""
    completion = types.SimpleNamespace(
        index=0, text="", token_ids=token_ids, finish_reason="length"
    )
    return types.SimpleNamespace(outputs=[completion], prompt_token_ids=[1, 2, 3], finished=True)


def test_stream_trace_gives_each_token_its_chunk_arrival() -> None:
    trace = StreamTrace(start_s=10.0)
    trace.observe(10.1, 1)
    trace.observe(10.3, 3)
    trace.observe(10.4, 4)
    assert trace.token_times == [10.1, 10.3, 10.3, 10.4]


def test_records_carry_measured_ttft_and_gaps() -> None:
    first = StreamTrace(start_s=1.0, token_times=[1.05, 1.07, 1.07, 1.10], end_s=1.12)
    second = StreamTrace(start_s=1.0, token_times=[1.2], end_s=1.25)
    records = records_from_outputs(
        [request_output([5, 6, 7, 8]), request_output([9])], [12, 30], [first, second]
    )
    assert [r.index for r in records] == [0, 1]
    assert [(r.input_tokens, r.output_tokens) for r in records] == [(12, 4), (30, 1)]
    assert records[0].ttft_ms == pytest.approx(50.0)
    assert records[0].itl_ms == pytest.approx([20.0, 0.0, 30.0])
    assert records[0].e2e_ms == pytest.approx(120.0)
    assert records[0].start_s == 1.0
    assert records[1].ttft_ms == pytest.approx(200.0)
    assert records[1].itl_ms == []


def test_records_leave_gaps_out_when_trace_and_output_disagree() -> None:
    trace = StreamTrace(start_s=0.0, token_times=[0.1, 0.2, 0.3], end_s=0.4)
    (record,) = records_from_outputs([request_output([1, 2])], [4], [trace])
    assert record.output_tokens == 2
    assert record.ttft_ms == pytest.approx(100.0)
    assert record.itl_ms == []


def test_records_refuse_mismatched_or_unfinished_inputs() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        records_from_outputs([request_output([1])], [1, 2], [StreamTrace(0.0, end_s=1.0)])
    with pytest.raises(ValueError, match="not finished"):
        records_from_outputs([request_output([1])], [1], [StreamTrace(0.0, [0.5])])


# --- the backend, with tensorrt_llm missing or replaced by stand-ins ---------------------------


def test_registry_resolves_the_backend() -> None:
    assert backend_class("tensorrt") is TensorRTBackend


def test_missing_tensorrt_llm_is_reported_with_the_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    backend = TensorRTBackend(experiment(), DeviceInfo("cuda", 1))
    with pytest.raises(BackendUnavailable, match=r"lem-ray\[tensorrt\]"):
        backend.load()


def test_cpu_and_too_few_gpus_are_refused() -> None:
    with pytest.raises(BackendUnavailable, match="NVIDIA GPUs"):
        TensorRTBackend(experiment(), DeviceInfo("cpu")).load()
    config = experiment({"tensor_parallel_size": 2}, gpus_per_experiment=2)
    with pytest.raises(BackendUnavailable, match="needs 2 GPUs"):
        TensorRTBackend(config, DeviceInfo("cuda", 1)).load()


def test_warmup_batch_size_is_capped_at_eight() -> None:
    device = DeviceInfo("cuda", 1)
    assert TensorRTBackend(experiment({"max_batch_size": 4}), device).warmup_batch_size == 4
    assert TensorRTBackend(experiment({"max_batch_size": 64}), device).warmup_batch_size == 8


class FakeStream:
    """Shaped like tensorrt_llm's streaming RequestOutput: async-iterating it yields itself
    once per response, with outputs[0].token_ids grown by that response's tokens."""

    def __init__(self, chunks: list[list[int]]) -> None:
        self.outputs = [types.SimpleNamespace(token_ids=[])]
        self._chunks = list(chunks)

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> FakeStream:
        if not self._chunks:
            raise StopAsyncIteration
        await asyncio.sleep(0.001)
        self.outputs[0].token_ids.extend(self._chunks.pop(0))
        return self


class FakeLLM:
    built: ClassVar[list[FakeLLM]] = []

    def __init__(self, **kwargs: Any) -> None:
        check_trtllm_llm_kwargs(kwargs)
        self.kwargs = kwargs
        self.args = types.SimpleNamespace(
            backend=None, dtype="bfloat16", max_batch_size=8, enable_chunked_prefill=False,
            kv_cache_config=types.SimpleNamespace(enable_block_reuse=False,
                                                  free_gpu_memory_fraction=0.9),
        )
        self.tokenizer = types.SimpleNamespace(encode=lambda text: list(range(1, len(text) + 1)))
        self.submitted: list[list[int]] = []
        self.shut_down = False
        FakeLLM.built.append(self)

    def save(self, path: str) -> None:
        """As LLM.save: the engine folder copied into path (copytree, dirs_exist_ok=True)."""
        write_engine(Path(path), 1)

    def generate_async(self, ids: list[int], sampling_params: Any, streaming: bool) -> FakeStream:
        assert streaming
        self.submitted.append(ids)
        return FakeStream([[7], [8, 9]] if len(ids) > 2 else [[7]])

    def shutdown(self) -> None:
        self.shut_down = True


@pytest.fixture
def fake_trtllm(monkeypatch) -> None:
    """A tensorrt_llm 1.x stand-in: engines through tensorrt_llm._tensorrt_engine.LLM."""
    FakeLLM.built = []
    package = types.ModuleType("tensorrt_llm")
    package.__version__ = "1.0.0"
    package.SamplingParams = TrtSamplingParams
    package.LLM = FakeLLM
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    llmapi.BuildConfig = TrtBuildConfig
    llmapi.KvCacheConfig = TrtKvCacheConfig
    llmapi.CalibConfig = TrtCalibConfig
    llmapi.QuantConfig = TrtQuantConfig
    llmapi.QuantAlgo = enum.Enum("QuantAlgo", ["FP8", "INT8", "W4A16_AWQ"])
    package.llmapi = llmapi
    engine = types.ModuleType("tensorrt_llm._tensorrt_engine")
    engine.LLM = FakeLLM
    monkeypatch.setitem(sys.modules, "tensorrt_llm", package)
    monkeypatch.setitem(sys.modules, "tensorrt_llm.llmapi", llmapi)
    monkeypatch.setitem(sys.modules, "tensorrt_llm._tensorrt_engine", engine)
    monkeypatch.setattr(trt_backend, "device_name", lambda: "FakeGPU sm90")


def test_load_builds_once_then_reuses_the_cached_engine(fake_trtllm, tmp_path: Path) -> None:
    config = experiment(
        {"engine_cache_dir": str(tmp_path), "quantization": "fp8", "kv_cache_dtype": "fp8"},
        load_format="dummy",
    )
    first = TensorRTBackend(config, DeviceInfo("cuda", 1))
    first.load()
    cache_key = engine_cache_key(config, trtllm_version="1.0.0", device_name="FakeGPU sm90")
    built = FakeLLM.built[0].kwargs
    assert built["model"] == resolve_model(MODEL)
    assert built["load_format"] == "dummy"
    assert built["build_config"].kwargs == {"max_batch_size": 8, "max_input_len": 512,
                                            "max_seq_len": 640}
    assert built["quant_config"].quant_algo.name == "FP8"
    assert built["quant_config"].kv_cache_quant_algo.name == "FP8"
    assert built["kv_cache_config"].kwargs == {"enable_block_reuse": False}
    assert first.engine_config() == {
        "backend": None, "dtype": "bfloat16", "max_batch_size": 8,
        "enable_chunked_prefill": False,
        "kv_cache_config": {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.9},
    }
    assert engine_ready(tmp_path / cache_key, 1)
    assert (tmp_path / cache_key / "lem_ray_build.json").is_file()
    assert first.details()["engine_source"] == "build"
    assert first.details()["llm_class"].endswith("FakeLLM")
    assert first.peak_memory_mib() is None
    assert first.details()["peak_memory"].startswith("not reported")
    first.release()
    assert FakeLLM.built[0].shut_down

    second = TensorRTBackend(config, DeviceInfo("cuda", 1))
    second.load()
    reused = FakeLLM.built[1].kwargs
    assert reused["model"] == str(tmp_path / cache_key)
    assert "build_config" not in reused and "quant_config" not in reused
    assert second.details()["engine_source"] == "cache"


def _engine_cycle(worker: CompiledArtifacts, config: ExperimentConfig
                  ) -> tuple[TensorRTBackend, CacheUse]:
    """What the worker does around a new engine: the compile cache before load, after prepare."""
    backend = TensorRTBackend(config, DeviceInfo("cuda", 1))
    use = worker.before(backend, config)
    backend.load()
    backend.prepare([])
    return backend, worker.after(backend, use)


def test_the_campaign_compile_cache_builds_an_engine_once_then_loads_it(
    fake_trtllm, tmp_path: Path
) -> None:
    """Neither engine_dir nor engine_cache_dir: the built engine, saved and tarred, is the
    compile cache's artifact; an engine of the same key in another worker unpacks it and loads
    it without building."""
    config = experiment({"quantization": "fp8"}, load_format="dummy")
    cache = str(tmp_path / "compile_cache")
    first, use = _engine_cycle(CompiledArtifacts(cache, "NVIDIA H200"), config)
    assert use.status == "miss" and use.sha256 is not None
    assert "build_config" in FakeLLM.built[0].kwargs
    assert first.details()["engine_source"] == "build"
    entry = tmp_path / "compile_cache" / str(use.key) / f"artifact-{use.sha256}.bin"
    with tarfile.open(entry) as archive:
        assert sorted(archive.getnames()) == ["config.json", "rank0.engine"]
    first.release()

    second, hit = _engine_cycle(CompiledArtifacts(cache, "NVIDIA H200"), config)
    assert (hit.status, hit.sha256, hit.key) == ("hit", use.sha256, use.key)
    loaded = FakeLLM.built[1].kwargs
    assert "build_config" not in loaded and "quant_config" not in loaded, "not built again"
    assert engine_ready(loaded["model"], 1) and not loaded["model"].startswith(cache)
    assert Path(loaded["model"], "rank0.engine").read_bytes() == b"engine"
    assert second.details()["engine_source"] == "compile_cache"
    second.release()
    assert not Path(loaded["model"]).exists(), "the unpacked engine goes with the engine"

    other = CompiledArtifacts(cache, "NVIDIA H200")
    for changed in (experiment({"quantization": "fp8", "max_batch_size": 16}),
                    experiment({"quantization": "fp8", "max_seq_len": 1024}),
                    experiment({"quantization": "int4_awq"}),
                    experiment({"quantization": "fp8"}, max_input_tokens=256)):
        engine = TensorRTBackend(changed, DeviceInfo("cuda", 1))
        assert other.before(engine, changed).status == "miss", "another build is another key"
    engine = TensorRTBackend(config, DeviceInfo("cuda", 1))
    assert CompiledArtifacts(cache, "NVIDIA H100 80GB HBM3").before(engine, config).status == (
        "miss"), "an engine runs only on the GPU model it was built for"


def test_an_engine_folder_of_the_users_own_keeps_the_compile_cache_out(tmp_path: Path) -> None:
    def versions(**tensorrt: Any) -> dict[str, str] | None:
        return TensorRTBackend(experiment(tensorrt), DeviceInfo("cuda", 1)).compiler_versions()

    assert versions() is not None
    assert versions(engine_cache_dir=str(tmp_path)) is None
    assert versions(engine_dir=str(tmp_path)) is None
    assert versions(runtime="pytorch") is None, "the PyTorch runtime builds no engine"


def test_an_archive_without_every_rank_is_refused_and_the_engine_built(
    fake_trtllm, tmp_path: Path
) -> None:
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with tarfile.open(tmp_path / "engine.tar", "w") as archive:
        archive.add(folder / "config.json", arcname="config.json")
    backend = TensorRTBackend(experiment({"tensor_parallel_size": 2}, gpus_per_experiment=2),
                              DeviceInfo("cuda", 2))
    with pytest.raises(ValueError, match="no engine for 2 GPU"):
        backend.use_compiled_file(str(tmp_path / "engine.tar"))
    backend.load()
    assert "build_config" in FakeLLM.built[0].kwargs
    assert backend.details()["engine_source"] == "build"


def test_generate_streams_every_prompt_and_times_its_tokens(fake_trtllm) -> None:
    backend = TensorRTBackend(experiment(max_input_tokens=4), DeviceInfo("cuda", 1))
    backend.load()
    records = backend.generate(["abcdefgh", "ab"])
    assert FakeLLM.built[0].submitted == [[1, 2, 3, 4], [1, 2]]
    assert [(r.index, r.input_tokens, r.output_tokens) for r in records] == [(0, 4, 3), (1, 2, 1)]
    assert len(records[0].itl_ms) == 2 and records[0].itl_ms[1] == 0.0
    assert records[0].itl_ms[0] > 0
    assert all(r.ttft_ms is not None and 0 < r.ttft_ms <= r.e2e_ms for r in records)
    assert records[1].itl_ms == []


def test_measure_under_constant_traffic_sends_each_request_at_its_time(fake_trtllm) -> None:
    config = experiment({"max_batch_size": 2, "traffic": {"mode": "constant", "rate_rps": 20.0,
                                                          "steady_after_responses": 1}})
    backend = TensorRTBackend(config, DeviceInfo("cuda", 1))
    backend.load()
    records = backend.measure(["abcd", "ab", "abc", "a"])
    starts = [r.start_s - records[0].start_s for r in records]
    assert all(start >= i / 20.0 for i, start in enumerate(starts))  # never before its arrival
    assert [r.output_tokens for r in records] == [3, 1, 3, 1]
    window = backend.steady_window()
    assert window is not None and window.end_s == records[-1].start_s
    assert window.opened_by in ("2 requests in flight (max_batch_size)", "1 responses")
    offline = TensorRTBackend(experiment(), DeviceInfo("cuda", 1))
    offline.load()
    offline.measure(["ab"])
    assert offline.steady_window() is None


def test_runtime_pytorch_on_0x_is_refused(fake_trtllm) -> None:
    sys.modules["tensorrt_llm"].__version__ = "0.21.0"
    backend = TensorRTBackend(experiment({"runtime": "pytorch"}), DeviceInfo("cuda", 1))
    with pytest.raises(BackendUnavailable, match=r">= 1\.0"):
        backend.load()


def test_versions_lists_only_installed_packages(monkeypatch) -> None:
    installed = {"tensorrt_llm": "1.0.0", "torch": "2.7.1"}

    def version(dist: str) -> str:
        if dist not in installed:
            raise importlib.metadata.PackageNotFoundError(dist)
        return installed[dist]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert TensorRTBackend(experiment(), DeviceInfo("cuda", 1)).versions() == installed


# --- refusals and flags before anything is built ---------------------------------------------


CALIBRATING = {"quantization": "int4_awq"}


@pytest.mark.parametrize(
    "variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"]
)
def test_calibration_on_an_offline_node_is_refused_up_front(variable: str) -> None:
    reason = calibration_refusal(experiment(CALIBRATING), {variable: "1"})
    assert reason is not None
    assert "quantization int4_awq calibrates on a dataset" in reason
    assert f"offline ({variable} set)" in reason and "tensorrt.calib_dataset" in reason


def test_calibration_is_fine_online_with_a_local_dataset_or_weight_only() -> None:
    assert calibration_refusal(experiment(CALIBRATING), {}) is None
    assert calibration_refusal(experiment(CALIBRATING), {"HF_HUB_OFFLINE": "0"}) is None
    local = experiment({**CALIBRATING, "calib_dataset": "/data/calib"})
    assert calibration_refusal(local, {"HF_HUB_OFFLINE": "1"}) is None
    assert llm_kwargs(local)["calib_config"] == {"calib_dataset": "/data/calib"}
    assert calibration_refusal(experiment({"quantization": "int8_wo"}),
                               {"HF_HUB_OFFLINE": "1"}) is None
    kv = calibration_refusal(experiment({"kv_cache_dtype": "fp8"}), {"HF_HUB_OFFLINE": "1"})
    assert kv is not None and "kv_cache_dtype fp8" in kv


def test_calib_dataset_without_calibration_is_rejected() -> None:
    with pytest.raises(ValidationError, match="calib_dataset only applies"):
        experiment({"quantization": "int4_wo", "calib_dataset": "/data/calib"})


def test_load_refuses_offline_calibration_before_importing(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # never reached
    with pytest.raises(BackendUnavailable, match="offline"):
        TensorRTBackend(experiment(CALIBRATING), DeviceInfo("cuda", 1)).load()


def test_pytorch_runtime_refuses_a_penalty_its_sampler_ignores() -> None:
    config = experiment({"runtime": "pytorch"}, decoder={"repetition_penalty": 1.2})
    refusal, dropped = unsupported_sampling(config, penalties=False, per_request_seed=True)
    assert refusal is not None and "repetition_penalty 1.2" in refusal and dropped == {}
    assert unsupported_sampling(config, penalties=True, per_request_seed=True) == (None, {})
    engine = experiment(decoder={"repetition_penalty": 1.2})
    assert unsupported_sampling(engine, penalties=False, per_request_seed=False) == (None, {})


def test_pytorch_runtime_flags_a_seed_its_sampler_ignores() -> None:
    sampled = experiment({"runtime": "pytorch"}, decoder={"preset": "standard"})
    refusal, dropped = unsupported_sampling(sampled, penalties=True, per_request_seed=False)
    assert refusal is None and list(dropped) == ["seed"]
    greedy = experiment({"runtime": "pytorch"})
    assert unsupported_sampling(greedy, penalties=True, per_request_seed=False) == (None, {})


def test_load_leaves_out_and_records_an_ignored_seed(fake_trtllm, monkeypatch) -> None:
    monkeypatch.setattr(trt_backend, "sampler_features", lambda: (True, False))
    config = experiment({"runtime": "pytorch"}, decoder={"preset": "standard"})
    backend = TensorRTBackend(config, DeviceInfo("cuda", 1))
    backend.load()
    assert "seed" not in backend._sampling_params.kwargs
    assert backend._sampling_params.kwargs == {"max_tokens": 128, "temperature": 1.0,
                                               "top_p": 0.95, "top_k": 50}
    assert list(backend.details()["sampling_not_applied"]) == ["seed"]


def test_sampling_kwargs_use_real_names() -> None:
    for config in (experiment(), experiment(decoder={"preset": "standard",
                                                     "repetition_penalty": 1.1},
                                            min_output_tokens=2)):
        check_names("SamplingParams", sampling_params_kwargs(config), TRTLLM_SAMPLING_PARAMS)


def test_dry_run_engine_args_show_constructor_and_sampling() -> None:
    config = experiment({"max_batch_size": 4}, max_input_tokens=64, max_output_tokens=16,
                        load_format="dummy", random_seed=9)
    assert engine_args(config) == {
        "library": "tensorrt_llm",
        "constructor": {
            "call": "tensorrt_llm._tensorrt_engine.LLM (tensorrt_llm.LLM before 1.0)",
            "kwargs": {
                "model": resolve_model(MODEL), "tokenizer": resolve_model(MODEL),
                "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
                "enable_chunked_prefill": False,
                "kv_cache_config": {"enable_block_reuse": False},
                "dtype": "bfloat16", "load_format": "dummy",
                "build_config": {"max_batch_size": 4, "max_input_len": 64, "max_seq_len": 80},
            },
        },
        "sampling": {"call": "tensorrt_llm.SamplingParams",
                     "kwargs": {"max_tokens": 16, "seed": 9, "top_k": 1}},
        "traffic": {"mode": "offline", "rate_rps": None, "seed": 0, "burstiness": 1.0,
                    "trace": None, "steady_after_responses": 16},
    }
    check_trtllm_llm_kwargs(engine_args(config)["constructor"]["kwargs"])
    too_short = experiment({"max_seq_len": 100}, max_input_tokens=80, max_output_tokens=40)
    assert "max_seq_len" in engine_args(too_short)["error"]


def test_resolved_llm_args_leave_out_what_a_version_lacks() -> None:
    args = types.SimpleNamespace(max_batch_size=8, max_seq_len=None,
                                 build_config=types.SimpleNamespace(max_batch_size=8))
    assert resolved_llm_args(args) == {"max_batch_size": 8, "max_seq_len": None,
                                       "build_config": {"max_batch_size": 8}}


# --- on a GPU with TensorRT-LLM installed ---------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
def test_dummy_engine_builds_caches_and_streams(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_llm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    config = experiment(
        {"engine_cache_dir": str(tmp_path), "max_batch_size": 4},
        model_name="builtin:llama-1b",
        load_format="dummy",
        max_input_tokens=64,
        max_output_tokens=16,
    )
    backend = TensorRTBackend(config, DeviceInfo("cuda", torch.cuda.device_count()))
    backend.load()
    try:
        records = backend.generate(["the quick brown fox", "jumps over", "the lazy dog"])
    finally:
        backend.release()
    assert [r.index for r in records] == [0, 1, 2]
    for record in records:
        assert 1 <= record.output_tokens <= 16
        assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.e2e_ms
        assert len(record.itl_ms) == record.output_tokens - 1
    again = TensorRTBackend(config, DeviceInfo("cuda", torch.cuda.device_count()))
    again.load()
    try:
        assert again.details()["engine_source"] == "cache"
    finally:
        again.release()


@pytest.mark.gpu
@pytest.mark.slow
def test_a_second_engine_of_the_key_loads_the_engine_from_the_compile_cache(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tensorrt_llm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    config = experiment({"max_batch_size": 4}, model_name="builtin:llama-1b",
                        load_format="dummy", max_input_tokens=64, max_output_tokens=16)
    cache, gpu = str(tmp_path / "compile_cache"), torch.cuda.get_device_name(0)
    first, use = _engine_cycle(CompiledArtifacts(cache, gpu), config)
    first.release()
    assert use.status == "miss" and use.sha256 is not None
    second, hit = _engine_cycle(CompiledArtifacts(cache, gpu), config)
    try:
        assert (hit.status, hit.sha256) == ("hit", use.sha256)
        assert second.details()["engine_source"] == "compile_cache"
        records = second.generate(["the quick brown fox", "jumps over"])
    finally:
        second.release()
    assert all(1 <= r.output_tokens <= 16 for r in records)
