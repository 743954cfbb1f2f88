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
    sampled = generation_kwargs(make_config(decoder={"preset": "creative"}, min_output_tokens=0), 3, 2)
    assert sampled["do_sample"] is True and sampled["temperature"] == 1.2
    assert "min_new_tokens" not in sampled
    static = generation_kwargs(make_config(pytorch={"cache_implementation": "static"}), 3, 2)
    assert static["cache_implementation"] == "static"


def test_sampling_is_seeded(prompts) -> None:
    cfg = make_config(decoder={"preset": "standard"}, min_output_tokens=0, max_output_tokens=12)
    first, _ = run(cfg, prompts[:2])
    second, _ = run(cfg, prompts[:2])
    assert [r.output_tokens for r in first] == [r.output_tokens for r in second]


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
