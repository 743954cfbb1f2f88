"""A worker's engine pool alone: least recently used out first, exclusive engines kept alone,
and no engine kept where free GPU memory would not hold the next one."""

from __future__ import annotations

import math
from typing import Any

import pytest

from lem_ray.execution.worker.engines import HEADROOM, EnginePool, out_of_memory


class Engine:
    """Stands in for a loaded Backend: holds `mib` of a GPU of `total_mib` until released."""

    exclusive = False

    def __init__(self, name: str, gpu: dict[str, Any], mib: float = 0.0) -> None:
        self.name, self.gpu, self.mib = name, gpu, mib
        gpu["used"] += mib

    def release(self) -> None:
        self.gpu["used"] -= self.mib
        self.gpu["released"].append(self.name)


class Exclusive(Engine):
    exclusive = True


def gpu(total_mib: float | None = None) -> dict[str, Any]:
    return {"total": total_mib, "used": 0.0, "released": []}


def free(state: dict[str, Any]) -> Any:
    return lambda: None if state["total"] is None else state["total"] - state["used"]


def fill(pool: EnginePool, state: dict[str, Any], *names: str, mib: float = 0.0) -> None:
    for name in names:
        pool.make_room(name, False, free(state))
        pool.add(name, Engine(name, state, mib))
        pool.record(name, mib if state["total"] is not None else None, loaded=True)


def test_least_recently_used_engine_makes_room_first() -> None:
    state, pool = gpu(), EnginePool(capacity=2)
    fill(pool, state, "A", "B")
    assert pool.take("A") is not None and pool.keys() == ["B", "A"]
    fill(pool, state, "C")
    assert state["released"] == ["B"] and pool.keys() == ["A", "C"]
    assert pool.take("B") is None, "an evicted engine is gone"


def test_capacity_one_keeps_only_the_last_engine() -> None:
    state, pool = gpu(), EnginePool(capacity=1)
    fill(pool, state, "A", "B", "A")
    assert state["released"] == ["A", "B"] and pool.keys() == ["A"]


def test_an_exclusive_engine_is_kept_alone() -> None:
    state, pool = gpu(), EnginePool(capacity=4)
    fill(pool, state, "A", "B")
    pool.make_room("V", True, free(state))
    assert pool.keys() == [] and state["released"] == ["A", "B"]
    pool.add("V", Exclusive("V", state))
    pool.make_room("C", False, free(state))
    assert pool.keys() == [], "a held exclusive engine leaves for any other"


def test_engines_leave_while_free_memory_would_not_hold_the_next() -> None:
    """A 100,000 MiB GPU; engines of 30,000 MiB each: after three, a fourth (need 30,000
    x HEADROOM) does not fit in the 10,000 left, so the oldest leave until it does."""
    state, pool = gpu(100_000), EnginePool(capacity=8)
    fill(pool, state, "A", "B", "C", mib=30_000)
    pool.make_room("D", False, free(state))
    assert state["released"] == ["A"] and pool.keys() == ["B", "C"]
    assert 100_000 - state["used"] >= 30_000 * HEADROOM


def test_a_known_small_engine_needs_only_its_own_footprint() -> None:
    state, pool = gpu(100_000), EnginePool(capacity=8)
    fill(pool, state, "small", mib=5_000)
    fill(pool, state, "A", "B", "C", mib=30_000)
    pool.release("small")
    pool.make_room("small", False, free(state))
    assert pool.keys() == ["A", "B", "C"], "5,000 MiB of its own fit in the 10,000 free"


def test_unreadable_memory_leaves_only_the_count_limit() -> None:
    state, pool = gpu(None), EnginePool(capacity=3)
    fill(pool, state, "A", "B", "C", "D")
    assert pool.keys() == ["B", "C", "D"]


def test_footprint_is_replaced_on_load_and_grows_with_new_shapes() -> None:
    pool = EnginePool()
    pool.record("A", 1_000.0, loaded=True)
    pool.record("A", 250.0, loaded=False)
    pool.record("A", -80.0, loaded=False)
    assert pool.footprint_mib["A"] == 1_250.0
    pool.record("A", 900.0, loaded=True)
    assert pool.footprint_mib["A"] == 900.0
    pool.record("B", 300.0, loaded=False)
    assert pool.footprint_mib["B"] == 300.0, "loaded while memory could not be read"


@pytest.mark.parametrize("exc, oom", [
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (type("OutOfMemoryError", (RuntimeError,), {})("no room"), True),
    (ValueError("No available memory for the cache blocks"), False),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
])
def test_out_of_memory_is_told_apart(exc: BaseException, oom: bool) -> None:
    assert out_of_memory(exc) is oom


def test_the_next_engine_needs_its_footprint_and_a_tenth_more_free() -> None:
    """Headroom over a footprint of 1,000 MiB: 1,100 MiB free keeps every engine, a MiB's
    fraction less releases them oldest first, as long as memory stays short."""
    for free_mib, released in ((1_100.0, []), (math.nextafter(1_100.0, 0.0), ["A", "B"]),
                               (1_050.0, ["A", "B"]), (1_000.0, ["A", "B"])):
        state, pool = gpu(), EnginePool(capacity=8)
        fill(pool, state, "A", "B")
        pool.record("X", 1_000.0, loaded=True)
        pool.make_room("X", False, lambda free_mib=free_mib: free_mib)
        assert state["released"] == released, free_mib
    freed = iter([900.0, 1_099.0, 1_100.0])
    state, pool = gpu(), EnginePool(capacity=8)
    fill(pool, state, "A", "B", "C")
    pool.record("D", 1_000.0, loaded=True)
    pool.make_room("D", False, lambda: next(freed))
    assert state["released"] == ["A", "B"] and pool.keys() == ["C"]


def test_an_unseen_engine_needs_the_largest_footprint_seen() -> None:
    state, pool = gpu(), EnginePool(capacity=8)
    fill(pool, state, "A", "B")
    pool.record("A", 1_000.0, loaded=True)
    pool.record("B", 3_000.0, loaded=True)
    pool.make_room("new", False, lambda: 3_000.0 * HEADROOM)
    assert state["released"] == []
    pool.make_room("new", False, lambda: 3_000.0)
    assert state["released"] == ["A", "B"], "short of the largest footprint: all go"


def test_with_nothing_measured_only_the_count_limits() -> None:
    state, pool = gpu(), EnginePool(capacity=2)
    fill(pool, state, "A", "B")
    pool.make_room("C", False, lambda: 0.0)
    assert state["released"] == ["A"] and pool.keys() == ["B"]


def test_releasing_thaws_a_frozen_heap_first() -> None:
    import gc

    state, pool = gpu(), EnginePool(capacity=2)
    fill(pool, state, "A", "B")
    gc.freeze()
    try:
        pool.release("A")
        assert gc.get_freeze_count() > 0, "a pool that froze nothing thaws nothing"
        fill(pool, state, "A")
        state["released"].clear()
        pool.heap_frozen = True
        pool.release("missing")
        assert pool.heap_frozen is True and gc.get_freeze_count() > 0, "nothing released"
        pool.release_others("B")
        assert pool.heap_frozen is False and gc.get_freeze_count() == 0
        assert state["released"] == ["A"] and pool.keys() == ["B"]
        pool.release_all()
        assert pool.keys() == [] and state["released"] == ["A", "B"]
    finally:
        gc.unfreeze()
