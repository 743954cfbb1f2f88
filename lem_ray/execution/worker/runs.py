"""The experiment worker: an actor holding a set of GPUs for as many runs as the driver sends
it, keeping loaded engines (up to execution.max_engines_per_worker, as GPU memory allows) for
later runs whose engine config equals one of theirs."""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Protocol

import psutil
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from lem_ray.backends.base import Backend, DeviceInfo
from lem_ray.backends.registry import backend_class
from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.execution.worker.compiled import CacheUse, CompiledArtifacts
from lem_ray.execution.worker.engines import EnginePool, out_of_memory
from lem_ray.execution.worker.gpus import GpuIdentity, resolve_gpus
from lem_ray.execution.worker.handoff import RunOutcome, RunResult, WorkerIdentity
from lem_ray.execution.worker.sampler_actor import SAMPLER_CONCURRENCY, ActorSampler, SamplerActor
from lem_ray.measure.protocol import (
    BaselineCache,
    Clock,
    GpuConditions,
    GpuSampler,
    Measurement,
    MeasurementProtocol,
    MeasureSettings,
    no_gc,
)
from lem_ray.measure.sampler import SamplerReport


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


class WorkerSampler(GpuSampler, Protocol):
    """The protocol's sampler, plus a run's series: started after the baselines, handed over
    when the run ends (the sampler actor through ActorSampler)."""

    def start(self, metric_tags: dict[str, str] | None = None) -> None:
        """Begin the run's series, after the baselines."""

    def finish(self) -> SamplerReport:
        """The run's series, as the run ends."""


class RunRecord(BaselineCache, Protocol):
    """The campaign's record of idle baselines and of which runs are active on which node
    (execution/worker/node_runs.CampaignRecord, in the BaselineCache actor)."""

    def run_started(self, node_id: str, token: str, t_s: float) -> None:
        """A run began on a node."""

    def run_ended(self, token: str, t_s: float) -> None:
        """A run ended."""

    def sharing(self, node_id: str, token: str, start_s: float, end_s: float) -> int:
        """Runs that shared the node with this window."""

    def active(self, node_id: str, token: str, t_s: float) -> int:
        """Other runs active on the node at t_s."""


class WorkerRuns:
    """A worker's runs on its GPUs, without Ray: the engine pool, the compile cache and the
    measurement protocol, with the sampler and the campaign's record handed in."""

    def __init__(
        self, identity: WorkerIdentity, new_sampler: Callable[[float], WorkerSampler],
        backends: Callable[[str], type[Backend[Any]]] = backend_class,
        clock: Clock | None = None,
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id or ""
        self.new_sampler = new_sampler
        """A sampler on this worker's GPUs at the given interval (ms)."""
        self.backends = backends
        self.clock = clock or Clock()
        self.pool = EnginePool()
        names = identity.gpu_names
        self.artifacts = CompiledArtifacts(None, names[0] if names else identity.device)
        self.sampler: WorkerSampler | None = None
        self.sample_interval_ms: float | None = None

    def sampler_for(self, sample_interval_ms: float) -> WorkerSampler:
        """The sampler at this interval: the one kept, or a new one in its place."""
        if self.sampler is None or sample_interval_ms != self.sample_interval_ms:
            self.sampler = self.new_sampler(sample_interval_ms)
            self.sample_interval_ms = sample_interval_ms
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

    def run(self, request: RunRequest, record: RunRecord | None) -> RunOutcome:
        """Cool down, baseline, load (or reuse), warm up, measure, prefill window: the
        measurement protocol (lem_ray/measure) on this worker's GPUs and engine pool.

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
            self.pool.make_room(key, self.backends(cfg.backend).exclusive, self._least_free_mib)
        sampler = self.sampler_for(execution.telemetry.sample_interval_ms)
        protocol = MeasurementProtocol(sampler, MeasureSettings(
            execution.cooldown, execution.baseline, cfg.warmup, execution.prefill,
            execution.validity), self.clock)
        if self.artifacts.location != request.compile_cache:
            self.artifacts = CompiledArtifacts(request.compile_cache, self.artifacts.gpu_name)
        token = uuid.uuid4().hex
        others = 0
        if record is not None:
            now = self.clock.epoch_s()
            record.run_started(self.node_id, token, now)
            others = record.active(self.node_id, token, now)
        try:
            conditions = protocol.prepare(record, host_idle=others == 0)
            sampler.start(request.metric_tags)
            try:
                result = self._measure(cfg, key, request.prompts, protocol, conditions)
            except BaseException:
                self.pool.release_all()
                sampler.finish()
                raise
            if record is not None:
                window = result.measure_window
                result = replace(result, host_shared_by_runs=record.sharing(
                    self.node_id, token, window.start_s, window.end_s))
        finally:
            if record is not None:
                record.run_ended(token, self.clock.epoch_s())
        if not request.keep_engine:
            self.pool.release_all()
        return RunOutcome(self.identity, started_at, result, sampler.finish(), conditions,
                          protocol.phases_s, self.pool.keys())

    def _measure(
        self, cfg: ExperimentConfig, key: str, prompts: list[str],
        protocol: MeasurementProtocol, conditions: GpuConditions,
    ) -> RunResult:
        """Every window edge after a device sync. The GPUs' free memory before and after
        tells the pool how much this engine holds."""
        perf_s = self.clock.perf_s
        t0 = perf_s()
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
        load_s = protocol.phases_s["loading"] = perf_s() - t0
        with no_gc(freeze=not reused or not self.pool.heap_frozen):
            self.pool.heap_frozen = True
            measured = protocol.measure(backend, prompts, conditions)
            own_pids = _own_pids()
        free_after = self._free_mib()
        grown = (max(b - a for b, a in zip(free_before, free_after))
                 if free_before and free_after else None)
        self.pool.record(key, grown, loaded=not reused)
        return _run_result(backend, measured, own_pids, load_s, reused, use)

    def _load(
        self, cfg: ExperimentConfig, key: str
    ) -> tuple[Backend, list[float] | None, CacheUse]:
        """A new engine, the free memory before it loaded, and what the compile cache gave
        it. A load that runs out of memory beside other engines is tried once more with the
        worker's GPUs to itself."""
        device = DeviceInfo(self.identity.device, len(self.identity.gpu_uuids))
        while True:
            free_before = self._free_mib()
            backend = self.backends(cfg.backend)(cfg, device)
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


def _run_result(
    backend: Backend[Any], measured: Measurement, own_pids: set[int], load_s: float,
    reused: bool, use: CacheUse,
) -> RunResult:
    """The protocol's measurement with what the engine says of itself."""
    warmup, warmup_window = measured.warmup, measured.warmup_window
    assert warmup is not None and warmup_window is not None, "the protocol always warms up"
    return RunResult(
        records=measured.records,
        measure_start_perf_s=measured.measure_start_perf_s,
        duration_s=measured.duration_s,
        engine_load_s=load_s,
        engine_reused=reused,
        engine_id=backend.engine_id,
        compile_cache=use.status,
        compile_cache_hash=use.sha256,
        compile_cache_key=use.key,
        timing_method=backend.timing_method,
        warmup=warmup,
        warmup_window=warmup_window,
        measure_window=measured.measure_window,
        prefill=measured.prefill,
        energy=measured.energy,
        own_pids=own_pids,
        peak_memory_mib=peak_memory_mib(backend),
        versions=plain_versions({**backend.versions(), "python": platform.python_version(),
                                 "ray": ray.__version__}),
        details=backend.details(),
        engine_config=backend.engine_config(),
        steady_window=backend.steady_window(),
        epoch_minus_perf_s=measured.epoch_minus_perf_s,
        engine_load=backend.engine_load(),
        stream_sha256=backend.stream_sha256(),
    )


class Blocking:
    """An actor handle whose method calls wait for their result: `x.f(...)` is
    `ray.get(actor.f.remote(...))`."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.actor, name)
        return lambda *args: ray.get(method.remote(*args))


class ExperimentWorker:
    """The worker actor (actors.WorkerActor): Ray's context in, Ray's handles behind blocking
    adapters, the runs WorkerRuns'. Lives in a placement group as long as the driver keeps
    that group; its sampler (in the same group, bound to the same GPU UUIDs) lives as long
    as it."""

    def __init__(self, sample_interval_ms: float | None = None) -> None:
        ctx = ray.get_runtime_context()
        ids = ctx.get_accelerator_ids().get("GPU", [])
        gpus = resolve_gpus([str(i) for i in ids])
        identity = WorkerIdentity(
            **asdict(gpus), node_ip=ray.util.get_node_ip_address(), node_id=ctx.get_node_id(),
            hostname=socket.gethostname(), python_executable=sys.executable,
        )
        self.sampler_actor: Any = None
        self.runs = WorkerRuns(identity, self._new_sampler)
        if sample_interval_ms is not None:
            # Its process starts beside this one's first run instead of inside it, GPUs held.
            self.runs.sampler_for(sample_interval_ms)

    def identify(self) -> WorkerIdentity:
        """Where the worker is and which GPUs it holds (its first answer: it is up)."""
        return self.runs.identity

    def run(self, request: RunRequest) -> RunOutcome:
        """Run one experiment's run on this worker's GPUs."""
        record = Blocking(request.baselines) if request.baselines is not None else None
        return self.runs.run(request, record)

    def _new_sampler(self, sample_interval_ms: float) -> ActorSampler:
        identity = self.runs.identity
        if self.sampler_actor is not None:
            ray.kill(self.sampler_actor)
        pg = ray.util.get_current_placement_group()
        options = {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, 0)} if pg else {}
        self.sampler_actor = SamplerActor.options(
            max_concurrency=SAMPLER_CONCURRENCY, **options).remote(
            identity.gpu_uuids, sample_interval_ms, no_gpu_reason(identity), identity.node_id,
        )
        return ActorSampler(self.sampler_actor, identity.gpu_uuids, identity.node_id)


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
