"""The experiment worker: an actor holding the run's GPUs, running one backend end to end."""

from __future__ import annotations

import platform
import socket
import time
from dataclasses import asdict
from typing import Any

import ray

from lem_ray.backends.base import DeviceInfo
from lem_ray.backends.registry import backend_class
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.gpus import GpuIdentity, resolve_gpus
from lem_ray.execution.warmup import run_warmup


class ExperimentWorker:
    """Created per run inside the run's placement group; dies with the run."""

    def __init__(self, config_json: str, prompts: list[str]) -> None:
        self.config = ExperimentConfig.model_validate_json(config_json)
        self.prompts = prompts
        ctx = ray.get_runtime_context()
        ids = ctx.get_accelerator_ids().get("GPU", [])
        self.identity: GpuIdentity = resolve_gpus([str(i) for i in ids])
        self.node_id = ctx.get_node_id()

    def identify(self) -> dict[str, Any]:
        return {
            **asdict(self.identity),
            "node_ip": ray.util.get_node_ip_address(),
            "node_id": self.node_id,
            "hostname": socket.gethostname(),
        }

    def run(self, sampler: Any) -> dict[str, Any]:
        """Load, warm up (its own window), measure, release. Energy edges wait for the device."""
        cfg = self.config
        device = DeviceInfo(self.identity.device, len(self.identity.gpu_uuids))
        backend = backend_class(cfg.backend)(cfg, device)
        prompts = self.prompts
        t0 = time.perf_counter()
        backend.load()
        load_s = time.perf_counter() - t0
        try:
            backend.synchronize()
            ray.get(sampler.begin.remote("warmup"))
            warmup = run_warmup(backend.generate, prompts, cfg.warmup, backend.warmup_batch_size)
            backend.synchronize()
            warmup_window = ray.get(sampler.end.remote("warmup"))
            ray.get(sampler.begin.remote("measure"))
            start_s = time.perf_counter()
            records = backend.generate(prompts)
            backend.synchronize()
            duration_s = time.perf_counter() - start_s
            measure_window = ray.get(sampler.end.remote("measure"))
            return {
                "records": records,
                "measure_start_s": start_s,
                "duration_s": duration_s,
                "load_s": load_s,
                "warmup": warmup,
                "warmup_window": warmup_window,
                "measure_window": measure_window,
                "peak_memory_mb": backend.peak_memory_mb(),
                "versions": {**backend.versions(), "python": platform.python_version(),
                             "ray": ray.__version__},
                "details": backend.details(),
            }
        finally:
            backend.release()
