"""Ticket versions: an opaque token that changes with every change to a ticket (the API's ETag).

The token is derived from the row's ``xmin``, the id of the transaction that wrote the row's
current version: every UPDATE of a ticket, whoever makes it (a request, a timer sweep's bulk
UPDATE, a migration) gives it a new one, at no cost to any writer and with no column to keep up
to date. Every change the API shows is an UPDATE of the ticket row: a new message sets the
ticket's ``updated_at``. ``xmin`` is a 32-bit counter that wraps after about four billion
transactions, so ``updated_at`` and the id go into the token too. (PostgreSQL and SQLAlchemy
document ``xmin`` as a row version for optimistic concurrency.) A dump and restore changes every
token once: clients then read the ticket again, which is all an ETag asks of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Label, literal_column

from domain.errors import DomainError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The row version column, selected next to a ticket (``select(Ticket, ROW_VERSION)``).
ROW_VERSION: Label[str] = literal_column("tickets.xmin::text").label("row_version")


def ticket_version(ticket_id: str, row_version: str, updated_at: datetime) -> str:
    """The opaque version token of a ticket's current row."""
    micros = (updated_at - _EPOCH) // timedelta(microseconds=1)  # whatever its time zone
    seed = f"{ticket_id}:{row_version}:{micros}".encode()
    return hashlib.blake2b(seed, digest_size=10).hexdigest()


@dataclass(frozen=True)
class VersionCondition:
    """The versions a request accepts (an If-Match or If-None-Match list); ``any_version`` for
    ``*``, which every existing ticket matches."""

    versions: frozenset[str] = frozenset()
    any_version: bool = False

    @classmethod
    def of(cls, versions: Iterable[str], *, any_version: bool = False) -> VersionCondition:
        return cls(frozenset(versions), any_version)

    def matches(self, version: str) -> bool:
        return self.any_version or version in self.versions


class VersionMismatch(DomainError):
    """A change was made on the condition that the ticket was still at a version it no longer
    is (If-Match). Carries the ticket as it is now, read under the row lock."""

    code = "precondition_failed"

    def __init__(self, ticket: Any, messages: Sequence[Any], version: str) -> None:
        self.ticket = ticket
        self.messages = messages
        self.version = version
        super().__init__(
            "the ticket changed since the version named in If-Match; nothing was changed. "
            "Its current state and ETag are in this response: review them and send the "
            "change again with the new ETag"
        )
