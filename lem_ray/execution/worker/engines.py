"""The engines one worker keeps loaded: up to a number the campaign sets, least recently used
out first, and never so many that the next one would not fit in the GPUs' free memory.

Ray-free, so it can be tested alone: the worker hands it a way to read free GPU memory.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable

from lem_ray.backends.base import Backend

HEADROOM = 1.1
"""Free memory wanted for an engine, over what it (or the largest engine seen) held after a
run: the caching allocator's fragmentation and a longer prompt's activations."""

FreeMemory = Callable[[], float | None]
"""MiB free on the worker's GPU with the least free memory; None where it cannot be read."""


def out_of_memory(exc: BaseException) -> bool:
    """CUDA's, PyTorch's and vLLM's ways of saying a load did not fit."""
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


class EnginePool:
    """Engines by engine key, least recently used first, with the GPU memory each held."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self.engines: OrderedDict[str, Backend] = OrderedDict()
        self.footprint_mib: dict[str, float] = {}
        """Per engine key: how far free GPU memory fell while it loaded and ran (largest
        over the worker's GPUs), kept after eviction for the next load of the same key."""
        self.heap_frozen = False
        """The worker froze its heap (gc.freeze) after loading these engines, so that each
        run's collection skips them; set by the worker, cleared by a release."""

    def keys(self) -> list[str]:
        """Held engines, least recently used first."""
        return list(self.engines)

    def take(self, key: str) -> Backend | None:
        """The loaded engine for key, now the most recently used; None: not held."""
        backend = self.engines.get(key)
        if backend is not None:
            self.engines.move_to_end(key)
        return backend

    def add(self, key: str, backend: Backend) -> None:
        """Keep a loaded engine under its engine key."""
        self.engines[key] = backend

    def make_room(self, key: str, exclusive: bool, free_mib: FreeMemory) -> None:
        """Release engines until one more fits: an exclusive engine (one that reserves most
        of GPU memory) shares the worker with none; then at most capacity - 1 others; then,
        least recently used first, as long as free memory is below what the next engine
        needs (its own footprint if it ran here before, else the largest seen here)."""
        if exclusive or any(b.exclusive for b in self.engines.values()):
            self.release_all()
        while len(self.engines) >= self.capacity:
            self._release_oldest()
        known = self.footprint_mib.get(key, max(self.footprint_mib.values(), default=None))
        if known is None:
            return
        while self.engines:
            free = free_mib()
            if free is None or free >= known * HEADROOM:
                return
            self._release_oldest()

    def record(self, key: str, grown_mib: float | None, loaded: bool) -> None:
        """Free memory fell by grown_mib over a run of key's engine: its footprint when the
        run loaded it, else what new shapes of the reused engine added to it."""
        if grown_mib is None:
            return
        before = 0.0 if loaded else self.footprint_mib.get(key, 0.0)
        self.footprint_mib[key] = before + max(grown_mib, 0.0)

    def release(self, key: str) -> None:
        """The heap thawed first (see heap_frozen), so the engine's release collects its
        reference cycles."""
        backend = self.engines.pop(key, None)
        if backend is not None:
            if self.heap_frozen:
                gc.unfreeze()
                self.heap_frozen = False
            backend.release()

    def release_others(self, key: str) -> None:
        """Release every engine but `key`'s, before an exclusive engine loads."""
        for other in [k for k in self.engines if k != key]:
            self.release(other)

    def release_all(self) -> None:
        """Release every engine, oldest first."""
        while self.engines:
            self._release_oldest()

    def _release_oldest(self) -> None:
        self.release(next(iter(self.engines)))
