"""Times in answers: UTC, second precision, a Z suffix, whatever zone the database hands back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from domain.ids import isoformat_z


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 3, 15, 10, 0, 0, tzinfo=UTC), "2026-03-15T10:00:00Z"),
        (datetime(2026, 3, 15, 10, 0, 0, 999_999, tzinfo=UTC), "2026-03-15T10:00:00Z"),
        (
            datetime(2026, 3, 15, 11, 0, 5, 123, tzinfo=ZoneInfo("Europe/Berlin")),
            "2026-03-15T10:00:05Z",
        ),
        (
            datetime(2026, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
            "2027-01-01T04:30:00Z",
        ),
        (datetime(2026, 7, 1, 0, 0, tzinfo=ZoneInfo("Etc/UTC")), "2026-07-01T00:00:00Z"),
    ],
)
def test_isoformat_z(moment: datetime, expected: str) -> None:
    assert isoformat_z(moment) == expected
