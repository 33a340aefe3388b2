"""The ticket status state machine: one table says which status changes are allowed and by whom.

    open --> in_progress --> resolved --> closed
      |           ^   |          |           ^
      +-----------+---+----------+-----------+   (admins may move between any active statuses
                                                  and close from any of them)

Closed is final. The owner may close from any active status, and a user reply to a resolved
ticket reopens it to open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from domain.errors import InvalidTransition, TicketClosed


class Status(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Category(StrEnum):
    BILLING = "billing"
    TECHNICAL = "technical"
    ACCOUNT = "account"
    OTHER = "other"


class CloseReason(StrEnum):
    """Who closed a ticket, as the ``ticket.closed`` event says."""

    USER = "user"
    ADMIN = "admin"
    AUTO = "auto"


@dataclass(frozen=True)
class Caller:
    """Who is acting: the token's subject, whether it is an admin, and its email if it had one."""

    user_id: str
    is_admin: bool = False
    email: str | None = None


class Trigger(StrEnum):
    """Who or what asks for a status change."""

    ADMIN = "admin"  # PATCH by an admin
    OWNER_CLOSE = "owner_close"  # POST .../close by the ticket's owner
    USER_REPLY = "user_reply"  # the owner replied
    AUTO_CLOSE = "auto_close"  # the auto-close worker


ACTIVE = frozenset({Status.OPEN, Status.IN_PROGRESS, Status.RESOLVED})

TRANSITIONS: dict[Trigger, dict[Status, frozenset[Status]]] = {
    Trigger.ADMIN: {
        Status.OPEN: frozenset({Status.IN_PROGRESS, Status.RESOLVED, Status.CLOSED}),
        Status.IN_PROGRESS: frozenset({Status.OPEN, Status.RESOLVED, Status.CLOSED}),
        Status.RESOLVED: frozenset({Status.OPEN, Status.IN_PROGRESS, Status.CLOSED}),
        Status.CLOSED: frozenset(),
    },
    Trigger.OWNER_CLOSE: {s: frozenset({Status.CLOSED}) for s in ACTIVE}
    | {Status.CLOSED: frozenset()},
    Trigger.USER_REPLY: {
        Status.OPEN: frozenset(),
        Status.IN_PROGRESS: frozenset(),
        Status.RESOLVED: frozenset({Status.OPEN}),
        Status.CLOSED: frozenset(),
    },
    Trigger.AUTO_CLOSE: {
        Status.OPEN: frozenset(),
        Status.IN_PROGRESS: frozenset(),
        Status.RESOLVED: frozenset({Status.CLOSED}),
        Status.CLOSED: frozenset(),
    },
}


def can_transition(trigger: Trigger, current: Status, requested: Status) -> bool:
    return requested in TRANSITIONS[trigger][current]


def check_transition(trigger: Trigger, current: Status, requested: Status) -> None:
    """Raise if ``trigger`` may not move a ticket from ``current`` to ``requested``.

    A closed ticket raises :class:`TicketClosed`; any other refusal raises
    :class:`InvalidTransition`, which names both statuses.
    """
    if current is Status.CLOSED:
        raise TicketClosed(requested.value)
    if not can_transition(trigger, current, requested):
        raise InvalidTransition(current.value, requested.value)


_UNSET: Any = object()
UNSET = _UNSET


@dataclass(frozen=True)
class TicketChanges:
    """An admin's PATCH; ``UNSET`` fields are not touched (``assignee_id=None`` unassigns)."""

    status: Status | None = None
    priority: Priority | None = None
    assignee_id: str | None = field(default=_UNSET)

    @property
    def assigns(self) -> bool:
        return self.assignee_id is not _UNSET
