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
        captured = backend.details()["cuda_graphs"]
        assert captured >= 2, "one graph per batch shape (2 and the remainder 1) at prepare"
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            records = backend.generate(prompts)
        names = {e.name for e in prof.events()}
        assert any("cudaGraphLaunch" in n for n in names), "decode steps must replay graphs"
        details = backend.details()
        assert details["cudagraph_skips"] == 0
        assert details["cuda_graphs"] == captured, "no graph recorded again inside the window"
        assert backend.timing_method == "cuda_event"
        assert [r.output_tokens for r in records] == [16] * len(prompts)
        for r in records:
            assert len(r.itl_ms) == 15 and all(gap > 0 for gap in r.itl_ms)
            assert r.ttft_ms + sum(r.itl_ms) == pytest.approx(r.e2e_ms, rel=1e-6)
    finally:
        backend.release()
