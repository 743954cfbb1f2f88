"""What happens around a campaign: a webhook when it ends, a timetable that repeats it."""

from __future__ import annotations

import re
from datetime import time as clock_time
from typing import Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator

from lem_ray.config.base import StrictModel
from lem_ray.config.limits import MAX_SCHEDULE_S, MAX_WEBHOOK_TIMEOUT_S

NotifyEvent = Literal["complete", "failure"]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration_s(text: str | float | int) -> float:
    """'6h', '90m', '1h30m', '2d' or a number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        compact = str(text).replace(" ", "").lower()
        parts = _DURATION.findall(compact)
        if not parts or "".join(n + u for n, u in parts) != compact:
            raise ValueError(f"{text!r} is not a duration such as 30m, 6h, 1h30m or 2d")
        seconds = sum(float(n) * _UNITS_S[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"a duration must be positive (got {text!r})")
    if seconds > MAX_SCHEDULE_S:
        raise ValueError(f"a duration may be at most {MAX_SCHEDULE_S / 86400:g}d")
    return seconds


def webhook_url_problem(url: str) -> str | None:
    """Why `url` is no webhook (None if it is one): only http(s) to a host. Never names the URL,
    which carries the webhook's secret; a `file://` URL was once "delivered" to a file."""
    if any(ord(c) < 33 or 127 <= ord(c) <= 159 for c in url):
        return "is not a URL: it contains a space or a control character"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        return "is not a URL (a bad host or port)"
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        return f"must be an http:// or https:// URL (it has {shown})"
    if not parts.hostname:
        return "is not a URL: it has no host"
    return None


class NotifyConfig(StrictModel):
    """A JSON POST with the campaign's summary when it ends. The URL is a secret (webhook URLs
    carry their token): it is never stored with the results nor printed."""

    webhook_url: SecretStr | None = None
    webhook_url_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the env var holding the URL (checked when it is sent)",
    )
    on: list[NotifyEvent] = Field(default_factory=lambda: list(get_args(NotifyEvent)))
    timeout_s: float = Field(10, gt=0, le=MAX_WEBHOOK_TIMEOUT_S)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: SecretStr | None) -> SecretStr | None:
        problem = None if url is None else webhook_url_problem(url.get_secret_value())
        if problem:
            raise ValueError(f"the webhook URL {problem}")
        return url

    @model_validator(mode="after")
    def _one_source(self) -> NotifyConfig:
        if (self.webhook_url is None) == (self.webhook_url_env is None):
            raise ValueError("set exactly one of webhook_url and webhook_url_env")
        return self


class ScheduleConfig(StrictModel):
    """Repeat the campaign's cycles on a timetable; each repetition is a new block of cycles.

    `every` + `for`: a repetition every period, starting now, while inside the window.
    `at` (+ `days`): at these clock times (in `timezone`) on these days, for `for` if given,
    else until stopped.
    """

    every: float | None = Field(None, description="seconds, or a duration such as 6h")
    for_: float | None = Field(None, alias="for", description="how long the timetable lasts")
    at: list[str] | None = Field(None, description="clock times HH:MM")
    days: list[Literal[DAYS]] | None = None  # type: ignore[valid-type]
    timezone: str = "UTC"

    @field_validator("every", "for_", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float | None:
        return None if value is None else parse_duration_s(value)  # type: ignore[arg-type]

    @field_validator("at")
    @classmethod
    def _clock_times(cls, times: list[str] | None) -> list[str] | None:
        if times is None:
            return None
        if not times:
            raise ValueError("at needs at least one time")
        for text in times:
            try:
                clock_time.fromisoformat(text)
            except ValueError:
                raise ValueError(f"{text!r} is not a clock time HH:MM") from None
        return sorted(times)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r} (use an IANA name such as "
                             "Europe/Berlin)") from None
        return name

    @model_validator(mode="after")
    def _one_form(self) -> ScheduleConfig:
        if (self.every is None) == (self.at is None):
            raise ValueError("set either every (with for) or at (with optional days and for)")
        if self.every is not None and self.for_ is None:
            raise ValueError("every needs for: how long to keep repeating (e.g. for: 48h)")
        if self.days is not None and (self.at is None or not self.days):
            raise ValueError("days goes with at, and names at least one day")
        return self
