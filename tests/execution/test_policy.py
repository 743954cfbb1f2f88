"""The dispatch policy alone, on simulated clusters: warm reuse, packing, no starvation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lem_ray.execution.driver.policy import Assign, Close, Open, QueuedRun, SlotView, decide


def test_prefers_the_idle_worker_holding_the_engine() -> None:
    slots = [SlotView(1, "n", 1, ("A",)), SlotView(2, "n", 1, ("B",))]
    decisions, _ = decide(0.0, [QueuedRun("r", 1, "B")], slots, {"n": 2})
    assert decisions == [Assign("r", 2)]


def test_new_engine_takes_free_gpus_while_a_wanted_engine_stays_warm() -> None:
    slots = [SlotView(1, "n", 1, ("A",))]
    queue = [QueuedRun("b", 1, "B"), QueuedRun("a", 1, "A")]
    decisions, _ = decide(0.0, queue, slots, {"n": 2})
    assert decisions == [Assign("a", 1), Open("b", "n")]


def test_unwanted_idle_worker_is_reloaded_rather_than_opening_another() -> None:
    decisions, _ = decide(0.0, [QueuedRun("b", 1, "B")], [SlotView(1, "n", 1, ("A",))], {"n": 2})
    assert decisions == [Assign("b", 1)]


def test_idle_workers_of_another_size_are_closed_to_make_room() -> None:
    slots = [SlotView(1, "n", 1, ("A",)), SlotView(2, "n", 1, ("A",), busy=True)]
    decisions, _ = decide(0.0, [QueuedRun("big", 2, "A")], slots, {"n": 2})
    assert decisions == []
    decisions, _ = decide(0.0, [QueuedRun("big", 2, "A")], slots[:1], {"n": 2})
    assert decisions == [Close(1), Open("big", "n")]


@dataclass
class Job:
    run_id: str
    gpus: int
    length_s: float
    est_s: float | None = None


def simulate(nodes: dict[str, int], jobs: list[Job],
             cold_s: float | None = None) -> dict[str, tuple[float, float]]:
    """Run the policy against a clock: (start, end) of every job. cold_s: what every run is
    told a new worker would take to start and load."""
    now, ids = 0.0, 0
    queue = list(jobs)
    slots: dict[int, SlotView] = {}
    running: dict[int, tuple[Job, float]] = {}
    times: dict[str, tuple[float, float]] = {}
    by_id = {j.run_id: j for j in jobs}
    while queue or running:
        queued = [QueuedRun(j.run_id, j.gpus, "E", j.est_s, cold_s=cold_s) for j in queue]
        decisions, _ = decide(now, queued, list(slots.values()), nodes)
        for d in decisions:
            if isinstance(d, Close):
                del slots[d.slot_id]
                continue
            job = by_id[d.run_id]
            if isinstance(d, Open):
                ids += 1
                slots[ids] = SlotView(ids, d.node, job.gpus, ("E",))
                slot_id = ids
            else:
                slot_id = d.slot_id
            slot = slots[slot_id]
            slot.busy, slot.started_s, slot.est_s = True, now, job.est_s
            running[slot_id] = (job, now)
            queue.remove(job)
        assert running, f"nothing runs at t={now} with {len(queue)} queued: deadlock"
        now = min(start + job.length_s for job, start in running.values())
        for slot_id, (job, start) in list(running.items()):
            if start + job.length_s <= now:
                times[job.run_id] = (start, now)
                slots[slot_id].busy = False
                del running[slot_id]
    return times


@pytest.mark.parametrize("estimate", ["unknown", "exact", "too_short"])
def test_a_waiting_two_gpu_run_never_waits_behind_later_one_gpu_runs(estimate: str) -> None:
    """A long 1-GPU run holds one GPU; a 2-GPU run waits; 200 short 1-GPU runs come after.
    The short ones may backfill the free GPU only while that cannot delay the big run."""
    def est(length: float) -> float | None:
        return {"unknown": None, "exact": length, "too_short": length / 3}[estimate]

    jobs = [Job("long", 1, 100.0, est(100.0)), Job("big", 2, 10.0, est(10.0))]
    jobs += [Job(f"s{i}", 1, 7.0, est(7.0)) for i in range(200)]
    times = simulate({"n": 2}, jobs)
    big_start = times["big"][0]
    assert big_start == 100.0, "the big run starts the moment the long run frees its GPU"
    backfilled = sum(times[f"s{i}"][0] < big_start for i in range(200))
    # exact: 14 runs of 7 s fit in the 100 s before it; unknown lengths never backfill;
    # a long run past its (too short) estimate stops further backfill at once.
    assert backfilled == {"unknown": 0, "exact": 14, "too_short": 5}[estimate]


def test_mixed_sizes_on_two_nodes_all_run_and_never_oversubscribe() -> None:
    jobs = [Job(f"j{i}", 1 + i % 2, 5.0 + (i * 7) % 11, None) for i in range(40)]
    times = simulate({"a": 2, "b": 2}, jobs)
    assert set(times) == {j.run_id for j in jobs}
    events = sorted({t for pair in times.values() for t in pair})
    for t in events:
        in_use = sum(j.gpus for j in jobs if times[j.run_id][0] <= t < times[j.run_id][1])
        assert in_use <= 4


def test_learned_lengths_pack_within_ten_percent_of_ideal() -> None:
    """Cycle 2 knows cycle 1's lengths: backfill fills the gaps a strict order would leave."""
    lengths = [30.0, 4.0, 12.0, 20.0, 6.0, 25.0, 8.0, 16.0]
    jobs = [Job(f"c2-{i}", 1 + i % 2, length, length) for i, length in enumerate(lengths * 2)]
    times = simulate({"n": 4}, jobs)
    makespan = max(end for _, end in times.values())
    ideal = max(sum(j.gpus * j.length_s for j in jobs) / 4, max(lengths))
    assert makespan <= 1.10 * ideal


def test_an_idle_worker_takes_a_later_run_of_the_cycle_that_fits_its_engine() -> None:
    slots = [SlotView(1, "n", 1, ("A",)), SlotView(2, "n", 1, ("B",), busy=True)]
    queue = [QueuedRun("b", 1, "B", cycle=1), QueuedRun("a", 1, "A", cycle=1),
             QueuedRun("a2", 1, "A", cycle=2)]
    decisions, _ = decide(0.0, queue, slots, {"n": 2})
    assert decisions == [Assign("a", 1)], "b waits for its own warm worker"
    decisions, _ = decide(0.0, queue[:1] + queue[2:], slots, {"n": 2})
    assert decisions == [Assign("b", 1)], "a run of the next cycle is not pulled forward"


def test_warm_preference_knows_every_engine_a_worker_holds() -> None:
    slots = [SlotView(1, "n", 1, ("A", "B")), SlotView(2, "n", 1, ("C",))]
    queue = [QueuedRun("c", 1, "C", cycle=1), QueuedRun("b", 1, "B", cycle=1)]
    decisions, _ = decide(0.0, queue, slots, {"n": 2})
    assert sorted(decisions, key=str) == [Assign("b", 1), Assign("c", 2)]


def test_the_worker_holding_no_wanted_engine_is_closed_for_a_larger_run() -> None:
    slots = [SlotView(1, "n", 1, ("A", "B")), SlotView(2, "n", 1, ("C", "D")),
             SlotView(3, "n", 1, ("E",), busy=True)]
    queue = [QueuedRun("big", 2, "F"), QueuedRun("b", 1, "B", cycle=1)]
    decisions, _ = decide(0.0, queue, slots, {"n": 4})
    assert decisions[:2] == [Close(2), Open("big", "n")], "B is wanted: worker 1 stays"


def test_runs_behind_a_waiting_head_still_take_free_gpus_elsewhere() -> None:
    """The policy stops looking at the queue only once nothing is idle or free; a head that
    fits nowhere does not stop a later run from taking a free GPU on another node."""
    slots = [SlotView(1, "a", 1, ("A",), busy=True), SlotView(2, "b", 1, ("A",), busy=True)]
    queue = [QueuedRun("big", 2, "A"), QueuedRun("small", 1, "A"), QueuedRun("late", 1, "A")]
    decisions, held = decide(0.0, queue, slots, {"a": 2, "b": 2})
    assert held is not None and held.run_id == "big"
    other = {"a": "b", "b": "a"}[held.node]
    assert decisions == [Open("small", other)], "late may not take the head's node"
    full = [*slots, SlotView(3, "a", 1, ("A",), busy=True), SlotView(4, "b", 1, ("A",), busy=True)]
    decisions, held = decide(0.0, queue, full, {"a": 2, "b": 2})
    assert decisions == [] and held is not None and held.run_id == "big"


def test_a_run_waits_for_a_busy_worker_of_its_size_rather_than_close_idle_ones() -> None:
    """The pair is expected free at 12 s; a new pair would take 5 s to start and load. At 8 s
    waiting is sooner, so the idle single-GPU workers keep working; at 0 s it is not. At 3 s
    a new pair is sooner, but closing the singles that queued runs still want would cost
    them a new start and load too: the run waits up to twice the 5 s, unless it can have
    singles no run wants."""
    slots = [SlotView(1, "n", 2, ("P",), busy=True, started_s=0.0, est_s=12.0),
             SlotView(2, "n", 1, ("S",)), SlotView(3, "n", 1, ("S",))]
    queue = [QueuedRun("big", 2, "P", est_s=4.0, cold_s=5.0),
             QueuedRun("s1", 1, "S", est_s=30.0), QueuedRun("s2", 1, "S", est_s=30.0)]
    decisions, held = decide(8.0, queue, slots, {"n": 4})
    assert decisions == [Assign("s1", 2), Assign("s2", 3)]
    assert held is not None and (held.run_id, held.shadow_s) == ("big", 12.0)
    decisions, held = decide(3.0, queue, slots, {"n": 4})
    assert decisions == [Assign("s1", 2), Assign("s2", 3)]
    assert held is not None and (held.run_id, held.shadow_s) == ("big", 12.0)
    assert decide(3.0, queue[:1], slots, {"n": 4})[0] == [Close(2), Close(3), Open("big", "n")]
    decisions, _ = decide(0.0, queue, slots, {"n": 4})
    assert decisions == [Close(2), Close(3), Open("big", "n")]
    unknown = [QueuedRun("big", 2, "P", est_s=4.0), *queue[1:]]
    assert decide(8.0, unknown, slots, {"n": 4})[0][:3] == [Close(2), Close(3), Open("big", "n")]


@pytest.mark.parametrize("singles_s", [6.0, 2.0])
def test_a_run_waiting_for_a_busy_worker_starts_the_moment_it_is_free(singles_s: float) -> None:
    """A pair busy until 10 s, single GPUs free at 6 s (or 2 s): a new pair for the 2-GPU run
    would take 5 s to start and load, and closing the singles that later 1-GPU runs want would
    cost another such start (so at 2 s, 8 s from the pair's end, it still waits). It waits for
    the busy pair while the singles take later 1-GPU runs; of 200 later runs of both sizes,
    none takes the pair before it."""
    jobs = [Job("pair", 2, 10.0, 10.0), Job("one", 1, singles_s, singles_s),
            Job("two", 1, singles_s, singles_s), Job("big", 2, 10.0, 10.0)]
    jobs += [Job(f"s{i}", 1 + i % 2, 1.0, 1.0) for i in range(200)]
    times = simulate({"n": 4}, jobs, cold_s=5.0)
    assert times["big"][0] == 10.0
    assert times["s0"][0] == singles_s, "the idle singles kept working"
    assert all(times[f"s{i}"][0] >= 10.0 for i in range(1, 200, 2)), "later pairs wait behind"
