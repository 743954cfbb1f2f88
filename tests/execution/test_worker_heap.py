"""The warm worker's heap: frozen out of the per-run collection while its engines are held,
given back to the collector when an engine is released."""

from __future__ import annotations

import gc
import weakref

from lem_ray.execution.worker.engines import EnginePool
from lem_ray.measure.protocol import no_gc


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> tuple[Node, weakref.ref]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(b)


class FakeBackend:
    exclusive = False

    def release(self) -> None:
        gc.collect()


def test_no_collection_inside_and_frozen_heap_kept_until_an_engine_is_released() -> None:
    pool = EnginePool()
    pool.add("k", FakeBackend())  # type: ignore[arg-type]
    engine, alive = cycle()
    try:
        with no_gc(freeze=True):
            pool.heap_frozen = True
            assert not gc.isenabled()
        assert gc.isenabled() and gc.get_freeze_count() > 0
        del engine
        with no_gc(freeze=False):
            pass
        assert alive() is not None, "a frozen cycle is left alone by the per-run collection"
        pool.release("k")
        assert gc.get_freeze_count() == 0 and not pool.heap_frozen
        assert alive() is None, "released: the engine's cycles are collected"
    finally:
        gc.unfreeze()
        gc.enable()


def test_garbage_made_after_the_freeze_is_collected_before_each_run() -> None:
    try:
        with no_gc(freeze=True):
            pass
        garbage, alive = cycle()
        del garbage
        with no_gc(freeze=False):
            assert alive() is None
    finally:
        gc.unfreeze()
