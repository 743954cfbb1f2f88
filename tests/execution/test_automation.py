"""Schedules (timetable arithmetic on an injected clock, never sleeping) and webhooks (a real
local HTTP server)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import ray

from lem_ray.config.automation import NotifyConfig, ScheduleConfig, parse_duration_s
from lem_ray.config.loading import parse_campaign
from lem_ray.errors import ConfigError
from lem_ray.execution.driver.automation import scheduled, send_notification
from lem_ray.execution.driver.campaign import run_campaign
from lem_ray.execution.driver.cluster import WORKER_ENV
from lem_ray.planning.plan import plan_campaign
from lem_ray.planning.schedule import block_plan, timetable
from lem_ray.results.journal import ManifestStore
from lem_ray.results.manifest import new_entry
from tests.conftest import TINY_BASE
from tests.fakes.clock import WallClock

UTC = timezone.utc
CAMPAIGN = {
    "campaign_name": "sched",
    "base": TINY_BASE,
    "grid": {"backends": ["pytorch"], "backend_overrides": {"pytorch": {"batch_size": [1, 2]}}},
    "execution": {"cycles": 2},
}


def test_durations() -> None:
    assert parse_duration_s("6h") == 6 * 3600
    assert parse_duration_s("1h30m") == 5400 and parse_duration_s("2d") == 172800
    assert parse_duration_s(90) == 90
    for bad in ("6 hours", "h", "-1h", "0m", "1h 30x"):
        with pytest.raises(ValueError):
            parse_duration_s(bad)


@pytest.mark.parametrize(("schedule", "message"), [
    ({"every": "6h"}, "every needs for"),
    ({"every": "6h", "for": "1d", "at": ["09:00"]}, "set either every"),
    ({"at": ["9am"]}, "'9am' is not a clock time"),
    ({"at": ["09:00"], "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"every": "1h", "for": "2h", "days": ["mon"]}, "days goes with at"),
    ({"at": ["09:00"], "days": ["monday"]}, "schedule.days[0]"),
    ({"every": "1h", "for": "2h", "until": "x"}, "unknown key 'until'"),
])
def test_schedule_refusals(schedule: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_campaign({**CAMPAIGN, "schedule": schedule})
    assert message in str(info.value)


def test_every_for_timetable() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    schedule = ScheduleConfig.model_validate({"every": "6h", "for": "48h"})
    slots = list(timetable(schedule, start))
    assert len(slots) == 8 and slots[0] == start and slots[-1] == start + timedelta(hours=42)


def test_at_days_timetable_in_local_time_across_dst() -> None:
    # Europe/Berlin moves to summer time on Sunday 2026-03-29: 09:00 local is 08:00 UTC on the
    # Saturday and 07:00 UTC from the Sunday on.
    schedule = ScheduleConfig.model_validate(
        {"at": ["21:30", "09:00"], "days": ["sat", "sun", "tue"], "timezone": "Europe/Berlin",
         "for": "4d"})
    start = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)  # Saturday, after 09:00 Berlin
    slots = [s.astimezone(UTC).strftime("%a %d %H:%M") for s in timetable(schedule, start)]
    assert slots == ["Sat 28 20:30", "Sun 29 07:00", "Sun 29 19:30", "Tue 31 07:00",
                     "Tue 31 19:30"]


def test_open_ended_at_timetable_goes_on() -> None:
    schedule = ScheduleConfig.model_validate({"at": ["00:00"]})
    slots = timetable(schedule, datetime(2026, 1, 1, 0, 0, tzinfo=UTC))
    assert [next(slots).day for _ in range(40)][-1] == 9  # 40 days on: February 9th


def test_blocks_number_cycles_on(tmp_path: Path) -> None:
    plan = plan_campaign(CAMPAIGN)
    assert {r.cycle for r in block_plan(plan, 0).runs} == {1, 2}
    assert {r.cycle for r in block_plan(plan, 2).runs} == {5, 6}
    assert len(block_plan(plan, 2).runs) == len(plan.runs)


def driver(tmp_path: Path, run_block: Callable[[Any, int], int]) -> SimpleNamespace:
    """A driver whose blocks run_block plays, over a results directory in tmp_path."""
    return SimpleNamespace(results_dir=str(tmp_path / "r"), run=run_block)


def test_scheduler_waits_skips_and_resumes(tmp_path: Path) -> None:
    plan = plan_campaign({**CAMPAIGN, "schedule": {"every": "6h", "for": "24h"}})
    start = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    clock = WallClock(start)
    ran: list[tuple[int, datetime, set[int]]] = []

    def run_block(block: Any, index: int) -> int:
        ran.append((index, clock.now(), {r.cycle for r in block.runs}))
        if index == 0:
            clock.t += timedelta(hours=13)  # runs past the 06:00 and 12:00 slots
        return index

    assert scheduled(plan, driver(tmp_path, run_block), clock) == [0, 1, 2]
    hours = [(when - start) / timedelta(hours=1) for _, when, _ in ran]
    assert hours == [0, 13, 18], "slot 6h skipped, slot 12h late, slot 18h on time"
    assert [cycles for _, _, cycles in ran] == [{1, 2}, {3, 4}, {5, 6}]
    assert clock.slept == [5 * 3600]

    # A restarted schedule goes on after the blocks already finished in the manifest.
    store = ManifestStore(tmp_path / "r")
    done = block_plan(plan, 0).runs + block_plan(plan, 1).runs
    store.add_runs({r.run_id: new_entry(r.experiment_id, r.cycle) for r in done})
    for r in done:
        store.set(r.run_id, {"state": "ok"})
    store.close()
    ran.clear()
    scheduled(plan, driver(tmp_path, run_block), WallClock(start))
    assert [cycles for _, _, cycles in ran][:2] == [{5, 6}, {7, 8}]


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:  # http.server's name
        length = int(self.headers["Content-Length"])
        Hook.received.append({"path": self.path, "type": self.headers["Content-Type"],
                              "body": json.loads(self.rfile.read(length))})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def webhook() -> Iterator[str]:
    Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook/s3cr3t-token"
    server.shutdown()
    server.server_close()


def test_notification_posts_json_and_keeps_the_url_secret(
        webhook: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("LEMRAY_TEST_HOOK", webhook)
    notify = NotifyConfig.model_validate({"webhook_url_env": "LEMRAY_TEST_HOOK",
                                          "on": ["failure"]})
    assert not send_notification(notify, "complete", {"x": 1}), "not asked for"
    assert send_notification(notify, "failure", {"campaign_name": "c", "counts": {"failed": 1}})
    (got,) = Hook.received
    assert got["path"] == "/hook/s3cr3t-token" and got["type"] == "application/json"
    assert got["body"] == {"event": "failure", "campaign_name": "c", "counts": {"failed": 1}}

    plan = plan_campaign({**CAMPAIGN, "notify": {"webhook_url": webhook}})
    assert "s3cr3t" not in json.dumps(plan.to_json()), "--dry-run --json hides the URL"
    assert "s3cr3t" not in repr(plan.campaign)

    dead = NotifyConfig.model_validate({"webhook_url": "http://127.0.0.1:9/hook/s3cr3t-token"})
    with caplog.at_level(logging.WARNING, logger="lem_ray"):
        assert not send_notification(dead, "complete", {})
    assert "not delivered" in caplog.text and "s3cr3t" not in caplog.text

    with pytest.raises(ValueError, match="exactly one of webhook_url and webhook_url_env"):
        NotifyConfig.model_validate({"on": ["complete"]})


@pytest.mark.slow
def test_scheduled_campaign_notifies_once_with_all_blocks(webhook: str, tmp_path: Path) -> None:
    campaign = {**CAMPAIGN, "execution": {"cycles": 1},
                "grid": {"backends": ["pytorch"]},
                "schedule": {"every": "1h", "for": "2h"},
                "notify": {"webhook_url": webhook}}
    clock = WallClock(datetime(2026, 5, 1, tzinfo=UTC))
    out = tmp_path / "results"
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="lem-ray-test",
             runtime_env={"env_vars": WORKER_ENV})
    try:
        result = run_campaign(campaign, results_dir=out, clock=clock)
    finally:
        ray.shutdown()
    assert clock.slept and sum(clock.slept) <= 3600, "waited for the second slot, on the clock"
    assert result.counts["ok"] == 2 and result.counts["planned"] == 2
    import pyarrow.dataset as ds

    rows = ds.dataset(out / "experiments").to_table().to_pylist()
    assert sorted(r["cycle"] for r in rows) == [1, 2], "each repetition is a new cycle"
    (got,) = Hook.received
    assert got["body"]["event"] == "complete" and got["body"]["counts"]["ok"] == 2
    assert got["body"]["campaign_name"] == "sched" and len(got["body"]["summary"]) == 1
    for path in out.rglob("*"):
        if path.is_file():
            assert b"s3cr3t" not in path.read_bytes(), f"URL stored in {path}"
