"""Schedules for functions of deployed apps: ``ketch.Cron`` and ``ketch.Period``.

Example::

    @app.function(schedule=ketch.Cron("0 9 * * 1-5", timezone="Europe/Paris"))
    def morning_report(): ...

    @app.function(schedule=ketch.Period(minutes=10))
    def refresh(): ...

A schedule runs the function with no arguments once the app is deployed
(``ketch deploy``), until the app is stopped. ``Period`` counts from the
latest deploy (a redeploy starts it again, as on Modal); ``Cron`` follows the
clock, whatever the deploys. The control plane fires them (``server/schedules``).
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

from ._config import in_container
from .exception import InvalidError


class Schedule:
    """The base of ``Cron`` and ``Period``: what the control plane is sent (``to_wire``)."""

    _wire: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return dict(self._wire)

    def next_after(self, after: float) -> float:
        """The first run time after ``after`` (a UNIX timestamp)."""
        return next_run(self.to_wire(), after)


class Cron(Schedule):
    """Runs at the times a cron expression names (5 fields; ``timezone`` defaults to UTC)."""

    def __init__(self, cron_string: str, timezone: str = "UTC") -> None:
        if not isinstance(cron_string, str) or len(cron_string.split()) != 5:
            raise InvalidError(
                f"Cron({cron_string!r}): give 5 fields, minute hour day-of-month month day-of-week"
            )
        _zone(timezone)
        if not in_container():  # checked where the app is defined; containers lack croniter
            from croniter import croniter

            if not croniter.is_valid(cron_string):
                raise InvalidError(f"Cron({cron_string!r}) is not a valid cron expression")
        self.cron_string = cron_string
        self.timezone = timezone
        self._wire = {"type": "cron", "cron": cron_string, "timezone": timezone}

    def __repr__(self) -> str:
        return f"Cron({self.cron_string!r}, timezone={self.timezone!r})"


class Period(Schedule):
    """Runs every so long, counted from the latest deploy."""

    def __init__(
        self,
        *,
        years: int = 0,
        months: int = 0,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
    ) -> None:
        if any(
            not isinstance(v, (int, float)) or v < 0
            for v in (years, months, weeks, days, hours, minutes, seconds)
        ):
            raise InvalidError("Period(...) takes non-negative numbers")
        if int(years) != years or int(months) != months:
            raise InvalidError("Period(years=, months=) take whole numbers")
        self.months = int(years) * 12 + int(months)
        self.seconds = float(((weeks * 7 + days) * 24 + hours) * 60 * 60 + minutes * 60 + seconds)
        if self.months == 0 and self.seconds < 1:
            raise InvalidError("a Period must be at least 1 second long")
        self._wire = {"type": "period", "months": self.months, "seconds": self.seconds}

    def __repr__(self) -> str:
        return f"Period(months={self.months}, seconds={self.seconds:g})"


def check_schedule(schedule: Any) -> dict[str, Any] | None:
    if schedule is None:
        return None
    if not isinstance(schedule, Schedule):
        raise InvalidError(
            f"schedule= takes ketch.Cron(...) or ketch.Period(...), not {schedule!r}"
        )
    return schedule.to_wire()


def _zone(name: str) -> dt.tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # only where schedules are made or fired

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidError(
            f"unknown timezone {name!r} (use an IANA name like 'Europe/Paris')"
        ) from exc


def _add_months(when: dt.datetime, months: int) -> dt.datetime:
    month = when.month - 1 + months
    year, month = when.year + month // 12, month % 12 + 1
    return when.replace(
        year=year, month=month, day=min(when.day, calendar.monthrange(year, month)[1])
    )


def next_run(wire: dict[str, Any], after: float) -> float:
    """The first run of schedule ``wire`` after the UNIX time ``after``."""
    if wire["type"] == "period":
        when = dt.datetime.fromtimestamp(after, dt.UTC)
        if wire.get("months"):
            when = _add_months(when, int(wire["months"]))
        return (when + dt.timedelta(seconds=float(wire.get("seconds", 0)))).timestamp()
    from croniter import croniter

    start = dt.datetime.fromtimestamp(after, _zone(wire.get("timezone") or "UTC"))
    return float(croniter(wire["cron"], start).get_next(float))
