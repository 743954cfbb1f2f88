"""Which run goes where next: plain data in, decisions out (no Ray), so it can be tested alone.

First each idle worker takes the earliest queued run of the current cycle (the first queued
run's) that one of its engines can run (a worker may hold several): runs of one cycle are
exchangeable, and a load saved is GPU time saved. Then the other runs are taken in the
campaign's order. Each goes, in this preference, to an idle worker that holds its engine; to an
idle worker of its size none of whose engines a queued run wants; to new GPUs that are free; to
any idle worker of its size (reloading); to a busy worker of its size expected to be free
before a new worker could start and load its engine, or before two could where the new one's
room would close idle workers that queued runs want (it waits for that one); to GPUs freed by
closing idle workers of other sizes. A worker runs in one runtime environment: runs of
another environment count as another size. The first run that fits nowhere is the head: the
node where it can start soonest (or the busy worker it waits for) is reserved for it, and later
runs may backfill that node only where they cannot delay it (they are expected, from the run
lengths learned so far, to finish before it could start; or they use GPUs it will not need).
Other nodes stay open to all. So a waiting run never waits behind runs that came after it, and
at most one run holds a reservation at a time.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class QueuedRun:
    """A run waiting for GPUs, as the policy sees it."""

    run_id: str
    gpus: int
    engine: str
    est_s: float | None = None
    """How long it held its GPUs last time (an earlier cycle), if known."""
    cycle: int = 0
    kind: str = ""
    """What a worker must be besides its size to take the run (its runtime environment)."""
    cold_s: float | None = None
    """Seconds a new worker would take to start and load the run's engine, if known."""


@dataclass
class SlotView:
    """A worker on `gpus` GPUs of `node`; busy while a run is in it."""

    slot_id: int
    node: str
    gpus: int
    engines: tuple[str, ...] = ()
    """The engines its worker holds (or will, once its run has loaded one)."""
    busy: bool = False
    started_s: float = 0.0
    est_s: float | None = None
    kind: str = ""


@dataclass(frozen=True)
class Assign:
    """Decision: run it on this idle slot's worker."""

    run_id: str
    slot_id: int


@dataclass(frozen=True)
class Open:
    """Decision: open a new slot for the run on this node."""

    run_id: str
    node: str


@dataclass(frozen=True)
class Close:
    """Decision: close this idle slot to free its GPUs."""

    slot_id: int


Decision = Assign | Open | Close


@dataclass
class Reservation:
    """The head run's claim on one node: it can start there at shadow_s (inf: not known)."""

    run_id: str
    node: str
    shadow_s: float
    extra: int
    """GPUs of the node still free at shadow_s once the head has its own."""


@dataclass
class _State:
    """The cluster as the decisions so far leave it. GPUs used per node and the idle workers
    are kept up to date as workers open, close and take runs, so placing a run costs
    O(nodes + idle workers), not O(nodes x workers): at 64 nodes x 8 GPUs, with a window of
    2,000 queued runs, recounting every node's workers for every run took seconds a call."""

    now: float
    nodes: dict[str, int]
    slots: list[SlotView]
    wanted: Counter[str] = field(default_factory=Counter)
    reservation: Reservation | None = None
    decisions: list[Decision] = field(default_factory=list)
    used_gpus: Counter[str] = field(default_factory=Counter)
    idle_slots: list[SlotView] = field(default_factory=list)
    """The idle workers, in the order of `slots`."""
    sorted_nodes: list[tuple[str, int]] = field(default_factory=list)
    _busy_ends: dict[tuple[int, str], list[tuple[float, str]]] | None = None

    def __post_init__(self) -> None:
        for slot in self.slots:
            self.used_gpus[slot.node] += slot.gpus
        self.idle_slots = [s for s in self.slots if not s.busy]
        self.sorted_nodes = sorted(self.nodes.items())

    def used(self, node: str) -> int:
        return self.used_gpus[node]

    def busy_ends(self) -> dict[tuple[int, str], list[tuple[float, str]]]:
        """(GPUs, kind) -> (expected end, node) of the workers busy when the call began whose
        runs have a length estimate, soonest first; worked out once a call."""
        if self._busy_ends is None:
            self._busy_ends = {}
            for s in self.slots:
                if s.busy and s.est_s is not None:
                    self._busy_ends.setdefault((s.gpus, s.kind), []).append(
                        (max(s.started_s + s.est_s, self.now), s.node))
            for ends in self._busy_ends.values():
                ends.sort()
        return self._busy_ends

    def free(self) -> int:
        """Free GPUs over the whole cluster."""
        return sum(max(0, total - self.used_gpus[node]) for node, total in self.nodes.items())

    def idle(self, node: str | None = None) -> list[SlotView]:
        return [s for s in self.idle_slots if node is None or s.node == node]

    def occupy(self, slot: SlotView, run: QueuedRun) -> None:
        slot.busy, slot.started_s, slot.est_s = True, self.now, run.est_s
        self.idle_slots = [s for s in self.idle_slots if s is not slot]

    def open(self, run: QueuedRun, node: str) -> None:
        self.decisions.append(Open(run.run_id, node))
        self.slots.append(SlotView(-1, node, run.gpus, (run.engine,), busy=True,
                                   started_s=self.now, est_s=run.est_s, kind=run.kind))
        self.used_gpus[node] += run.gpus

    def close(self, slot: SlotView) -> None:
        self.decisions.append(Close(slot.slot_id))
        self.slots = [s for s in self.slots if s is not slot]
        self.idle_slots = [s for s in self.idle_slots if s is not slot]
        self.used_gpus[slot.node] -= slot.gpus

    def allowed(self, run: QueuedRun, node: str) -> bool:
        """Whether run may take GPUs on node now without delaying the head."""
        held = self.reservation
        if held is None or node != held.node or run.run_id == held.run_id:
            return True
        return self._before_shadow(run) or run.gpus <= held.extra

    def take(self, run: QueuedRun, node: str) -> None:
        """Record that run took GPUs on node (the head's spare GPUs, if it used those)."""
        held = self.reservation
        if held is None or node != held.node:
            return
        if run.run_id == held.run_id:
            self.reservation = None
        elif not self._before_shadow(run):
            held.extra -= run.gpus

    def _before_shadow(self, run: QueuedRun) -> bool:
        """Known to end before the head could start anyway (never when that is unknown)."""
        held = self.reservation
        return (held is not None and run.est_s is not None and math.isfinite(held.shadow_s)
                and self.now + run.est_s <= held.shadow_s)


def decide(
    now: float, queue: list[QueuedRun], slots: list[SlotView], nodes: dict[str, int]
) -> tuple[list[Decision], Reservation | None]:
    """Decisions for the runs of `queue` (in order) that can start now, and the reservation.

    `nodes` maps node to its GPUs; `slots` are the workers held, busy or idle (their GPUs are
    not free). Runs that need more GPUs than any node has must not be in the queue.
    """
    in_order, held = _decide(now, queue, slots, nodes, warm=False, held=None)
    needed = {d.slot_id for d in in_order if isinstance(d, Close)}
    warm = [s for s in slots if s.slot_id not in needed]
    return _decide(now, queue, slots, nodes, warm=True, held=held, warm_slots=warm)


def _decide(
    now: float, queue: list[QueuedRun], slots: list[SlotView], nodes: dict[str, int],
    warm: bool, held: Reservation | None, warm_slots: list[SlotView] | None = None,
) -> tuple[list[Decision], Reservation | None]:
    """Not warm: runs in order only, to find the head's reservation (`held`) and the idle
    workers it closes for a larger run. Warm: warm matches first, on the other idle workers
    and never delaying the head, then runs in order."""
    state = _State(now, nodes, [SlotView(**vars(s)) for s in slots])
    state.wanted = Counter(run.engine for run in queue)
    placed: set[str] = set()
    if warm:
        state.reservation = Reservation(**vars(held)) if held else None
        allowed_ids = {s.slot_id for s in warm_slots or []}
        placed = _warm_matches(state, queue, allowed_ids)
        state.reservation = None
    for run in queue:
        if run.run_id in placed:
            continue
        state.wanted[run.engine] -= 1
        if _place(state, run):
            continue
        if state.reservation is None:
            state.reservation = _reserve(state, run)
        if state.reservation is not None and not state.idle_slots and not state.free():
            break  # no idle worker, no free GPU: no later run can start now either
    return state.decisions, state.reservation


def _warm_matches(state: _State, queue: list[QueuedRun], slot_ids: set[int]) -> set[str]:
    """Idle workers take the earliest run of the current cycle their engine can run."""
    placed: set[str] = set()
    if not queue:
        return placed
    cycle = queue[0].cycle
    for slot in [s for s in state.idle() if s.slot_id in slot_ids]:
        run = next((r for r in queue if r.cycle == cycle and r.run_id not in placed
                    and r.gpus == slot.gpus and r.kind == slot.kind
                    and r.engine in slot.engines), None)
        if run is None or not state.allowed(run, slot.node):
            continue
        state.take(run, slot.node)
        placed.add(run.run_id)
        state.wanted[run.engine] -= 1
        state.occupy(slot, run)
        state.decisions.append(Assign(run.run_id, slot.slot_id))
    return placed


def _place(state: _State, run: QueuedRun) -> bool:
    same_size = [s for s in state.idle()
                 if s.gpus == run.gpus and s.kind == run.kind and state.allowed(run, s.node)]
    warm = next((s for s in same_size if run.engine in s.engines), None)
    spare = next((s for s in same_size if not _wanted(state, s)), None)
    chosen = warm or spare
    if chosen is None:
        node = _fitting_node(state, run)
        if node is not None:
            state.take(run, node)
            state.open(run, node)
            return True
        chosen = same_size[0] if same_size else None
    if chosen is not None:
        state.take(run, chosen.node)
        state.occupy(chosen, run)
        chosen.engines = (*(e for e in chosen.engines if e != run.engine), run.engine)
        state.decisions.append(Assign(run.run_id, chosen.slot_id))
        return True
    if _wait_for_worker(state, run):
        return False
    return _make_room(state, run)


def _wait_for_worker(state: _State, run: QueuedRun) -> bool:
    """A busy worker of the run's size expected to be free before a new one could start and
    load the run's engine: the run waits for it (holding it as the head's reservation, so
    nothing later takes it) and no idle worker is closed for it. Where the room for a new
    worker would come from closing idle workers that queued runs still want, those runs will
    need a new worker of their size again: two starts and loads instead of one, so the run
    waits up to twice as long (on 4 GPUs with runs of 1 and 2 GPUs, closing the singles for
    a pair that was about to be free cost two switches back to back)."""
    if run.cold_s is None:
        return False
    ends = state.busy_ends().get((run.gpus, run.kind), [])
    end_s, node = next(((e, n) for e, n in ends if state.allowed(run, n)), (math.inf, ""))
    if end_s - state.now > run.cold_s * 2 or (end_s - state.now > run.cold_s
                                              and not _room_closes_wanted(state, run)):
        return False
    if state.reservation is None:
        state.reservation = Reservation(run.run_id, node, end_s, state.nodes[node] - run.gpus)
    return True


def _room_closes_wanted(state: _State, run: QueuedRun) -> bool:
    """Whether no node could make room for the run without closing a wanted idle worker."""
    spare: Counter[str] = Counter()
    for slot in state.idle_slots:
        if not _wanted(state, slot):
            spare[slot.node] += slot.gpus
    return not any(total - state.used(node) + spare[node] >= run.gpus
                   and state.allowed(run, node) for node, total in state.sorted_nodes)


def _wanted(state: _State, slot: SlotView) -> bool:
    """Whether a queued run wants one of the engines the worker holds."""
    return any(state.wanted[engine] > 0 for engine in slot.engines)


def _fitting_node(state: _State, run: QueuedRun) -> str | None:
    """Best fit: the node with the fewest free GPUs that still holds the run, so large
    holes stay for large runs."""
    fits = [(total - state.used(node), node) for node, total in state.nodes.items()
            if total - state.used(node) >= run.gpus and state.allowed(run, node)]
    return min(fits)[1] if fits else None


def _make_room(state: _State, run: QueuedRun) -> bool:
    """Close idle workers of other sizes on one node until the run fits there."""
    for node, total in state.sorted_nodes:
        free = total - state.used(node)
        idle = sorted(state.idle(node), key=lambda s: (_wanted(state, s), s.gpus))
        if free + sum(s.gpus for s in idle) < run.gpus or not state.allowed(run, node):
            continue
        for slot in idle:
            if free >= run.gpus:
                break
            free += slot.gpus
            state.close(slot)
        state.take(run, node)
        state.open(run, node)
        return True
    return False


def _reserve(state: _State, run: QueuedRun) -> Reservation | None:
    """The node where the run can start soonest, by the busy runs' expected ends.

    A busy run with no estimate ends at an unknown time (inf); one past its estimate is
    expected to end now, never later, so a late run cannot open room for more backfill.
    """
    busy: dict[str, list[SlotView]] = {}
    for slot in state.slots:
        if slot.busy:
            busy.setdefault(slot.node, []).append(slot)
    best: Reservation | None = None
    for node, total in state.nodes.items():
        if total < run.gpus:
            continue
        held = busy.get(node, [])
        free = total - sum(s.gpus for s in held)
        ends = sorted(
            (max(s.started_s + s.est_s, state.now) if s.est_s is not None else math.inf, s.gpus)
            for s in held
        )
        shadow = state.now
        for end_s, gpus in ends:
            if free >= run.gpus:
                break
            free, shadow = free + gpus, end_s
        candidate = Reservation(run.run_id, node, shadow, free - run.gpus)
        if best is None or (candidate.shadow_s, -candidate.extra) < (best.shadow_s, -best.extra):
            best = candidate
    return best
