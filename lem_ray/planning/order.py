"""The order runs go in: cycles x experiments, interleaved, shuffled or grouped."""

from __future__ import annotations

import random

from lem_ray.records import RunKey


def order_runs(experiment_ids: list[str], cycles: int, structure: str, seed: int) -> list[RunKey]:
    """Cycles are numbered from 1. Shuffled draws a new, seeded order for every cycle."""
    if structure == "grouped":
        return [RunKey(e, c) for e in experiment_ids for c in range(1, cycles + 1)]
    runs: list[RunKey] = []
    for cycle in range(1, cycles + 1):
        ids = list(experiment_ids)
        if structure == "shuffled":
            random.Random(f"{seed}:{cycle}").shuffle(ids)
        runs.extend(RunKey(e, cycle) for e in ids)
    return runs
