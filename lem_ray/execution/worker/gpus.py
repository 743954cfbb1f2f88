"""Which GPUs this worker holds, by NVML UUID: the identity the sampler measures by."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DRIVER_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
"""Device files of the NVIDIA, ROCm and WSL GPU drivers: without any of them no torch build
can see a GPU, so torch need not be imported to ask."""


@dataclass
class GpuIdentity:
    """The GPUs a worker holds, by Ray id, NVML UUID and name."""

    device: str
    gpu_ids: list[str] = field(default_factory=list)
    gpu_uuids: list[str] = field(default_factory=list)
    gpu_names: list[str] = field(default_factory=list)


def resolve_gpus(ray_gpu_ids: list[str]) -> GpuIdentity:
    """UUIDs of the GPUs Ray gave this process.

    NVML ignores CUDA_VISIBLE_DEVICES, so indices must never reach it blindly. Ray's ids are
    physical indices, which match NVML's numbering under CUDA_DEVICE_ORDER=PCI_BUS_ID (the
    driver exports it to every worker): that path is tried first because it creates no CUDA
    context in the worker, so the idle baseline taken next is truly idle and vLLM can still
    fork its workers. Without NVML, torch reports the UUID from the CUDA device itself.
    Logical GPUs with no device behind them (tests, CPU clusters) resolve to no UUIDs, without
    importing torch where no GPU driver is installed: a worker's start, which its first run
    waits for while the GPUs are held, then imports no more than a start on NVML does.
    """
    ids = list(ray_gpu_ids)
    if ids and os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        from lem_ray.telemetry.nvml import GpuDevice, nvml_status, uuids_for_indices

        if nvml_status()[0]:
            uuids = uuids_for_indices(ids)
            return GpuIdentity("cuda", ids, uuids, [GpuDevice(u).name for u in uuids])
    if not any(os.path.exists(node) for node in DRIVER_NODES):
        return GpuIdentity("cpu", ids)
    try:
        import torch
    except ImportError:
        return GpuIdentity("cpu", ids)
    if not torch.cuda.is_available():
        return GpuIdentity("cpu", ids)
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return GpuIdentity("cuda", ids, [_nvml_uuid(p.uuid) for p in props], [p.name for p in props])


def _nvml_uuid(torch_uuid: object) -> str:
    text = str(torch_uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"
