"""The experiment worker: an actor holding a set of GPUs for as many runs as the driver sends
it, keeping loaded engines (up to execution.max_engines_per_worker, as GPU memory allows) for
later runs whose engine config equals one of theirs."""

from __future__ import annotations

import gc
import os
import platform
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Iterator

import psutil
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from lem_ray.backends.base import Backend, DeviceInfo
from lem_ray.backends.registry import backend_class
from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.compiled import CacheUse, CompiledArtifacts
from lem_ray.execution.engines import EnginePool, out_of_memory
from lem_ray.execution.gpus import GpuIdentity, resolve_gpus
from lem_ray.execution.handoff import (
    GpuConditions,
    PrefillResult,
    RunOutcome,
    RunResult,
    WorkerIdentity,
)
from lem_ray.execution.sampler_actor import SamplerActor, host_key
from lem_ray.execution.warmup import run_warmup


@dataclass(frozen=True)
class PrefillSettings:
    enabled: bool
    min_window_s: float
    max_repeats: int


@dataclass
class RunRequest:
    """One run as the driver hands it to a worker."""

    config_json: str
    prompts: list[str]
    execution: ExecutionConfig
    baselines: Any
    """The campaign's BaselineCache actor (also the record of which runs share a node)."""
    gap_s: float = 0.0
    keep_engine: bool = True
    metric_tags: dict[str, str] | None = None
    """The run's tags on Ray's metrics (execution.metrics.run_tags); None: metrics off."""
    compile_cache: str | None = None
    """Where the campaign's compile cache lives (results/compile_cache.py); None: off."""


def no_gpu_reason(identity: GpuIdentity) -> str | None:
    """Why a run has no GPU to measure, in words a reader of the results table understands."""
    if identity.gpu_uuids:
        return None
    if identity.gpu_ids:
        return (f"Ray assigned GPU ids {identity.gpu_ids} but no CUDA device or NVML is "
                "visible on this node (logical GPUs?), so energy cannot be measured")
    return "ran on CPU: energy is measured on NVIDIA GPUs through NVML only"


def plain_versions(found: dict[str, Any]) -> dict[str, str]:
    """Plain strings: a library's own version type (torch's TorchVersion) would make the driver
    import that library to unpickle the result, and a driver without it fail."""
    return {name: str(version) for name, version in found.items()}


class ExperimentWorker:
    """Lives in a placement group as long as the driver keeps that group; its sampler (in the
    same group, bound to the same GPU UUIDs) lives as long as it."""

    def __init__(self, sample_interval_ms: float | None = None) -> None:
        ctx = ray.get_runtime_context()
        ids = ctx.get_accelerator_ids().get("GPU", [])
        self.identity: GpuIdentity = resolve_gpus([str(i) for i in ids])
        self.node_id = ctx.get_node_id()
        self.pool = EnginePool()
        names = self.identity.gpu_names
        self.artifacts = CompiledArtifacts(None, names[0] if names else self.identity.device)
        self.sampler: Any = None
        self.sample_interval_ms: float | None = None
        if sample_interval_ms is not None:
            # Its process starts beside this one's first run instead of inside it, GPUs held.
            self._start_sampler(sample_interval_ms)

    def identify(self) -> WorkerIdentity:
        return WorkerIdentity(
            **asdict(self.identity),
            node_ip=ray.util.get_node_ip_address(),
            node_id=self.node_id,
            hostname=socket.gethostname(),
            python_executable=sys.executable,
        )

    def _start_sampler(self, sample_interval_ms: float) -> None:
        if self.sampler is not None:
            ray.kill(self.sampler)
        pg = ray.util.get_current_placement_group()
        options = {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, 0)} if pg else {}
        self.sampler = SamplerActor.options(**options).remote(
            self.identity.gpu_uuids, sample_interval_ms, no_gpu_reason(self.identity), self.node_id,
        )
        self.sample_interval_ms = sample_interval_ms

    def _sampler(self, execution: ExecutionConfig) -> Any:
        if execution.telemetry.sample_interval_ms != self.sample_interval_ms:
            self._start_sampler(execution.telemetry.sample_interval_ms)
        return self.sampler

    def _free_mib(self) -> list[float] | None:
        """Free memory on each of this worker's GPUs; None on the CPU or without NVML."""
        if not self.identity.gpu_uuids:
            return None
        from lem_ray.telemetry.nvml import free_memory_mib

        return free_memory_mib(self.identity.gpu_uuids)

    def _least_free_mib(self) -> float | None:
        free = self._free_mib()
        return min(free) if free else None

    def run(self, request: RunRequest) -> RunOutcome:
        """Cool down, baseline, load (or reuse), warm up, measure, prefill window.

        Engines that must make room for a new one are released before the GPUs are cooled
        and measured idle. On any error every engine is released too (a CUDA error may have
        broken them all), so a failed run never leaves a broken engine for the next one.
        """
        cfg = ExperimentConfig.model_validate_json(request.config_json)
        execution = request.execution
        if request.gap_s:
            time.sleep(request.gap_s)
        started_at = datetime.now(timezone.utc)
        key = cfg.engine_key
        self.pool.capacity = execution.max_engines_per_worker
        if key not in self.pool.engines:
            self.pool.make_room(key, backend_class(cfg.backend).exclusive, self._least_free_mib)
        sampler = self._sampler(execution)
        phases: dict[str, float] = {}
        if self.artifacts.location != request.compile_cache:
            self.artifacts = CompiledArtifacts(request.compile_cache, self.artifacts.gpu_name)
        runs, token = request.baselines, uuid.uuid4().hex
        others = 0
        if runs is not None:
            now = time.time()
            ray.get(runs.run_started.remote(self.node_id, token, now))
            others = ray.get(runs.active.remote(self.node_id, token, now))
        try:
            conditions = _prepare_gpus(execution, runs, sampler, self.identity.gpu_uuids,
                                       host_key(self.node_id), others == 0, phases)
            ray.get(sampler.start.remote(request.metric_tags))
            try:
                result = self._measure(cfg, key, request.prompts, sampler, execution, phases)
            except BaseException:
                self.pool.release_all()
                ray.get(sampler.finish.remote())
                raise
            if runs is not None:
                window = result.measure_window
                result = replace(result, host_shared_by_runs=ray.get(
                    runs.sharing.remote(self.node_id, token, window.start_s, window.end_s)))
        finally:
            if runs is not None:
                ray.get(runs.run_ended.remote(token, time.time()))
        if not request.keep_engine:
            self.pool.release_all()
        return RunOutcome(self.identify(), started_at, result,
                          ray.get(sampler.finish.remote()), conditions, phases, self.pool.keys())

    def _measure(
        self, cfg: ExperimentConfig, key: str, prompts: list[str], sampler: Any,
        execution: ExecutionConfig, phases: dict[str, float],
    ) -> RunResult:
        """Every window edge after a device sync. The GPUs' free memory before and after
        tells the pool how much this engine holds."""
        t0 = time.perf_counter()
        backend = self.pool.take(key)
        reused = backend is not None
        if backend is not None:
            free_before = self._free_mib()
            backend.configure(cfg)
            use = self.artifacts.before(backend, cfg)
        else:
            backend, free_before, use = self._load(cfg, key)
        try:
            backend.prepare(prompts)
        except BaseException as exc:
            # New batch shapes of a kept engine may not fit beside the others: once more alone.
            if len(self.pool.engines) < 2 or not out_of_memory(exc):
                raise
            self.pool.release_others(key)
            backend.prepare(prompts)
        backend.synchronize()
        use = self.artifacts.after(backend, use)
        phases["loading"] = time.perf_counter() - t0
        with _no_gc(freeze=not reused or not self.pool.heap_frozen):
            self.pool.heap_frozen = True
            result = self._windows(backend, cfg, prompts, sampler, execution, phases,
                                   phases["loading"], reused, use)
        free_after = self._free_mib()
        grown = (max(b - a for b, a in zip(free_before, free_after))
                 if free_before and free_after else None)
        self.pool.record(key, grown, loaded=not reused)
        return result

    def _load(
        self, cfg: ExperimentConfig, key: str
    ) -> tuple[Backend, list[float] | None, CacheUse]:
        """A new engine, the free memory before it loaded, and what the compile cache gave
        it. A load that runs out of memory beside other engines is tried once more with the
        worker's GPUs to itself."""
        device = DeviceInfo(self.identity.device, len(self.identity.gpu_uuids))
        while True:
            free_before = self._free_mib()
            backend = backend_class(cfg.backend)(cfg, device)
            use = self.artifacts.before(backend, cfg)
            try:
                backend.load()
            except BaseException as exc:
                backend.release()
                if not (self.pool.engines and out_of_memory(exc)):
                    raise
                self.pool.release_all()
                continue
            self.pool.add(key, backend)
            return backend, free_before, use

    def _windows(
        self, backend: Backend, cfg: ExperimentConfig, prompts: list[str], sampler: Any,
        execution: ExecutionConfig, phases: dict[str, float], load_s: float, reused: bool,
        use: CacheUse,
    ) -> RunResult:
        ray.get(sampler.begin.remote("warmup"))
        warmup = run_warmup(backend.generate, prompts, cfg.warmup, backend.warmup_batch_size)
        backend.synchronize()
        warmup_window = ray.get(sampler.end.remote("warmup"))
        phases["warmup"] = warmup_window.duration_s
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
        prefill = PrefillSettings(
            execution.prefill.enabled, execution.validity.min_window_s,
            execution.prefill.max_repeats,
        )
        prefill_result = (
            _prefill(backend, sampler, prompts, prefill) if prefill.enabled and measured else None
        )
        phases["measuring"] = measure_window.duration_s + (
            prefill_result.window.duration_s if prefill_result else 0.0
        )
        return RunResult(
            records=records,
            measure_start_perf_s=start_s,
            duration_s=duration_s,
            engine_load_s=load_s,
            engine_reused=reused,
            engine_id=backend.engine_id,
            compile_cache=use.status,
            compile_cache_hash=use.sha256,
            compile_cache_key=use.key,
            timing_method=backend.timing_method,
            warmup=warmup,
            warmup_window=warmup_window,
            measure_window=measure_window,
            prefill=prefill_result,
            own_pids=own_pids,
            peak_memory_mib=peak_memory_mib(backend),
            versions=plain_versions({**backend.versions(), "python": platform.python_version(),
                                     "ray": ray.__version__}),
            details=backend.details(),
            engine_config=backend.engine_config(),
            steady_window=backend.steady_window(),
            epoch_minus_perf_s=epoch_minus_perf_s,
            engine_load=backend.engine_load(),
            stream_sha256=backend.stream_sha256(),
        )


def _prepare_gpus(
    execution: ExecutionConfig, baselines: Any, sampler: Any, uuids: list[str], host: str,
    host_idle: bool, phases: dict[str, float],
) -> GpuConditions:
    """Cool down and take (or reuse) the idle baselines of the GPUs and of the host (under the
    key `host`; measured only when host_idle: no other run active on the node), both before
    anything is loaded."""
    phases["cooldown"] = phases["baseline"] = 0.0
    if not uuids:
        return GpuConditions()
    waited_s = hottest_c = None
    if execution.cooldown.target_temp_c is not None:
        t0 = time.perf_counter()
        waited_s, hottest_c = ray.get(sampler.cool_down.remote(
            execution.cooldown.target_temp_c, execution.cooldown.max_wait_s))
        phases["cooldown"] = time.perf_counter() - t0
    measured: dict[str, dict[str, Any]] = {}
    if execution.baseline.enabled:
        t0 = time.perf_counter()
        known = ray.get(baselines.get.remote([*uuids, host]))
        measured = ray.get(sampler.baseline.remote(
            known, execution.baseline.duration_s, execution.baseline.ttl_s, host_idle))
        ray.get(baselines.put.remote(measured))
        phases["baseline"] = time.perf_counter() - t0
    return GpuConditions(waited_s, hottest_c, measured)


def _prefill(
    backend: Backend, sampler: Any, prompts: list[str], settings: PrefillSettings
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
def _no_gc(freeze: bool) -> Iterator[None]:
    """No garbage collection inside the windows. A collection of a Ray worker's heap stalls
    the host for milliseconds, and a decode loop bound by kernel launches turns host stalls
    into time and energy; generate() makes few reference cycles, so memory stays flat without
    collecting for a run. freeze (a run that loaded an engine, or nothing frozen yet): the
    objects alive after the collection (libraries, engines) leave every later collection, so
    the one before each run walks only what came since: a full collection of a warm worker's
    heap takes ~150 ms of CPU, the bulk of a short run. Releasing an engine thaws them
    (EnginePool.release)."""
    gc.collect()
    if freeze:
        gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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
