"""The worker's side of the compile cache (results/compile_cache.py): before an engine compiles
for a run, hand it the entry of the run's compile key if there is one; after it compiled,
publish what it compiled. Storage trouble never fails a run: the engine compiles, as without
a cache, and a warning says why."""

from __future__ import annotations

import logging
import socket
import weakref
from dataclasses import dataclass

from lem_ray.backends.base import Backend
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.results.compile_cache import (
    HIT,
    MISS,
    OFF,
    CompileCache,
    cache_key,
    digest,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheUse:
    """What a run's rows say: `compile_cache` (hit, miss, off; None: nothing compiled), the
    artifact's SHA-256 that served it and the key it was filed under."""

    status: str | None = None
    sha256: str | None = None
    key: str | None = None


class CompiledArtifacts:
    """One per worker; remembers, per loaded engine (for as long as it lives), the keys it has
    compiled or loaded, so a reused engine's later runs report the artifact they still run."""

    def __init__(self, location: str | None, gpu_name: str | None) -> None:
        self.location = location
        self.gpu_name = gpu_name
        self.cache = CompileCache(location) if location else None
        self._used: weakref.WeakKeyDictionary[Backend, dict[str, CacheUse]] = (
            weakref.WeakKeyDictionary())

    def before(self, backend: Backend, cfg: ExperimentConfig) -> CacheUse:
        """Before the engine loads (or, loaded, prepares this run's shapes)."""
        versions = backend.compiler_versions()
        if versions is None:
            return CacheUse()
        if self.cache is None:
            return CacheUse(OFF)
        key = cache_key(cfg.compile_fields(), self.gpu_name, versions)
        known = self._used.setdefault(backend, {}).get(key)
        if known is not None:
            return known
        try:
            entry = self.cache.get(key)
        except OSError as exc:
            log.warning("lem-ray: compile cache %s unreadable (%s): compiling", self.location, exc)
            entry = None
        if entry is None:
            return CacheUse(MISS, None, key)
        try:
            backend.use_compiled(entry.artifact)
        except Exception as exc:  # whatever the library says, it compiles anew
            log.warning("lem-ray: compile cache entry %s in %s not usable by %s (%s): compiling",
                        key, self.location, backend.name, exc)
            self.cache.discard(key)
            return CacheUse(MISS, None, key)
        use = CacheUse(HIT, entry.sha256, key)
        self._used[backend][key] = use
        return use

    def after(self, backend: Backend, use: CacheUse) -> CacheUse:
        """After prepare(): a miss publishes what the engine compiled; its rows carry that
        artifact's hash even when another worker's entry won the race to publish."""
        if use.status != MISS or use.sha256 is not None or self.cache is None or use.key is None:
            return use
        artifact = backend.compiled_artifact()
        if artifact is None:
            done = CacheUse(MISS, None, use.key)
        else:
            about = {"gpu_name": self.gpu_name, "versions": backend.compiler_versions(),
                     "hostname": socket.gethostname(), "engine_id": backend.engine_id}
            try:
                self.cache.publish(use.key, artifact, about)
            except OSError as exc:
                log.warning("lem-ray: compile cache %s not writable (%s): entry %s not kept",
                            self.location, exc, use.key)
            done = CacheUse(MISS, digest(artifact), use.key)
        self._used.setdefault(backend, {})[use.key] = done
        return done
