"""Connecting to Ray: the given cluster, or a local instance started for this campaign."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray

# Every worker of the campaign gets these, whatever node it lands on.
WORKER_ENV = {
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def connect(address: str | None) -> bool:
    """True when this call started Ray (so the caller shuts it down afterwards)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    options = {
        "namespace": "lem-ray",
        "runtime_env": {"env_vars": WORKER_ENV},
        "logging_level": "WARNING",
    }
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(include_dashboard=False, **options)
    return True


@dataclass(frozen=True)
class Capacity:
    total_gpus: int
    max_gpus_per_node: int

    @property
    def has_gpus(self) -> bool:
        return self.total_gpus > 0


def capacity() -> Capacity:
    gpus = [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return Capacity(sum(gpus), max(gpus, default=0))
