"""The worker's side of the compile cache (results/compile_cache.py): before an engine compiles
for a run, hand it the entry of the run's compile key if there is one; after it compiled,
publish what it compiled. Storage trouble never fails a run: the engine compiles, as without
a cache, and a warning says why. A backend whose artifact is a file (Backend.artifact_is_file)
gets and gives it through a local temp folder, streamed: never in memory whole."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from lem_ray.backends.base import Backend
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.results.compile_cache import (
    HIT,
    MISS,
    OFF,
    CompileCache,
    Published,
    cache_key,
    digest,
    file_digest,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCAL_PREFIX = "lem-ray-artifact-"
"""The worker's temp folders for file artifacts (in TMPDIR: room for an engine and its copy)."""


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
        cache = self.cache
        if cache is None:
            return CacheUse(OFF)
        key = cache_key(cfg.compile_fields(), self.gpu_name, versions)
        known = self._used.setdefault(backend, {}).get(key)
        if known is not None:
            return known
        sha256: str | None = None
        if backend.artifact_is_file:
            with tempfile.TemporaryDirectory(prefix=LOCAL_PREFIX) as local:
                path = os.path.join(local, "artifact")
                fetched = self._read(lambda: cache.fetch(key, path))
                if fetched is not None:
                    sha256 = self._hand(cache, backend, key, fetched,
                                        lambda: backend.use_compiled_file(path))
        else:
            entry = self._read(lambda: cache.get(key))
            if entry is not None:
                sha256 = self._hand(cache, backend, key, entry.sha256,
                                    lambda: backend.use_compiled(entry.artifact))
        if sha256 is None:
            return CacheUse(MISS, None, key)
        use = CacheUse(HIT, sha256, key)
        self._used[backend][key] = use
        return use

    def _read(self, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except OSError as exc:
            log.warning("lem-ray: compile cache %s unreadable (%s): compiling", self.location, exc)
            return None

    def _hand(self, cache: CompileCache, backend: Backend, key: str, sha256: str,
              hand: Callable[[], None]) -> str | None:
        """The entry handed to the engine: its SHA-256, or None (withdrawn) if it refused."""
        try:
            hand()
        except Exception as exc:  # whatever the library says, it compiles anew
            log.warning("lem-ray: compile cache entry %s in %s not usable by %s (%s): compiling",
                        key, self.location, backend.name, exc)
            cache.discard(key, sha256)
            return None
        return sha256

    def after(self, backend: Backend, use: CacheUse) -> CacheUse:
        """After prepare(): a miss publishes what the engine compiled; its rows carry that
        artifact's hash even when another worker's entry won the race to publish."""
        cache, key = self.cache, use.key
        if use.status != MISS or use.sha256 is not None or cache is None or key is None:
            return use
        sha256: str | None = None
        if backend.artifact_is_file:
            with tempfile.TemporaryDirectory(prefix=LOCAL_PREFIX) as local:
                try:
                    path = backend.compiled_file(local)
                except OSError as exc:
                    log.warning("lem-ray: %s artifact not written locally (%s): entry %s not kept",
                                backend.name, exc, key)
                    path = None
                if path is not None:
                    sha256 = self._publish(backend, key, path, file_digest,
                                           lambda about: cache.publish_file(key, path, about))
        else:
            artifact = backend.compiled_artifact()
            if artifact is not None:
                sha256 = self._publish(backend, key, artifact, digest,
                                       lambda about: cache.publish(key, artifact, about))
        done = CacheUse(MISS, sha256, key)
        self._used.setdefault(backend, {})[key] = done
        return done

    def _publish(self, backend: Backend, key: str, artifact: T, hashed: Callable[[T], str],
                 publish: Callable[[dict[str, Any]], Published]) -> str:
        """The artifact's own SHA-256, published (or, where the cache cannot be written, not)."""
        about = {"gpu_name": self.gpu_name, "versions": backend.compiler_versions(),
                 "hostname": socket.gethostname(), "engine_id": backend.engine_id}
        try:
            return publish(about).sha256
        except OSError as exc:
            log.warning("lem-ray: compile cache %s not writable (%s): entry %s not kept",
                        self.location, exc, key)
            return hashed(artifact)
