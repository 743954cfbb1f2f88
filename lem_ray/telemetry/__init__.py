"""GPU telemetry: NVML device access and the energy sampler. Knows NVML, nothing of backends."""

from lem_ray.telemetry.nvml import (
    DeviceReader,
    GpuDevice,
    GpuSample,
    TelemetryError,
    nvml_status,
    uuids_for_indices,
)
from lem_ray.telemetry.sampler import EnergySampler, WindowResult

__all__ = [
    "DeviceReader",
    "EnergySampler",
    "GpuDevice",
    "GpuSample",
    "TelemetryError",
    "WindowResult",
    "nvml_status",
    "uuids_for_indices",
]
