"""The PyTorch backend on the shipped tiny model: real tokenization and generate()."""

from __future__ import annotations

import pytest
import torch

from lem_ray.backends.base import DeviceInfo
from lem_ray.backends.pytorch.backend import PyTorchBackend, generation_kwargs, output_lengths
from lem_ray.backends.pytorch.batching import make_batches
from lem_ray.backends.pytorch.config import PyTorchConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.planning.prompts import synthetic_prompts
from tests.conftest import TINY_BASE


def make_config(**overrides) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**TINY_BASE, "backend": "pytorch", **overrides})


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    cfg = make_config(prompts={"source": "synthetic", "count": 5,
                               "input_len": {"distribution": "uniform", "min": 4, "max": 40}})
    return synthetic_prompts(cfg.prompts, 0)


def run(cfg: ExperimentConfig, prompts: list[str]):
    backend = PyTorchBackend(cfg, DeviceInfo("cpu"))
    backend.load()
    try:
        return backend.generate(prompts), backend.details()
    finally:
        backend.release()


def test_fixed_length_generation_times_every_token(prompts) -> None:
    cfg = make_config(max_output_tokens=6, min_output_tokens=6, max_input_tokens=24,
                      pytorch={"batch_size": 2})
    records, details = run(cfg, prompts)
    assert [r.index for r in records] == list(range(len(prompts)))
    for record, text in zip(records, prompts):
        assert record.input_tokens == min(24, len(text.split())), "word-level tokenizer, truncated"
        assert record.output_tokens == 6
        assert len(record.itl_ms) == 5
        assert 0 < record.ttft_ms <= record.e2e_ms
        assert record.ttft_ms + sum(record.itl_ms) == pytest.approx(record.e2e_ms, rel=1e-6)
    assert details["device"] == "cpu" and details["parameters"] > 100_000


def test_sorted_batching_returns_records_in_prompt_order(prompts) -> None:
    cfg = make_config(pytorch={"batch_size": 2, "batching_strategy": "sorted"})
    records, _ = run(cfg, prompts)
    assert [r.input_tokens for r in records] == [min(32, len(p.split())) for p in prompts]


def test_output_lengths_stop_at_first_eos() -> None:
    generated = torch.tensor([[5, 6, 2, 3, 3], [5, 6, 7, 8, 9], [2, 3, 3, 3, 3]])
    assert output_lengths(generated, {2}, 0) == [3, 5, 1]
    assert output_lengths(generated, {2}, 4) == [5, 5, 5]


def test_greedy_and_sampled_generation_kwargs() -> None:
    greedy = generation_kwargs(make_config(), 3, 2)
    assert greedy["do_sample"] is False and greedy["temperature"] is None
    assert greedy["max_new_tokens"] == 8 and greedy["min_new_tokens"] == 8
    sampled = generation_kwargs(
        make_config(decoder={"preset": "creative"}, min_output_tokens=0), 3, 2
    )
    assert sampled["do_sample"] is True and sampled["temperature"] == 1.2
    assert "min_new_tokens" not in sampled
    static = generation_kwargs(make_config(pytorch={"cache_implementation": "static"}), 3, 2)
    assert static["cache_implementation"] == "static"


def sampled_token_ids(cfg: ExperimentConfig, prompts: list[str]) -> list[list[int]]:
    """The tokens generate() produced (the records only count them)."""
    backend = PyTorchBackend(cfg, DeviceInfo("cpu"))
    backend.load()
    produced: list[list[int]] = []
    generate = backend._model.generate

    def recording(**kwargs):
        out = generate(**kwargs)
        produced.extend(out[:, kwargs["input_ids"].shape[1]:].tolist())
        return out

    backend._model.generate = recording
    try:
        backend.generate(prompts)
    finally:
        backend.release()
    return produced


def test_sampling_is_seeded(prompts) -> None:
    sampled = {"decoder": {"preset": "standard"}, "min_output_tokens": 12, "max_output_tokens": 12,
               "pytorch": {"batch_size": 2}}
    cfg = make_config(**sampled)
    assert generation_kwargs(cfg, 0, 1)["do_sample"] is True
    first = sampled_token_ids(cfg, prompts[:2])
    assert len(first) == 2 and all(len(ids) == 12 for ids in first)
    assert sampled_token_ids(cfg, prompts[:2]) == first, "same seed, same tokens"
    other = sampled_token_ids(make_config(**sampled, random_seed=cfg.random_seed + 1), prompts[:2])
    assert other != first, "another seed draws other tokens"


@pytest.mark.parametrize(
    ("strategy", "budget", "expected"),
    [
        ("static", None, [[0, 1], [2, 3], [4]]),
        ("sorted", None, [[1, 3], [4, 0], [2]]),
        ("dynamic", 16, [[1, 3], [4], [0], [2]]),
    ],
)
def test_batching(strategy: str, budget: int | None, expected: list[list[int]]) -> None:
    lengths = [9, 2, 30, 5, 8]
    opts = PyTorchConfig(batch_size=2, batching_strategy=strategy, max_tokens_per_batch=budget)
    assert make_batches(lengths, opts) == expected


def test_missing_local_model_fails_clearly(tmp_path) -> None:
    cfg = make_config(model_name=str(tmp_path / "no-such-model"), load_format="auto")
    with pytest.raises(OSError):
        PyTorchBackend(cfg, DeviceInfo("cpu")).load()


def test_event_offsets_share_the_host_clock_origin() -> None:
    from lem_ray.backends.pytorch.backend import request_record
    from lem_ray.backends.pytorch.timing import times_from_offsets

    times = times_from_offsets(100.0, [20.0, 25.0, 31.0, 40.0])
    assert times == pytest.approx([100.020, 100.025, 100.031, 100.040])
    record = request_record(7, 3, times, start_s=100.0, done_s=100.050)
    assert record.ttft_ms == pytest.approx(20.0)
    assert record.itl_ms == pytest.approx([5.0, 6.0])
    assert record.e2e_ms == pytest.approx(31.0), "a row that ended early ends at its last token"
    untimed = request_record(7, 5, times, start_s=100.0, done_s=100.050)
    assert (
        untimed.ttft_ms is None and untimed.itl_ms == [] and untimed.e2e_ms == pytest.approx(50.0)
    )


def test_step_clock_on_cpu_stamps_every_step_with_the_host_clock() -> None:
    from lem_ray.backends.pytorch.timing import HOST_CLOCK, StepClock

    clock = StepClock(torch, torch.device("cpu"))
    clock.start()
    scores = torch.zeros(2, 5)
    assert clock(None, scores) is scores, "the logits pass through untouched"
    clock(None, scores)
    times = clock.token_times_s()
    assert clock.method == HOST_CLOCK
    assert len(times) == 2 and clock.start_s <= times[0] <= times[1]


def test_compiled_loop_matches_generate_greedy(prompts) -> None:
    """The compiled decode loop (run eagerly on the CPU) produces generate()'s tokens for
    left-padded batches, reuses one static cache per batch size, and times every token."""
    plain = make_config(max_output_tokens=10, min_output_tokens=3, pytorch={"batch_size": 2})
    fast = make_config(max_output_tokens=10, min_output_tokens=3,
                       pytorch={"batch_size": 2, "cache_implementation": "static",
                                "torch_compile": "reduce-overhead"})
    tokens = {}
    for name, cfg in (("generate", plain), ("loop", fast)):
        backend = PyTorchBackend(cfg, DeviceInfo("cpu"))
        backend.load()
        try:
            backend.prepare(prompts)
            encoded = backend._encode(prompts)
            rows = []
            for start in range(0, len(encoded), 2):
                inputs = backend._tokenizer.pad({"input_ids": encoded[start:start + 2]},
                                                return_tensors="pt")
                if backend._loop is not None:
                    from lem_ray.backends.pytorch.timing import StepClock

                    clock = StepClock(torch, torch.device("cpu"))
                    clock.start()
                    out = backend._loop.run(inputs["input_ids"], inputs["attention_mask"],
                                            10, 3, clock)
                    assert len(clock.token_times_s()) == 10
                else:
                    out = backend._model.generate(**inputs, **backend._gen_kwargs)
                    out = out[:, inputs["input_ids"].shape[1]:]
                rows += out.tolist()
            tokens[name] = rows
            records = backend.generate(prompts)
            assert [len(r.itl_ms) for r in records] == [9] * len(prompts)
            assert backend.timing_method == "host_clock"
            if backend._loop is not None:
                assert sorted(backend._loop._caches._caches) == [1, 2]
                assert backend.details()["cuda_graphs"] == 0, "no graphs on the CPU"
        finally:
            backend.release()
    assert tokens["loop"] == tokens["generate"]


def test_compiled_loop_config_rules() -> None:
    from lem_ray.errors import ConfigError

    with pytest.raises((ValueError, ConfigError), match="needs cache_implementation 'static'"):
        make_config(pytorch={"torch_compile": "reduce-overhead"})
    with pytest.raises((ValueError, ConfigError), match="flash_attention_2"):
        make_config(pytorch={"cache_implementation": "static", "torch_compile": "default",
                             "attn_implementation": "flash_attention_2"})
    with pytest.raises((ValueError, ConfigError), match="repetition_penalty"):
        make_config(decoder={"repetition_penalty": 1.2},
                    pytorch={"cache_implementation": "static", "torch_compile": "reduce-overhead"})
    eager_static = generation_kwargs(make_config(pytorch={"cache_implementation": "static"}), 3, 2)
    assert eager_static["disable_compile"] is True, "static cache alone must stay eager"
    with pytest.raises((ValueError, ConfigError), match="compile_prefill: only with"):
        make_config(pytorch={"compile_prefill": True})


def test_compile_prefill_is_an_engine_field_and_prepare_meets_the_shortest_prompt(prompts) -> None:
    """A compiled prefill may specialise on a prompt's length: prepare() runs the longest and
    the shortest prompt at every batch size, so no compilation falls in a window."""
    fast = {"cache_implementation": "static", "torch_compile": "reduce-overhead", "batch_size": 2}
    plain = make_config(max_output_tokens=4, min_output_tokens=4, pytorch=fast)
    config = make_config(max_output_tokens=4, min_output_tokens=4,
                         pytorch={**fast, "compile_prefill": True})
    assert plain.engine_key != config.engine_key, "compile_prefill needs its own load"
    backend = PyTorchBackend(config, DeviceInfo("cpu"))
    backend.load()
    shapes: list[tuple[int, int]] = []
    run_batch = backend._run_batch

    def spy(token_ids, gen_kwargs, min_tokens):
        shapes.append((len(token_ids), max(len(ids) for ids in token_ids)))
        return run_batch(token_ids, gen_kwargs, min_tokens)

    backend._run_batch = spy
    try:
        backend.prepare(prompts)
        lengths = [len(ids) for ids in backend._encode(prompts)]
        assert min(lengths) < max(lengths), "prompts of several lengths"
        sizes = {len(b) for b in make_batches(lengths, backend.options)}
        assert sorted(shapes) == sorted((size, length) for size in sizes
                                        for length in (max(lengths), min(lengths)))
        records = backend.generate(prompts)
        assert [r.output_tokens for r in records] == [4] * len(prompts)
    finally:
        backend.release()


def test_dummy_model_split_over_devices_is_built_on_meta_then_materialised() -> None:
    """Two 'devices' (both the CPU here: no GPUs on CI): layers split evenly, each part
    allocated and initialised in place, rotary frequencies recomputed, outputs finite."""
    import transformers

    from lem_ray.assets import resolve_model
    from lem_ray.backends.pytorch.dummy import balanced_device_map, materialise

    config = transformers.AutoConfig.from_pretrained(resolve_model("builtin:llama-1b"))
    with torch.device("meta"):
        big = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    split = balanced_device_map(big, ["gpu0", "gpu1"])
    layers = [name for name in split if ".layers." in name]
    assert [split[n] for n in layers].count("gpu0") == len(layers) // 2
    assert split["model.embed_tokens"] == "gpu0" and split["lm_head"] == "gpu1"

    tiny = transformers.AutoConfig.from_pretrained(resolve_model("builtin:tiny-llama"))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(tiny, dtype=torch.float32)
    reference = transformers.AutoModelForCausalLM.from_config(tiny, dtype=torch.float32)
    materialise(model, balanced_device_map(model, [torch.device("cpu")] * 2))
    assert not any(p.is_meta for p in model.parameters())
    for (name, got), (_, want) in zip(model.named_buffers(), reference.named_buffers()):
        assert torch.allclose(got, want), name
    norm = model.model.norm.weight
    assert torch.equal(norm, torch.ones_like(norm))
    assert 0.01 < float(model.lm_head.weight.detach().std()) < 0.03
    with torch.inference_mode():
        assert torch.isfinite(model(torch.tensor([[1, 5, 6, 7]])).logits).all()



def test_compiled_loop_takes_another_batch_size_on_the_loaded_engine(prompts) -> None:
    """Batch size is runtime for the compiled loop: a loaded engine configured for batch 4
    gives a fresh batch-4 engine's tokens and keeps a cache for each size it ran."""
    from lem_ray.backends.pytorch.timing import StepClock

    fast = {"cache_implementation": "static", "torch_compile": "reduce-overhead"}
    small = make_config(max_output_tokens=8, min_output_tokens=2,
                        pytorch={**fast, "batch_size": 2})
    large = make_config(max_output_tokens=8, min_output_tokens=2,
                        pytorch={**fast, "batch_size": 4})
    assert small.engine_key == large.engine_key

    def token_ids(backend: PyTorchBackend) -> list[list[int]]:
        backend.prepare(prompts)
        assert len(backend.generate(prompts)) == len(prompts)
        size = backend.options.batch_size
        encoded = backend._encode(prompts)
        rows = []
        for start in range(0, len(encoded), size):
            inputs = backend._tokenizer.pad({"input_ids": encoded[start:start + size]},
                                            return_tensors="pt")
            clock = StepClock(torch, torch.device("cpu"))
            clock.start()
            rows += backend._loop.run(inputs["input_ids"], inputs["attention_mask"], 8, 2,
                                      clock).tolist()
        return rows

    fresh = PyTorchBackend(large, DeviceInfo("cpu"))
    fresh.load()
    try:
        expected = token_ids(fresh)
    finally:
        fresh.release()
    warm = PyTorchBackend(small, DeviceInfo("cpu"))
    warm.load()
    try:
        token_ids(warm)
        warm.configure(large)
        assert token_ids(warm) == expected
        assert sorted(warm._loop._caches._caches) == [1, 2, 4]
    finally:
        warm.release()


def test_compiled_loop_ends_at_eos_exactly_at_min_output_tokens(prompts) -> None:
    """generate()'s rule in lem-ray's loop (run eagerly on the CPU): EOS may be the
    (min_new_tokens + 1)-th token at the earliest. A token the model picks at position k is
    made EOS: with min_new_tokens k the answer ends there (k + 1 tokens, pad after it); with
    k + 1 it is suppressed and the answer goes on."""
    import transformers

    from lem_ray.backends.pytorch.decode_loop import DecodeLoop
    from lem_ray.backends.pytorch.timing import StepClock

    backend = PyTorchBackend(make_config(max_output_tokens=8), DeviceInfo("cpu"))
    backend.load()
    try:
        model, pad_id = backend._model, backend._tokenizer.pad_token_id
        inputs = backend._tokenizer.pad({"input_ids": backend._encode(prompts[:1])},
                                        return_tensors="pt")

        def tokens(eos_ids: set[int], min_new: int) -> list[int]:
            loop = DecodeLoop(torch, transformers, model, "default", None, eos_ids, pad_id, 8)
            clock = StepClock(torch, torch.device("cpu"))
            clock.start()
            out = loop.run(inputs["input_ids"], inputs["attention_mask"], 8, min_new, clock)
            assert len(clock.token_times_s()) == 8, "every step timed, ended or not"
            return out[0].tolist()

        # the answer with no EOS allowed (a token never picked here stands for it)
        free = tokens({model.config.vocab_size - 1}, 8)
        for k in (0, 3):
            eos = free[k]
            assert eos not in free[:k] and eos != pad_id, "pick another prompt or position"
            ended = tokens({eos}, k)
            assert ended[:k + 1] == free[:k + 1] and ended[k + 1:] == [pad_id] * (7 - k)
            assert output_lengths(torch.tensor([ended]), {eos}, k) == [k + 1]
            longer = tokens({eos}, k + 1)
            assert longer[:k] == free[:k] and longer[k] != eos
            assert output_lengths(torch.tensor([longer]), {eos}, k + 1)[0] > k + 1
    finally:
        backend.release()
