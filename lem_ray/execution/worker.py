"""The experiment worker: an actor holding the run's GPUs, running one backend end to end."""

from __future__ import annotations

import gc
import os
import platform
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import psutil
import ray

from lem_ray.backends.base import Backend, DeviceInfo
from lem_ray.backends.registry import backend_class
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.gpus import GpuIdentity, resolve_gpus
from lem_ray.execution.handoff import PrefillResult, RunResult, WorkerIdentity
from lem_ray.execution.warmup import run_warmup


@dataclass(frozen=True)
class PrefillSettings:
    enabled: bool
    min_window_s: float
    max_repeats: int


class ExperimentWorker:
    """Created per run inside the run's placement group; dies with the run."""

    def __init__(self, config_json: str, prompts: list[str]) -> None:
        self.config = ExperimentConfig.model_validate_json(config_json)
        self.prompts = prompts
        ctx = ray.get_runtime_context()
        ids = ctx.get_accelerator_ids().get("GPU", [])
        self.identity: GpuIdentity = resolve_gpus([str(i) for i in ids])
        self.node_id = ctx.get_node_id()

    def identify(self) -> WorkerIdentity:
        return WorkerIdentity(
            **asdict(self.identity),
            node_ip=ray.util.get_node_ip_address(),
            node_id=self.node_id,
            hostname=socket.gethostname(),
            python_executable=sys.executable,
        )

    def run(self, sampler: Any, prefill: PrefillSettings) -> RunResult:
        """Load (and compile for the run's shapes), warm up, measure, then the prefill window;
        every window edge after a device sync."""
        cfg = self.config
        device = DeviceInfo(self.identity.device, len(self.identity.gpu_uuids))
        backend = backend_class(cfg.backend)(cfg, device)
        prompts = self.prompts
        t0 = time.perf_counter()
        backend.load()
        try:
            backend.prepare(prompts)
            backend.synchronize()
            load_s = time.perf_counter() - t0
            with _no_gc():
                return self._measure(backend, sampler, prefill, load_s)
        finally:
            backend.release()

    def _measure(
        self, backend: Backend[Any], sampler: Any, prefill: PrefillSettings, load_s: float
    ) -> RunResult:
        cfg = self.config
        prompts = self.prompts
        ray.get(sampler.begin.remote("warmup"))
        warmup = run_warmup(backend.generate, prompts, cfg.warmup, backend.warmup_batch_size)
        backend.synchronize()
        warmup_window = ray.get(sampler.end.remote("warmup"))
        ray.get(sampler.begin.remote("measure"))
        start_s = time.perf_counter()
        records = backend.measure(prompts)
        backend.synchronize()
        duration_s = time.perf_counter() - start_s
        # The sampler stamps its samples with time.time() on this node: keep the offset
        # that maps this process's perf_counter onto it, for the steady-state window.
        epoch_minus_perf_s = time.time() - time.perf_counter()
        measure_window = ray.get(sampler.end.remote("measure"))
        own_pids = _own_pids()
        measured = measure_window.energy_j is not None
        prefill_result = (
            _prefill(backend, sampler, prompts, prefill) if prefill.enabled and measured else None
        )
        return RunResult(
            records=records,
            measure_start_perf_s=start_s,
            duration_s=duration_s,
            load_s=load_s,
            timing_method=backend.timing_method,
            warmup=warmup,
            warmup_window=warmup_window,
            measure_window=measure_window,
            prefill=prefill_result,
            own_pids=own_pids,
            peak_memory_mib=peak_memory_mib(backend),
            versions={**backend.versions(), "python": platform.python_version(),
                      "ray": ray.__version__},
            details=backend.details(),
            engine_config=backend.engine_config(),
            steady_window=backend.steady_window(),
            epoch_minus_perf_s=epoch_minus_perf_s,
        )


def _prefill(
    backend: Backend[Any], sampler: Any, prompts: list[str], settings: PrefillSettings
) -> PrefillResult:
    """The measured prompts again, one output token each, repeated until the window is long
    enough for the energy counter (or max_repeats); energy is then divided by the passes."""
    backend.synchronize()
    ray.get(sampler.begin.remote("prefill"))
    started = time.perf_counter()
    passes = 0
    while True:
        backend.generate(prompts, max_output_tokens=1)
        passes += 1
        backend.synchronize()
        if time.perf_counter() - started >= settings.min_window_s or passes >= settings.max_repeats:
            break
    window = ray.get(sampler.end.remote("prefill"))
    return PrefillResult(window, passes, time.perf_counter() - started)


@contextmanager
def _no_gc() -> Iterator[None]:
    """No garbage collection inside the windows. A collection of a Ray worker's heap stalls
    the host for milliseconds, and a decode loop bound by kernel launches turns host stalls
    into time and energy. Objects alive now are frozen out of later collections; generate()
    makes few reference cycles, so memory stays flat without collecting for a run."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def peak_memory_mib(backend: Backend[Any]) -> float | None:
    """The backend's own count, else NVML's used memory on the GPUs it names."""
    peak = backend.peak_memory_mib()
    ids = backend.memory_gpu_ids() if peak is None else None
    if ids is None:
        return peak
    from lem_ray.telemetry.nvml import used_memory_mib

    return used_memory_mib(ids)


def _own_pids() -> set[int]:
    """This worker and its children (engines such as vLLM run the model in a child process)."""
    me = psutil.Process(os.getpid())
    return {me.pid, *(child.pid for child in me.children(recursive=True))}
