"""The sampler on a real GPU through NVML: counter energy, its integrated cross-check,
environment."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from lem_ray.telemetry.nvml import GpuDevice, nvml_status, uuids_for_indices
from lem_ray.telemetry.sampler import SOURCE_COUNTER, EnergySampler

_available, _reason = nvml_status()
if not _available:
    pytest.skip(f"needs NVML: {_reason}", allow_module_level=True)

pytestmark = pytest.mark.gpu

WINDOW_S = 2.0


def first_visible_uuid() -> str:
    """The worker's first visible GPU, resolved the way the execution layer does it."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    return uuids_for_indices([first])[0]


def load_for(duration_s: float) -> Callable[[], None]:
    """A bf16 matmul loop on the GPU if torch can reach it, else idle; returns a device sync."""
    try:
        import torch
    except ImportError:
        time.sleep(duration_s)
        return lambda: None
    if not torch.cuda.is_available():
        time.sleep(duration_s)
        return lambda: None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    deadline_s = time.monotonic() + duration_s
    while time.monotonic() < deadline_s:
        for _ in range(8):
            a @ b
        torch.cuda.synchronize()
    return torch.cuda.synchronize


def test_uuid_matches_torch_view() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    assert first_visible_uuid() == f"GPU-{torch.cuda.get_device_properties(0).uuid}"


def test_counter_window_on_real_gpu() -> None:
    uuid = first_visible_uuid()
    with EnergySampler([uuid], sample_interval_ms=50) as sampler:
        assert sampler.energy_source == SOURCE_COUNTER, sampler.unavailable_reason
        load_for(0.5)
        sampler.begin("measure")
        sync = load_for(WINDOW_S)
        sync()
        result = sampler.end("measure")

    assert result.source == SOURCE_COUNTER
    assert result.energy_j is not None and result.energy_j > 0
    assert result.energy_by_gpu_j[uuid] == result.energy_j
    mean_power_w = result.energy_j / result.duration_s
    assert 20 < mean_power_w < 2000
    assert result.samples >= WINDOW_S / 0.05 / 2
    assert result.integrated_energy_j == pytest.approx(result.energy_j, rel=0.10)
    assert result.temperature_start_c is not None and result.temperature_max_c is not None
    assert sampler.sampler_cpu_s() > 0

    rows = sampler.timeseries(since_s=result.start_s)
    assert rows and all(r["gpu_uuid"] == uuid and r["power_w"] > 0 for r in rows)
    assert rows[-1]["energy_j"] > rows[0]["energy_j"]


def test_environment_and_baseline_on_real_gpu() -> None:
    uuid = first_visible_uuid()
    device = GpuDevice(uuid)
    sample = device.sample()
    assert sample.power_w is not None and sample.power_w > 0
    assert sample.sm_clock_mhz is not None and sample.memory_used_mib is not None

    sampler = EnergySampler([uuid])
    env = sampler.environment()[uuid]
    assert env["name"] and env["driver_version"] and env["cuda_driver_version"]
    assert env["power_limit_w"] and env["power_limit_w"] > 0
    assert env["architecture"] and env["energy_counter_supported"] is True
    assert isinstance(env["compute_process_pids"], list)

    baseline = sampler.measure_idle_baseline(duration_s=1.0, interval_ms=50)[uuid]
    assert baseline["power_w"] > 0 and baseline["samples"] == 20
    cached = sampler.baseline(uuid)
    assert cached["measured_at_s"] == baseline["measured_at_s"] and cached["age_s"] < 5.0
    assert sampler.measure_idle_baseline(duration_s=1.0, interval_ms=50)[uuid]["measured_at_s"] \
        == baseline["measured_at_s"], "fresh: reused, not measured again"
