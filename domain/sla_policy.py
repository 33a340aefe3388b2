"""SLA policies: per priority, how long the team may take to answer first, to answer each later
user reply and to resolve, optionally counted in a business calendar, with an early warning.

The policy comes from the TOML file named by ``SLA_POLICY_FILE`` (docs/sla-policy.example.toml),
read and validated once when a process starts; every error names the file's line. Without a
file the policy is exactly the service's historical one: urgent tickets get a first-response
target of ``SLA_URGENT_SECONDS``, nothing else has a target, time is not calendar time and no
warning is sent.

Durations are amounts of *counted* time: with a calendar, ``"2d"`` is 48 hours of opening
hours (six 8-hour days), so business-day targets are best written in hours (``"16h"``).
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from domain.business_time import MINUTES_PER_DAY, BusinessCalendar, add_open_time
from domain.lifecycle import Priority
from domain.settings import ConfigError


class Target(StrEnum):
    """What a clock measures."""

    FIRST_RESPONSE = "first_response"  # from creation to the first agent reply
    NEXT_RESPONSE = "next_response"  # from a user reply to the next agent reply
    RESOLUTION = "resolution"  # from creation to resolved (paused while resolved)


@dataclass(frozen=True)
class Targets:
    """One priority's targets; an absent target runs no clock."""

    first_response: timedelta | None = None
    next_response: timedelta | None = None
    resolution: timedelta | None = None

    def of(self, target: Target) -> timedelta | None:
        value: timedelta | None = getattr(self, target.value)
        return value


@dataclass(frozen=True)
class SlaPolicy:
    targets: Mapping[Priority, Targets] = field(default_factory=dict)
    calendar: BusinessCalendar | None = None
    warn_share: float | None = None  # warn when this share of a target has elapsed

    @classmethod
    def default(cls, sla_urgent: timedelta) -> SlaPolicy:
        """Today's behaviour: urgent tickets, first response only, wall-clock time, no warning."""
        return cls(targets={Priority.URGENT: Targets(first_response=sla_urgent)})

    def target(self, priority: str, target: Target) -> timedelta | None:
        targets = self.targets.get(Priority(priority))
        return targets.of(target) if targets is not None else None

    def deadline(self, start: datetime, duration: timedelta) -> datetime:
        return add_open_time(start, duration, self.calendar)

    def warning(self, start: datetime, duration: timedelta) -> datetime | None:
        """When the warning for a clock started at ``start`` is due (None: no warnings)."""
        if self.warn_share is None:
            return None
        return add_open_time(start, duration * self.warn_share, self.calendar)

    @cached_property
    def fingerprint(self) -> str:
        """A digest of everything that decides a deadline, to notice a changed policy."""
        calendar = self.calendar
        described = {
            "targets": {
                p.value: [str(t.of(x)) for x in Target] for p, t in sorted(self.targets.items())
            },
            "warn": self.warn_share,
            "calendar": None
            if calendar is None
            else {
                "zone": calendar.zone.key,
                "hours": {str(k): v for k, v in sorted(calendar.hours.items())},
                "holidays": sorted(d.isoformat() for d in calendar.holidays),
            },
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


# -- loading ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$")
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TOP_LEVEL = {"warn_at", "calendar", *(p.value for p in Priority)}


class _Source:
    """The file's text, to say on which line a key or table is."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.lines = text.splitlines()

    def line_of(self, table: str | None, key: str | None = None) -> int:
        """The line of ``key`` in ``[table]`` (or of the header when ``key`` is None; top-level
        keys when ``table`` is None), or of the table itself when the key is not found."""
        current: str | None = None
        header_line = 1
        for number, raw in enumerate(self.lines, start=1):
            line = raw.split("#", 1)[0].strip()
            header = re.match(r"^\[\s*([^\]]+?)\s*\]$", line)
            if header:
                current = header.group(1).strip().strip('"')
                if current == table:
                    header_line = number
                    if key is None:
                        return number
                continue
            if (
                current == table
                and key is not None
                and re.match(rf'^"?{re.escape(key)}"?\s*=', line)
            ):
                return number
        return header_line

    def error(self, line: int, message: str) -> ConfigError:
        return ConfigError(f"SLA_POLICY_FILE line {line}: {message} ({self.name})")


def parse_duration(value: Any) -> timedelta:
    """``"1h"``, ``"30m"``, ``"2d"``, ``"1h30m"``, ``"90s"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError('must be a duration such as "1h", "30m", "2d" or seconds')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip() and (match := _DURATION.match(value)):
        days, hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
        seconds = float(((days * 24 + hours) * 60 + minutes) * 60 + secs)
    else:
        raise ValueError(f'must be a duration such as "1h", "30m", "2d" or seconds, got {value!r}')
    if seconds <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return timedelta(seconds=seconds)


def _parse_hours(value: Any) -> tuple[tuple[int, int], ...]:
    """``"09:00-17:00"``, several as ``"09:00-12:00, 13:00-17:00"``, or ``""`` (closed)."""
    if not isinstance(value, str):
        raise ValueError(f'must be a string such as "09:00-17:00", got {value!r}')
    intervals: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        match = _HOURS.match(part)
        if not match:
            raise ValueError(f'must look like "09:00-17:00", got {part!r}')
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if h1 > 23 or m1 > 59 or m2 > 59 or end > MINUTES_PER_DAY or start >= end:
            raise ValueError(f"{part!r} is not an interval within one day (end after start)")
        if intervals and start < intervals[-1][1]:
            raise ValueError(f"{part!r} overlaps or precedes the interval before it")
        intervals.append((start, end))
    return tuple(intervals)


def _calendar(raw: Any, source: _Source) -> BusinessCalendar:
    table = "calendar"
    if not isinstance(raw, dict):
        raise source.error(source.line_of(None, table), "calendar must be a table")
    unknown = set(raw) - {"timezone", "hours", "holidays"}
    for key in sorted(unknown):
        raise source.error(
            source.line_of(table, key),
            f"unknown calendar key {key!r} (timezone, hours, holidays)",
        )
    zone_name = raw.get("timezone")
    if not isinstance(zone_name, str):
        raise source.error(source.line_of(table), 'calendar needs timezone = "Area/City"')
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise source.error(
            source.line_of(table, "timezone"), f"unknown time zone {zone_name!r}"
        ) from None
    hours_raw = raw.get("hours")
    if not isinstance(hours_raw, dict) or not hours_raw:
        raise source.error(
            source.line_of(table, "hours"),
            'calendar needs hours = { mon = "09:00-17:00", ... }',
        )
    hours: dict[int, tuple[tuple[int, int], ...]] = {}
    for day, value in hours_raw.items():
        if day not in _WEEKDAYS:
            raise source.error(
                source.line_of(table, "hours"),
                f"unknown weekday {day!r} in hours (mon, tue, wed, thu, fri, sat, sun)",
            )
        try:
            intervals = _parse_hours(value)
        except ValueError as exc:
            raise source.error(source.line_of(table, "hours"), f"hours.{day} {exc}") from None
        if intervals:
            hours[_WEEKDAYS.index(day)] = intervals
    if not hours:
        raise source.error(source.line_of(table, "hours"), "calendar has no opening hours")
    holidays_raw = raw.get("holidays", [])
    if not isinstance(holidays_raw, list):
        raise source.error(source.line_of(table, "holidays"), "holidays must be a list of dates")
    holidays: set[date] = set()
    for item in holidays_raw:
        if isinstance(item, date) and not isinstance(item, datetime):
            holidays.add(item)
            continue
        try:
            holidays.add(date.fromisoformat(str(item)))
        except ValueError:
            raise source.error(
                source.line_of(table, "holidays"),
                f'holiday {item!r} is not a date such as "2026-12-25"',
            ) from None
    return BusinessCalendar(zone=zone, hours=hours, holidays=frozenset(holidays))


def parse_policy(text: str, *, name: str = "<policy>") -> SlaPolicy:
    """The policy in ``text`` (TOML); raises :class:`ConfigError` naming the line."""
    source = _Source(name, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        if line is None:  # before Python 3.14 the line is only in the message
            found = re.search(r"line (\d+)", str(exc))
            line = int(found.group(1)) if found else 1
        raise source.error(line, f"not valid TOML: {exc}") from None
    for key in sorted(set(data) - _TOP_LEVEL):
        line = source.line_of(None, key) if key in _top_keys(text) else source.line_of(key)
        raise source.error(
            line,
            f"unknown priority or setting {key!r} "
            f"(priorities: {', '.join(p.value for p in Priority)}; settings: warn_at, calendar)",
        )
    targets: dict[Priority, Targets] = {}
    for priority in Priority:
        raw = data.get(priority.value)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise source.error(source.line_of(None, priority.value), f"{priority} must be a table")
        values: dict[str, timedelta] = {}
        for key, value in raw.items():
            if key not in {t.value for t in Target}:
                raise source.error(
                    source.line_of(priority.value, key),
                    f"unknown target {key!r} in [{priority}] "
                    f"({', '.join(t.value for t in Target)})",
                )
            try:
                values[key] = parse_duration(value)
            except ValueError as exc:
                raise source.error(
                    source.line_of(priority.value, key), f"{priority}.{key} {exc}"
                ) from None
        targets[priority] = Targets(**values)
    warn_share: float | None = None
    if "warn_at" in data:
        raw_share = data["warn_at"]
        if (
            isinstance(raw_share, bool)
            or not isinstance(raw_share, int | float)
            or not 0 < raw_share < 1
        ):
            raise source.error(
                source.line_of(None, "warn_at"),
                f"warn_at must be a share of the target between 0 and 1 (e.g. 0.8), got "
                f"{raw_share!r}",
            )
        warn_share = float(raw_share)
    calendar = _calendar(data["calendar"], source) if "calendar" in data else None
    return SlaPolicy(targets=targets, calendar=calendar, warn_share=warn_share)


def _top_keys(text: str) -> set[str]:
    """Keys set before the first table header (``key = value`` at the top level)."""
    keys: set[str] = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            break
        if "=" in line:
            keys.add(line.split("=", 1)[0].strip().strip('"'))
    return keys


def load_policy(path: str | None, *, sla_urgent: timedelta) -> SlaPolicy:
    """The policy in the file at ``path``, or the default one when ``path`` is None."""
    if path is None:
        return SlaPolicy.default(sla_urgent)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"SLA_POLICY_FILE cannot be read: {exc}") from None
    return parse_policy(text, name=path)
