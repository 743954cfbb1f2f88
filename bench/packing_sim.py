"""The packing policy alone, on bench/packing.py's grid, against a simulated clock.

    python bench/packing_sim.py [--start-s 0.5,1,1.5,2,2.5,3] [--load-s 1,2,3,4] [--json]
                                [--smoke]

No Ray and no model: the dispatcher's decisions (lem_ray.execution.driver.policy.decide, with run
lengths from lem_ray.execution.driver.lengths) on 18 runs (GPU counts 1 and 2, max_output_tokens 32,
96 and 192 of 16 prompts, 3 interleaved cycles) on 4 GPUs, where a run's work takes
FIXED_S + STEP_S per decode step, a new worker takes start_s to come up and a worker loads an
engine it does not hold in load_s. Two ways, over every (start_s, load_s) pair:
- `plan_order`: runs in plan order, lengths learned per experiment as whole held times, no
  waiting for a busy worker (the dispatcher before these changes, with warm workers);
- `packing`: longest first within a cycle, lengths from decode steps calibrated by the first
  finished run plus load and worker start, a run waits for a busy worker of its size when that
  is sooner than a new one, or than two new ones where the room for it would close workers
  that queued runs want (the dispatcher now).
ratio = makespan / max(sum of GPU-seconds / 4, longest run), run time from its worker's start
of it to its end, as bench/packing.py measures. It shows what the policy does with the costs
of this machine or another; it does not replace the measured figure. --smoke simulates one
(start_s, load_s) pair, 1 s and 2 s: the same code, for CI.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from statistics import mean

from lem_ray.execution.driver.lengths import RunLengths
from lem_ray.execution.driver.policy import Close, Open, QueuedRun, SlotView, decide

GPUS = 4
PROMPTS = 16
FIXED_S = 0.3
"""Warmup and window edges of a run: what it costs beside its decode steps."""
STEP_S = 0.025 / PROMPTS
"""Seconds a decode step of the tiny model took on the development machine, near enough."""


@dataclass
class Run:
    run_id: str
    experiment: str
    gpus: int
    tokens: int
    cycle: int

    @property
    def steps(self) -> int:
        return PROMPTS * self.tokens

    @property
    def engine(self) -> str:
        return f"gpus{self.gpus}"


@dataclass
class Worker:
    view: SlotView
    ready_s: float
    running: tuple[Run, float, float, float] | None = None
    """(run, its start, its end, its load seconds)."""
    engines: set[str] = field(default_factory=set)


def grid() -> list[Run]:
    return [Run(f"c{c}-g{g}-t{t}", f"g{g}-t{t}", g, t, c)
            for c in (1, 2, 3) for g in (1, 2) for t in (32, 96, 192)]


def simulate(start_s: float, load_s: float, packing: bool) -> float:
    queue = grid()
    if packing:
        queue = sorted(queue, key=lambda r: (r.cycle, -r.steps * r.gpus, -r.gpus))
    lengths, held_s = RunLengths(), {}
    workers: dict[int, Worker] = {}
    done: list[tuple[Run, float, float]] = []
    now, ids = 0.0, 0

    def estimate(run: Run, warm: bool, new: bool = False) -> float | None:
        if not packing:
            return held_s.get(run.experiment)
        return lengths.estimate(run.experiment, run.engine, run.steps, warm, new)

    while queue or any(w.running for w in workers.values()):
        engines = {e for w in workers.values() for e in w.engines}
        queued = [QueuedRun(r.run_id, r.gpus, r.engine, estimate(r, r.engine in engines),
                            r.cycle, cold_s=lengths.cold(r.engine) if packing else None)
                  for r in queue]
        decisions, _ = decide(now, queued, [w.view for w in workers.values()], {"n": GPUS})
        by_id = {r.run_id: r for r in queue}
        for decision in decisions:
            if isinstance(decision, Close):
                del workers[decision.slot_id]
                continue
            run = by_id[decision.run_id]
            if isinstance(decision, Open):
                ids += 1
                workers[ids] = Worker(SlotView(ids, "n", run.gpus), now + start_s)
                worker = workers[ids]
            else:
                worker = workers[decision.slot_id]
            begin = max(now, worker.ready_s)
            if begin > now:
                lengths.started(begin - now)
            warm = run.engine in worker.engines
            load = 0.0 if warm else load_s
            worker.view.busy, worker.view.started_s = True, now
            worker.view.est_s = estimate(run, warm, begin > now)
            worker.view.engines = (run.engine,)
            worker.engines = {run.engine}
            worker.running = (run, begin, begin + load + FIXED_S + STEP_S * run.steps, load)
            queue.remove(run)
        now = min(w.running[2] for w in workers.values() if w.running)
        for worker in workers.values():
            if worker.running and worker.running[2] <= now:
                run, begin, end, load = worker.running
                done.append((run, begin, end))
                held_s[run.experiment] = end - begin
                lengths.finished(run.experiment, run.engine, run.steps, end - begin, load,
                                 reused=load == 0.0)
                worker.running, worker.view.busy = None, False
    makespan_s = max(e for _, _, e in done) - min(b for _, b, _ in done)
    ideal_s = max(sum((e - b) * r.gpus for r, b, e in done) / GPUS,
                  max(e - b for _, b, e in done))
    return makespan_s / ideal_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-s", default="0.5,1,1.5,2,2.5,3",
                        help="seconds a new worker takes to come up, comma-separated")
    parser.add_argument("--load-s", default="1,2,3,4",
                        help="seconds a worker takes to load an engine, comma-separated")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--smoke", action="store_true",
                        help="one pair (start 1 s, load 2 s) instead of the lists: a CI check")
    args = parser.parse_args()
    if args.smoke:
        args.start_s, args.load_s = "1", "2"
    costs = [(float(s), float(load)) for s in args.start_s.split(",")
             for load in args.load_s.split(",")]
    result = {}
    for way, packing in (("plan_order", False), ("packing", True)):
        ratios = [simulate(start_s, load_s, packing) for start_s, load_s in costs]
        result[way] = {"cases": len(ratios), "ratio_mean": round(mean(ratios), 3),
                       "ratio_max": round(max(ratios), 3), "ratio_min": round(min(ratios), 3),
                       "within_1_10": sum(r <= 1.10 for r in ratios)}
    print(json.dumps(result, indent=2) if args.json else
          "\n".join(f"{way}: " + ", ".join(f"{k} {v}" for k, v in figures.items())
                    for way, figures in result.items()))


if __name__ == "__main__":
    main()
