"""The PyTorch fast path on a real GPU: CUDA graphs really captured and replayed, not eager."""

from __future__ import annotations

import pytest

from lem_ray.backends.base import DeviceInfo
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.planning.prompts import synthetic_prompts
from tests.conftest import TINY_BASE

pytestmark = pytest.mark.gpu


def _config(**pytorch) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        **TINY_BASE, "backend": "pytorch", "max_output_tokens": 16, "min_output_tokens": 16,
        "prompts": {"source": "synthetic", "count": 5, "input_len": {"mean": 16, "std": 4}},
        "pytorch": pytorch,
    })


def _first_two(torch, backend, prompts: list[str]) -> list[list[int]]:
    """16 greedy tokens for the first two prompts as one batch: through generate() when the
    backend has no compiled loop, else through the loop."""
    inputs = backend._tokenizer.pad({"input_ids": backend._encode(prompts[:2])},
                                    return_tensors="pt").to("cuda")
    if backend._loop is None:
        out = backend._model.generate(**inputs, **backend._gen_kwargs)
        return out[:, inputs["input_ids"].shape[1]:].tolist()
    from lem_ray.backends.pytorch.timing import StepClock

    return backend._loop.run(inputs["input_ids"], inputs["attention_mask"], 16, 16,
                             StepClock(torch, torch.device("cuda"))).tolist()


def _assert_agree(tokens: list[list[list[int]]]) -> None:
    """Two runs' tokens agree at 90% of the 2 x 16 positions or more (float rounding in a
    different kernel may flip a near-tie)."""
    agree = sum(a == b for x, y in zip(*tokens) for a, b in zip(x, y))
    assert agree >= 0.9 * 2 * 16, tokens


def test_fast_path_replays_cuda_graphs() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    from torch.profiler import ProfilerActivity, profile

    from lem_ray.backends.pytorch.backend import PyTorchBackend

    cfg = _config(batch_size=2, cache_implementation="static", torch_compile="reduce-overhead")
    prompts = synthetic_prompts(cfg.prompts, 0)
    backend = PyTorchBackend(cfg, DeviceInfo("cuda", 1))
    backend.load()
    try:
        backend.prepare(prompts)
        assert backend.details()["cuda_graphs"] == 2, "one graph per batch shape: 2 and the last 1"
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            records = backend.generate(prompts)
        launches = sum("cudaGraphLaunch" in e.name for e in prof.events())
        assert launches >= 15 * 3, "every decode step of every batch replays a graph"
        assert backend.details()["cuda_graphs"] == 2, "nothing captured again inside a window"
        assert backend.timing_method == "cuda_event"
        assert [r.output_tokens for r in records] == [16] * len(prompts)
        for r in records:
            assert len(r.itl_ms) == 15 and all(gap > 0 for gap in r.itl_ms)
            assert r.ttft_ms + sum(r.itl_ms) == pytest.approx(r.e2e_ms, rel=1e-6)
    finally:
        backend.release()


def test_fast_path_tokens_match_eager_generate() -> None:
    """Greedy tokens of the graphed loop equal generate()'s on the same weights (float32)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    from lem_ray.backends.pytorch.backend import PyTorchBackend

    tokens = []
    for pytorch in ({"batch_size": 2},
                    {"batch_size": 2, "cache_implementation": "static",
                     "torch_compile": "reduce-overhead"}):
        cfg = _config(**pytorch)
        prompts = synthetic_prompts(cfg.prompts, 0)
        backend = PyTorchBackend(cfg, DeviceInfo("cuda", 1))
        backend.load()
        try:
            backend.prepare(prompts)
            tokens.append(_first_two(torch, backend, prompts))
        finally:
            backend.release()
    _assert_agree(tokens)


@pytest.mark.slow
def test_fast_path_compiles_every_batch_shape_past_dynamos_default_limit() -> None:
    """Ten batch shapes on one engine: each step compiled (Dynamo's default limit of 8 would
    have run the last shapes eagerly inside their graphs, without a word)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    from torch._dynamo.utils import counters

    from lem_ray.backends.pytorch.backend import PyTorchBackend
    from lem_ray.backends.pytorch.timing import StepClock

    cfg = _config(batch_size=1, cache_implementation="static", torch_compile="reduce-overhead")
    backend = PyTorchBackend(cfg, DeviceInfo("cuda", 1))
    backend.load()
    loop = backend._loop
    device = torch.device("cuda", 0)
    try:
        before = counters["stats"]["unique_graphs"]
        for batch in range(1, 11):
            ids = torch.randint(4, 200, (batch, 12), device=device)
            mask = torch.ones_like(ids)
            out = loop.run(ids, mask, 16, 16, StepClock(torch, device))
            assert tuple(out.shape) == (batch, 16)
        assert loop.graphs == 10
        assert counters["stats"]["unique_graphs"] - before >= 10, "a shape ran uncompiled"
    finally:
        backend.release()


def test_compiled_prefill_compiles_in_prepare_only_and_keeps_the_tokens() -> None:
    """pytorch.compile_prefill: every compilation happens in prepare() (none in a window, for
    prompts of several lengths and a last batch of 1), and greedy tokens stay those of the
    eager prefill."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    from torch._dynamo.utils import counters

    from lem_ray.backends.pytorch.backend import PyTorchBackend

    outputs = []
    for compile_prefill in (False, True):
        cfg = _config(batch_size=2, cache_implementation="static",
                      torch_compile="reduce-overhead", compile_prefill=compile_prefill)
        prompts = synthetic_prompts(cfg.prompts, 0)
        assert len({len(p.split()) for p in prompts}) > 1, "prompts of several lengths"
        backend = PyTorchBackend(cfg, DeviceInfo("cuda", 1))
        backend.load()
        try:
            backend.prepare(prompts)
            compiled = counters["stats"]["unique_graphs"]
            backend.generate(prompts)
            backend.generate(prompts[1:])
            assert counters["stats"]["unique_graphs"] == compiled, "compiled inside a window"
            outputs.append(_first_two(torch, backend, prompts))
        finally:
            backend.release()
    _assert_agree(outputs)


def test_a_second_engine_of_a_key_loads_the_cached_kernels(tmp_path) -> None:
    """Two fresh processes with empty Inductor and Triton caches, the fast path through the
    worker's compile-cache code: the first compiles and publishes, the second loads the entry
    (FX-graph cache hits, no miss: nothing compiled in it) and serves the same tokens."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    out = tmp_path / "cc.json"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "bench/compile_cache.py", "--tiny", "--processes", "1",
                           "--batch", "2", "--out", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    cold, cached = figures["cold"], figures["cached"][0]
    assert cold["compile_cache"] == "miss" and cold["fx_graph_cache"]["miss"] > 0
    assert cached["compile_cache"] == "hit" and cached["sha256"] == cold["sha256"]
    assert cached["fx_graph_cache"]["hit"] > 0
    assert cached["fx_graph_cache"]["miss"] == cached["fx_graph_cache"]["bypass"] == 0
    assert cached["cuda_graphs"] == cold["cuda_graphs"] > 0
    assert cached["tokens"] == cold["tokens"]
