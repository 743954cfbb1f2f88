"""Closing and recycling a slot kill its worker at once: a worker whose handle the driver
dropped before the kill landed exited on its own instead, through its Python clean-up, where
the SIGTERM Ray sends when the worker's placement group goes printed "ActorHandle.__del__ ...
SystemExit" tracebacks at the end of campaigns."""

from __future__ import annotations

import atexit
from pathlib import Path

import ray

from lem_ray.execution.driver.slots import Slot
from tests.faults import wait_for


def _mark_clean_up(slot: Slot, marker: Path) -> None:
    """An atexit hook in the worker: only an exit through Python's clean-up runs it
    (ray.kill's does not)."""
    ray.get(slot.worker.__ray_call__.remote(
        lambda _, path=str(marker): atexit.register(lambda: Path(path).touch())))


def test_closed_and_recycled_workers_are_killed_not_left_to_exit(local_ray, tmp_path: Path) -> None:
    """Before the fix 1 close in 12 here let its worker exit on its own (the handle's going
    out of scope beat the kill to Ray), so this fails about half the time without it."""
    node = ray.get_runtime_context().get_node_id()
    markers = []
    for i in range(4):
        slot = Slot.open(i, 0, node, f"test-slot-{i}")
        ray.get(slot.starting)
        markers.append(tmp_path / f"{i}-first")
        _mark_clean_up(slot, markers[-1])
        slot.recycle()
        ray.get(slot.starting)
        markers.append(tmp_path / f"{i}-recycled")
        _mark_clean_up(slot, markers[-1])
        pid = ray.get(slot.worker.__ray_call__.remote(lambda _: __import__("os").getpid()))
        slot.close()
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 30, "the closed worker to exit")
    assert [m.name for m in markers if m.exists()] == []
