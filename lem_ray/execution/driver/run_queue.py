"""The runs waiting to go out, in the order they go: within a cycle of an interleaved
campaign the longest first, a dead worker's retry at the front, and the window of them the
policy may look at now."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby

from lem_ray.config.campaign import ExecutionConfig
from lem_ray.config.experiment import ExperimentConfig
from lem_ray.config.runtime_env import RuntimeEnvSpec
from lem_ray.execution.driver.lengths import RunLengths, decode_steps
from lem_ray.records import RunAttempt


@dataclass
class RunTask:
    """One attempt of a run, with what a worker needs to start it."""

    ids: RunAttempt
    config: ExperimentConfig
    engine: str
    env: RuntimeEnvSpec = field(default_factory=RuntimeEnvSpec)
    dispatched_at: datetime | None = None

    @property
    def kind(self) -> str:
        """The runtime environment it needs: a worker runs only runs of its own kind."""
        return self.env.to_json()


class RunQueue:
    """The runs not yet handed to a worker, and what is known of how long each will take."""

    def __init__(self, execution: ExecutionConfig, prompts: dict[str, list[str]],
                 has_gpus: bool) -> None:
        self.execution = execution
        self.prompts = prompts
        self.has_gpus = has_gpus
        self.tasks: list[RunTask] = []
        self.steps: dict[str, int] = {}
        self.lengths = RunLengths()
        """Run lengths learned from finished runs: backfill's, and the wait for a worker's."""
        self.last_cycle: int | None = None
        self.cycle_gate_s: float | None = None

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def fill(self, tasks: list[RunTask]) -> None:
        """Queue the campaign's runs: in the plan's order, longest first within each cycle
        where runs are interleaved."""
        self.tasks += tasks
        if self.execution.structure == "interleaved":
            self.tasks = self.longest_first(self.tasks)

    def units(self, task: RunTask) -> int:
        """What a run takes of a node: its GPUs, or the one CPU slot of a cluster without."""
        return task.config.gpus_per_experiment if self.has_gpus else 1

    def decode_steps(self, task: RunTask) -> int:
        """The run's planned decode steps (its experiment's, computed once)."""
        experiment_id = task.ids.key.experiment_id
        if experiment_id not in self.steps:
            self.steps[experiment_id] = decode_steps(task.config, len(self.prompts[experiment_id]))
        return self.steps[experiment_id]

    def longest_first(self, tasks: list[RunTask]) -> list[RunTask]:
        """Within each cycle (its runs are exchangeable), the runs of most planned GPU-time
        (decode steps x GPUs) first, the larger of equal ones first: short runs at the end
        fill the gaps the long ones leave. Interleaved campaigns only: a shuffled order is
        the user's, drawn to spread drift, and a grouped one keeps cycles together."""
        ordered: list[RunTask] = []
        for _, runs in groupby(tasks, key=lambda task: task.ids.key.cycle):
            ordered += sorted(runs, key=lambda task: (-self.decode_steps(task) * self.units(task),
                                                      -self.units(task)))
        return ordered

    def estimate(self, task: RunTask, warm: bool, new_worker: bool = False) -> float | None:
        """How long the run should take, as learned so far (None: nothing learned yet)."""
        return self.lengths.estimate(task.ids.key.experiment_id, task.engine,
                                     self.decode_steps(task), warm, new_worker)

    def window(self, limit: int, running_cycles: set[int]) -> list[RunTask]:
        """The runs the policy may look at now: a bounded prefix of the queue, cut at a cycle
        boundary while execution.cycle_gap_s holds the next cycle back."""
        window = self.tasks[:limit]
        gap_s = self.execution.cycle_gap_s
        if not gap_s or not window:
            return window
        cycle = window[0].ids.key.cycle
        if running_cycles - {cycle}:
            return []
        if self.last_cycle is not None and cycle != self.last_cycle:
            if self.cycle_gate_s is None:
                self.cycle_gate_s = time.monotonic() + gap_s
            if time.monotonic() < self.cycle_gate_s:
                return []
        return [t for t in window if t.ids.key.cycle == cycle]

    def take(self, task: RunTask) -> None:
        """The run goes to a worker: its cycle is now the one running."""
        self.tasks.remove(task)
        self.last_cycle, self.cycle_gate_s = task.ids.key.cycle, None

    def drop(self, task: RunTask) -> None:
        """The run will not go out at all (refused before any worker saw it)."""
        self.tasks.remove(task)

    def retry(self, task: RunTask) -> None:
        """A dead worker's run goes again first, before any run that has not started."""
        self.tasks.insert(0, task)
