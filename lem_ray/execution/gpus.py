"""Which GPUs this worker holds, by NVML UUID: the identity the sampler measures by."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class GpuIdentity:
    device: str
    gpu_ids: list[str] = field(default_factory=list)
    gpu_uuids: list[str] = field(default_factory=list)
    gpu_names: list[str] = field(default_factory=list)


def resolve_gpus(ray_gpu_ids: list[str]) -> GpuIdentity:
    """UUIDs of the GPUs Ray gave this process.

    NVML ignores CUDA_VISIBLE_DEVICES, so indices must never reach it. Through torch the
    UUID comes from the CUDA device itself; without torch, Ray's ids are physical indices
    and match NVML's only under CUDA_DEVICE_ORDER=PCI_BUS_ID (which the driver exports).
    Logical GPUs with no device behind them (tests, CPU clusters) resolve to no UUIDs.
    """
    try:
        import torch

        if torch.cuda.is_available():
            props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
            return GpuIdentity(
                "cuda", list(ray_gpu_ids), [_nvml_uuid(p.uuid) for p in props], [p.name for p in props]
            )
    except ImportError:
        pass
    if ray_gpu_ids and os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        from lem_ray.telemetry.nvml import nvml_status, uuids_for_indices

        if nvml_status()[0]:
            uuids = uuids_for_indices([int(i) for i in ray_gpu_ids])
            return GpuIdentity("cuda", list(ray_gpu_ids), uuids, [])
    return GpuIdentity("cpu", list(ray_gpu_ids))


def _nvml_uuid(torch_uuid: object) -> str:
    text = str(torch_uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"
