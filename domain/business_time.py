"""Business time: deadlines that count only a calendar's opening hours.

A :class:`BusinessCalendar` is a time zone, the opening hours of each weekday and a set of
holidays. The two functions here are pure and work on aware datetimes: they walk the calendar's
*local* days, turn each day's opening interval into two instants with ``zoneinfo`` (so a day on
which the clocks change is as long as it really is: an opening of 00:00-24:00 on the spring
change lasts 23 hours) and count only time inside those intervals. Without a calendar, every
moment counts (plain ``timedelta`` arithmetic), which is what the service did before calendars.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

# Minutes after local midnight: an opening interval is [start, end), end at most 24:00.
MINUTES_PER_DAY = 24 * 60
# A calendar with some opening hours reaches any deadline long before this; the bound only stops
# a calendar whose every open day is a holiday from looping for ever.
MAX_DAYS = 20 * 366


@dataclass(frozen=True)
class BusinessCalendar:
    """When the support team works. ``hours`` maps a weekday (0 = Monday) to its opening
    intervals in minutes after local midnight; a weekday that is absent is closed."""

    zone: ZoneInfo
    hours: Mapping[int, tuple[tuple[int, int], ...]]
    holidays: frozenset[date] = field(default_factory=frozenset)

    def open_intervals(self, day: date) -> list[tuple[datetime, datetime]]:
        """The day's opening intervals as aware instants (UTC), in order."""
        if day in self.holidays:
            return []
        return [
            (self._instant(day, start), self._instant(day, end))
            for start, end in self.hours.get(day.weekday(), ())
        ]

    def _instant(self, day: date, minutes: int) -> datetime:
        # 24:00 is the next day's midnight; a wall time is converted on its own day, so the
        # offset in force at that moment (not at midnight) applies.
        if minutes >= MINUTES_PER_DAY:
            day, minutes = day + timedelta(days=1), minutes - MINUTES_PER_DAY
        local = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=self.zone)
        return local.astimezone(UTC)

    def intervals_from(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Every opening interval that ends after ``start``, clipped to begin no earlier."""
        day = start.astimezone(self.zone).date()
        for offset in range(MAX_DAYS):
            for opens, closes in self.open_intervals(day + timedelta(days=offset)):
                if closes > start:
                    yield max(opens, start), closes
        raise ValueError("the business calendar has no opening hours in twenty years")


def add_open_time(
    start: datetime, duration: timedelta, calendar: BusinessCalendar | None
) -> datetime:
    """The moment at which ``duration`` of open time has passed since ``start``.

    A deadline that is used up exactly at closing time is that closing time (a 1 h target from
    16:00 in a 09:00-17:00 calendar is due at 17:00 the same day, not at 09:00 the next).
    """
    if calendar is None or duration <= timedelta(0):
        return start + duration if calendar is None else start
    remaining = duration
    for opens, closes in calendar.intervals_from(start):
        available = closes - opens
        if remaining <= available:
            return opens + remaining
        remaining -= available
    raise AssertionError("unreachable: intervals_from ends by raising")  # pragma: no cover


def open_time_between(a: datetime, b: datetime, calendar: BusinessCalendar | None) -> timedelta:
    """How much open time lies in ``[a, b)`` (zero when ``b`` is not after ``a``)."""
    if b <= a:
        return timedelta(0)
    if calendar is None:
        return b - a
    total = timedelta(0)
    for opens, closes in calendar.intervals_from(a):
        if opens >= b:
            break
        total += min(closes, b) - opens
    return total
