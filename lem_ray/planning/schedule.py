"""A schedule's timetable, and the block of cycles each repetition runs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from lem_ray.config.automation import DAYS, ScheduleConfig
from lem_ray.planning.order import order_runs
from lem_ray.planning.plan import CampaignPlan


def timetable(schedule: ScheduleConfig, start: datetime) -> Iterator[datetime]:
    """Start times of the repetitions, from `start` (timezone-aware) on, in order.

    `every`: start, start + every, ... while before start + for. `at`: each listed clock time on
    each listed day (all days if none), in the schedule's time zone, from start on, while before
    start + for (for ever without `for`).
    """
    end = start + timedelta(seconds=schedule.for_) if schedule.for_ is not None else None
    if schedule.every is not None and end is not None:
        step = timedelta(seconds=schedule.every)
        slot = start
        while slot < end:
            yield slot
            slot += step
        return
    zone = ZoneInfo(schedule.timezone)
    days = set(schedule.days or DAYS)
    times = [time.fromisoformat(t) for t in schedule.at or ()]
    day = start.astimezone(zone).date()
    while True:
        if DAYS[day.weekday()] in days:
            for at in times:
                slot = datetime.combine(day, at, zone)
                if slot < start:
                    continue
                if end is not None and slot >= end:
                    return
                yield slot
        day += timedelta(days=1)


def block_plan(plan: CampaignPlan, block: int) -> CampaignPlan:
    """Repetition `block` (from 0): the campaign's cycles numbered after those of the blocks
    before it, so every repetition adds new rows to the same results."""
    execution = plan.campaign.execution
    cycles = execution.cycles
    runs = order_runs([e.experiment_id for e in plan.experiments], cycles * (block + 1),
                      execution.structure, execution.seed)
    return replace(plan, runs=[r for r in runs if r.cycle > cycles * block])


def blocks_done(plan: CampaignPlan, states: dict[str, str]) -> int:
    """How many leading blocks have every run finished (ok or failed), given run_id -> state:
    a restarted schedule goes on with the next block instead of starting over."""
    block = 0
    while True:
        runs = block_plan(plan, block).runs
        if not all(states.get(r.run_id) in ("ok", "failed") for r in runs):
            return block
        block += 1
