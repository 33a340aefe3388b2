"""Business time with an injected clock: weekends, holidays, opening hours and both daylight-saving
changes in Europe/Berlin and America/New_York, checked against hand-worked local times."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from domain.business_time import BusinessCalendar, add_open_time, open_time_between

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NINE_TO_FIVE = ((9 * 60, 17 * 60),)
WEEKDAYS = {day: NINE_TO_FIVE for day in range(5)}  # Monday to Friday, 09:00-17:00
HOUR = timedelta(hours=1)


def calendar(zone: ZoneInfo = BERLIN, **kwargs: object) -> BusinessCalendar:
    return BusinessCalendar(zone=zone, hours=kwargs.pop("hours", WEEKDAYS), **kwargs)  # type: ignore[arg-type]


def local(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args[:3], *args[3:], tzinfo=zone)  # type: ignore[arg-type,misc]


def test_friday_afternoon_plus_one_hour_is_monday_morning() -> None:
    # 2026-03-13 is a Friday.
    start = local(BERLIN, 2026, 3, 13, 16, 50)
    due = add_open_time(start, HOUR, calendar())
    assert due == local(BERLIN, 2026, 3, 16, 9, 50)
    assert due.tzinfo is not None
    assert open_time_between(start, due, calendar()) == HOUR


def test_within_one_day_and_exactly_at_closing() -> None:
    cal = calendar()
    monday = local(BERLIN, 2026, 3, 16, 10, 0)
    assert add_open_time(monday, 2 * HOUR, cal) == local(BERLIN, 2026, 3, 16, 12, 0)
    assert add_open_time(monday, 7 * HOUR, cal) == local(BERLIN, 2026, 3, 16, 17, 0)
    assert add_open_time(monday, 7 * HOUR + timedelta(seconds=1), cal) == local(
        BERLIN, 2026, 3, 17, 9, 0, 1
    )


@pytest.mark.parametrize(
    ("start", "due"),
    [
        ((2026, 3, 16, 6, 0), (2026, 3, 16, 10, 0)),  # before opening: counts from 09:00
        ((2026, 3, 16, 18, 0), (2026, 3, 17, 10, 0)),  # after closing: next morning
        ((2026, 3, 14, 12, 0), (2026, 3, 16, 10, 0)),  # Saturday: Monday
        ((2026, 3, 15, 23, 59), (2026, 3, 16, 10, 0)),  # Sunday night
    ],
)
def test_a_start_outside_hours_counts_from_the_next_opening(
    start: tuple[int, ...], due: tuple[int, ...]
) -> None:
    assert add_open_time(local(BERLIN, *start), HOUR, calendar()) == local(BERLIN, *due)


def test_holidays_are_skipped() -> None:
    cal = calendar(holidays=frozenset({date(2026, 12, 24), date(2026, 12, 25)}))
    # Wednesday 23 December 16:30 + 1 h: 30 min that day, Thu 24 and Fri 25 are holidays.
    start = local(BERLIN, 2026, 12, 23, 16, 30)
    assert add_open_time(start, HOUR, cal) == local(BERLIN, 2026, 12, 28, 9, 30)
    assert open_time_between(start, local(BERLIN, 2026, 12, 28, 12, 0), cal) == 3.5 * HOUR


def test_targets_spanning_many_days() -> None:
    cal = calendar()
    start = local(BERLIN, 2026, 3, 16, 9, 0)  # Monday opening
    # 40 open hours = one working week.
    assert add_open_time(start, 40 * HOUR, cal) == local(BERLIN, 2026, 3, 20, 17, 0)
    assert add_open_time(start, 41 * HOUR, cal) == local(BERLIN, 2026, 3, 23, 10, 0)
    # Four weeks, one of them crossing the spring change (29 March 2026).
    assert add_open_time(start, 160 * HOUR, cal) == local(BERLIN, 2026, 4, 10, 17, 0)
    assert open_time_between(start, local(BERLIN, 2026, 4, 10, 17, 0), cal) == 160 * HOUR


def test_berlin_spring_forward_keeps_local_opening_hours() -> None:
    cal = calendar()
    # Friday 27 March 2026 16:30 CET (+01:00); clocks go forward on Sunday 29 March.
    start = local(BERLIN, 2026, 3, 27, 16, 30)
    due = add_open_time(start, HOUR, cal)
    assert due == local(BERLIN, 2026, 3, 30, 9, 30)  # 09:30 CEST (+02:00)
    assert due.astimezone(UTC) == datetime(2026, 3, 30, 7, 30, tzinfo=UTC)
    # Wall-clock time between the two is two days and 16 h, less the lost hour.
    assert due - start == timedelta(days=2, hours=16)


def test_berlin_fall_back_keeps_local_opening_hours() -> None:
    cal = calendar()
    # Friday 23 October 2026 16:30 CEST; clocks go back on Sunday 25 October.
    start = local(BERLIN, 2026, 10, 23, 16, 30)
    due = add_open_time(start, HOUR, cal)
    assert due == local(BERLIN, 2026, 10, 26, 9, 30)
    assert due.astimezone(UTC) == datetime(2026, 10, 26, 8, 30, tzinfo=UTC)
    assert due - start == timedelta(days=2, hours=18)


def test_round_the_clock_days_are_as_long_as_they_really_are() -> None:
    always = {day: ((0, 24 * 60),) for day in range(7)}
    berlin = calendar(hours=always)
    spring = local(BERLIN, 2026, 3, 29, 0, 0)
    assert open_time_between(spring, local(BERLIN, 2026, 3, 30, 0, 0), berlin) == 23 * HOUR
    autumn = local(BERLIN, 2026, 10, 25, 0, 0)
    assert open_time_between(autumn, local(BERLIN, 2026, 10, 26, 0, 0), berlin) == 25 * HOUR
    # 24 h of open time from midnight before the spring change ends at 01:00 the next day.
    assert add_open_time(spring, 24 * HOUR, berlin) == local(BERLIN, 2026, 3, 30, 1, 0)


def test_new_york_changes_on_other_dates() -> None:
    cal = calendar(NEW_YORK)
    # US spring change: Sunday 8 March 2026; Berlin is still on winter time then.
    start = local(NEW_YORK, 2026, 3, 6, 16, 30)  # Friday, EST (-05:00)
    due = add_open_time(start, HOUR, cal)
    assert due == local(NEW_YORK, 2026, 3, 9, 9, 30)  # Monday, EDT (-04:00)
    assert due.astimezone(UTC) == datetime(2026, 3, 9, 13, 30, tzinfo=UTC)
    # US fall change: Sunday 1 November 2026.
    start = local(NEW_YORK, 2026, 10, 30, 16, 30)
    due = add_open_time(start, HOUR, cal)
    assert due.astimezone(UTC) == datetime(2026, 11, 2, 14, 30, tzinfo=UTC)
    always = calendar(NEW_YORK, hours={d: ((0, 24 * 60),) for d in range(7)})
    assert (
        open_time_between(local(NEW_YORK, 2026, 11, 1), local(NEW_YORK, 2026, 11, 2), always)
        == 25 * HOUR
    )


def test_a_utc_start_is_read_in_the_calendar_zone() -> None:
    # 15:50 UTC on a Friday is 16:50 in Berlin (winter time).
    start = datetime(2026, 3, 13, 15, 50, tzinfo=UTC)
    assert add_open_time(start, HOUR, calendar()) == datetime(2026, 3, 16, 8, 50, tzinfo=UTC)


def test_split_days_and_lunch_breaks() -> None:
    split = {day: ((9 * 60, 12 * 60), (13 * 60, 17 * 60)) for day in range(5)}
    cal = calendar(hours=split)
    start = local(BERLIN, 2026, 3, 16, 11, 30)
    assert add_open_time(start, HOUR, cal) == local(BERLIN, 2026, 3, 16, 13, 30)
    assert open_time_between(start, local(BERLIN, 2026, 3, 16, 13, 30), cal) == HOUR


def test_without_a_calendar_every_moment_counts() -> None:
    start = datetime(2026, 3, 13, 16, 50, tzinfo=UTC)
    assert add_open_time(start, HOUR, None) == start + HOUR
    assert open_time_between(start, start + HOUR, None) == HOUR
    assert open_time_between(start + HOUR, start, None) == timedelta(0)


def test_a_calendar_with_every_day_a_holiday_fails_instead_of_looping() -> None:
    cal = calendar(hours={0: NINE_TO_FIVE})
    everything = frozenset(date(2026, 1, 5) + timedelta(weeks=w) for w in range(20 * 53))
    with pytest.raises(ValueError, match="no opening hours"):
        add_open_time(
            local(BERLIN, 2026, 1, 1), HOUR, calendar(hours={0: NINE_TO_FIVE}, holidays=everything)
        )
    assert add_open_time(local(BERLIN, 2026, 1, 1), HOUR, cal) == local(BERLIN, 2026, 1, 5, 10)
