"""Identifiers and clocks: ULIDs rendered as 26-character Crockford base32, times in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from ulid import ULID


def new_id() -> str:
    """A new ULID as its 26-character string form (sortable by creation time)."""
    return str(ULID())


def is_valid_id(value: str) -> bool:
    if len(value) != 26:
        return False
    try:
        ULID.from_str(value)
    except ValueError:
        return False
    return True


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat_z(moment: datetime) -> str:
    """``2026-03-15T10:00:00Z``: UTC, second precision, Z suffix, as the contract shows.

    ``isoformat`` rather than ``strftime``: a third less CPU, and a list page formats 40 of these
    (docs/profiling.md, section 12)."""
    return moment.astimezone(UTC).isoformat(timespec="seconds")[:19] + "Z"
