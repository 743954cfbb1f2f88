"""Around the driver: its blocks of cycles repeated on a timetable, and a webhook when the
campaign is over. The driver runs one block; automation wraps it and calls nothing else."""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

from lem_ray.config.automation import NotifyConfig, webhook_url_problem
from lem_ray.errors import ConfigError
from lem_ray.execution.driver.dispatch import CampaignInterrupted
from lem_ray.planning.plan import CampaignPlan
from lem_ray.planning.schedule import block_plan, blocks_done, timetable
from lem_ray.results.manifest import load_manifest

log = logging.getLogger("lem_ray")
Result = TypeVar("Result")


class BlockDriver(Protocol[Result]):
    """The driver as automation wraps it: a block of cycles' runs at a time."""

    results_dir: str

    def run(self, plan: CampaignPlan, block: int) -> Result:
        """Run what is not yet done of the plan (block: which block of cycles it is)."""

    def total(self, plan: CampaignPlan, blocks: list[Result]) -> Result:
        """The campaign's result over the blocks run."""


class Clock(Protocol):
    """Wall time and sleeping, so the schedule's tests run without waiting."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""

    def sleep(self, seconds: float) -> None:
        """Wait this many seconds."""


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """The current time in UTC."""
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        """Wait this many seconds."""
        time.sleep(seconds)


def webhook_url(notify: NotifyConfig) -> str:
    """The URL, read when needed; an unset variable is the user's error, said without a URL."""
    if notify.webhook_url is not None:
        return notify.webhook_url.get_secret_value()
    url = os.environ.get(notify.webhook_url_env or "")
    if not url:
        raise ConfigError(f"environment variable {notify.webhook_url_env} is not set",
                          path="notify.webhook_url_env")
    return url


def _http_only() -> urllib.request.OpenerDirector:
    """urlopen's handlers less file://, ftp:// and data:, which a redirect could still reach."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                    urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPRedirectHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _jsonable(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


def send_notification(notify: NotifyConfig, event: str, payload: dict[str, Any]) -> bool:
    """POST {"event": ..., **payload} as JSON if `event` is one the campaign asked for.

    A webhook that cannot be reached, or an environment variable that holds no http(s) URL,
    costs a warning, never the campaign's results; the warning names the error, not the URL
    (it carries the webhook's secret).
    """
    if event not in notify.on:
        return False
    url = webhook_url(notify)
    problem = webhook_url_problem(url)
    reason = (_post(url, {"event": event, **payload}, notify.timeout_s) if problem is None
              else f"the URL in {notify.webhook_url_env or 'webhook_url'} {problem}")
    if reason is None:
        return True
    log.warning("lem-ray: warning: the %s notification was not delivered (%s)", event, reason)
    return False


def _post(url: str, payload: dict[str, Any], timeout_s: float) -> str | None:
    """POST the payload as JSON; None when delivered, else why not (without the URL)."""
    body = json.dumps(payload, default=str).encode()
    try:
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "lem-ray"})
        with _http_only().open(request, timeout=timeout_s) as response:
            response.read()
        return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        return exc.reason if isinstance(exc.reason, str) else (
            f"{type(exc.reason).__name__}: {exc.reason}")
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    except (ValueError, http.client.HTTPException) as exc:
        return type(exc).__name__  # their text may quote the URL


def notified(plan: CampaignPlan, run: Callable[[], Any]) -> Any:
    """Run, then tell the webhook: `complete` when no run failed, `failure` when one did or
    the campaign stopped on an error (Ctrl-C is neither)."""
    notify = plan.campaign.notify
    if notify is None:
        return run()
    webhook_url(notify)  # an unset variable is refused before anything runs
    try:
        result = run()
    except (KeyboardInterrupt, CampaignInterrupted, ConfigError):
        raise
    except Exception as exc:
        send_notification(notify, "failure", {
            "campaign_name": plan.name, "error": f"{type(exc).__name__}: {exc}",
            "finished_at": datetime.now(timezone.utc).isoformat()})
        raise
    payload = {k: _jsonable(v) for k, v in asdict(result).items()}
    payload["finished_at"] = datetime.now(timezone.utc).isoformat()
    send_notification(notify, "failure" if result.counts.get("failed") else "complete", payload)
    return result


def automated(plan: CampaignPlan, driver: BlockDriver[Result],
              clock: Clock | None = None) -> Result:
    """The whole campaign: one block, or the schedule's blocks on its timetable; the webhook
    (with `notify`) told how it ended."""
    def run() -> Result:
        if plan.campaign.schedule is None:
            return driver.run(plan, 0)
        return driver.total(plan, scheduled(plan, driver, clock))

    result: Result = notified(plan, run)
    return result


def scheduled(plan: CampaignPlan, driver: BlockDriver[Result],
              clock: Clock | None = None) -> list[Result]:
    """Run the campaign's blocks of cycles at the timetable's times; results of each block.

    A block that runs past the next slot delays it; a slot already followed by another past
    slot is skipped (repetitions never pile up). A restarted schedule goes on after the last
    finished block.
    """
    schedule = plan.campaign.schedule
    assert schedule is not None
    clock = clock or SystemClock()
    states = {k: v["state"] for k, v in load_manifest(driver.results_dir)["runs"].items()}
    block = blocks_done(plan, states)
    slots = timetable(schedule, clock.now())
    results: list[Result] = []
    slot = next(slots, None)
    while slot is not None:
        following = next(slots, None)
        now = clock.now()
        if following is not None and following <= now:
            log.warning("lem-ray: the repetition due at %s is skipped: the one before ran "
                        "past it", slot.isoformat(timespec="minutes"))
            slot = following
            continue
        if slot > now:
            log.warning("lem-ray: block %d (cycles %d-%d) starts at %s", block + 1,
                        block * plan.campaign.execution.cycles + 1,
                        (block + 1) * plan.campaign.execution.cycles,
                        slot.isoformat(timespec="minutes"))
            clock.sleep((slot - now).total_seconds())
        results.append(driver.run(block_plan(plan, block), block))
        block += 1
        slot = following
    return results
