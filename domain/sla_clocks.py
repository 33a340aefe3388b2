"""SLA clocks: one row per ticket and target (first response, next response, resolution), the
state of that target's current clock and the moments that matter to it.

A clock is *running* (counting towards ``due_at``), *paused* (the ticket waits on the user: it
is resolved), *met* (answered or resolved in time; ``met_at``) or *breached* (the deadline
passed first; a breached clock that is answered later keeps its state and records ``met_at``).
``generation`` counts the restarts of a target's clock on the ticket (a next-response clock
starts again with each user reply that follows an answer), and every warning and breach event
carries it: each fires at most once per target and generation.

The ticket aggregate (domain/models.py) arms, re-plans, pauses and settles the clocks; the sweep
(domain/timers.py) fires warnings and breaches through the SQL twins defined after the class,
next to the Python rules they mirror (``warning_due``/``warn``, ``breach_due``/``breach``).
The first-response clock is the exception for breach *events*: its deadline is also the ticket's
historical ``sla_due_at``, whose breach event is the ticket's own (``Ticket.breach``, with its
historical payload); the clock is marked breached at the same deadline without a second one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Double, ForeignKey, Integer, String, Table, and_, bindparam, literal
from sqlalchemy.orm import Mapped, mapped_column

from domain.base import ID, TZ, Base
from domain.business_time import open_time_between
from domain.events import EventType, NewEvent
from domain.ids import isoformat_z
from domain.sla_policy import SlaPolicy, Target


class ClockState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    MET = "met"
    BREACHED = "breached"


OPEN_STATES = frozenset({ClockState.RUNNING, ClockState.PAUSED})


class SlaClock(Base):
    __tablename__ = "sla_clocks"

    ticket_id: Mapped[str] = mapped_column(
        ID, ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    target: Mapped[str] = mapped_column(String(16), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(TZ)
    # The target the clock runs against, in seconds of counted time (to re-plan it fairly when
    # the target changes or a pause ends: what was used of the old one stays used).
    allowed_s: Mapped[float] = mapped_column(Double)
    due_at: Mapped[datetime] = mapped_column(TZ)
    warn_at: Mapped[datetime | None] = mapped_column(TZ)
    warned_at: Mapped[datetime | None] = mapped_column(TZ)
    breached_at: Mapped[datetime | None] = mapped_column(TZ)
    met_at: Mapped[datetime | None] = mapped_column(TZ)
    paused_at: Mapped[datetime | None] = mapped_column(TZ)
    # The fingerprint of the policy that planned it (SlaPolicy.fingerprint): a process that
    # starts with another policy re-plans the open clocks stamped with an older one.
    policy: Mapped[str | None] = mapped_column(String(16))

    # -- planning (called by the ticket aggregate) ---------------------------------------------

    @classmethod
    def start(
        cls, ticket_id: str, target: Target, now: datetime, allowed: timedelta, slas: SlaPolicy
    ) -> SlaClock:
        clock = cls(ticket_id=ticket_id, target=target.value, generation=0)
        clock.restart(now, allowed, slas)
        return clock

    def restart(self, now: datetime, allowed: timedelta, slas: SlaPolicy) -> None:
        """A new clock for this target from ``now``: nothing of it used, nothing fired yet."""
        self.generation = (self.generation or 0) + 1
        self.state = ClockState.RUNNING.value
        self.started_at = now
        self.warned_at = self.breached_at = self.met_at = self.paused_at = None
        self._plan(now, allowed, used=timedelta(0), slas=slas)

    def replan(
        self, now: datetime, allowed: timedelta, slas: SlaPolicy, *, force: bool = False
    ) -> None:
        """A running clock under a new target (a priority or policy change): the time already
        used counts against the new target, so the deadline may fall due at once. ``force``:
        re-plan even with the same target (the calendar may have changed)."""
        if self.state != ClockState.RUNNING or self.breached_at is not None:
            return
        if allowed.total_seconds() == self.allowed_s and not force:
            return
        left = open_time_between(now, self.due_at, slas.calendar)
        self._plan(now, allowed, used=self._allowed - left, slas=slas)

    def pause(self, now: datetime) -> None:
        if self.state == ClockState.RUNNING:
            self.state = ClockState.PAUSED.value
            self.paused_at = now

    def resume(self, now: datetime, allowed: timedelta, slas: SlaPolicy) -> None:
        """Running again after a pause, with what was left of it when it paused."""
        if self.state != ClockState.PAUSED or self.paused_at is None:
            return
        left = open_time_between(self.paused_at, self.due_at, slas.calendar)
        self.state = ClockState.RUNNING.value
        self.paused_at = None
        self._plan(now, allowed, used=self._allowed - left, slas=slas)

    def meet(self, at: datetime) -> None:
        """Answered or resolved: a running or paused clock is met; a breached one keeps its
        state and records when it was finally met."""
        if self.met_at is None and self.state != ClockState.MET:
            self.met_at = at
        if self.state in OPEN_STATES:
            self.state = ClockState.MET.value
            self.paused_at = None

    @property
    def _allowed(self) -> timedelta:
        return timedelta(seconds=self.allowed_s)

    def _plan(self, now: datetime, allowed: timedelta, *, used: timedelta, slas: SlaPolicy) -> None:
        self.policy = slas.fingerprint
        self.allowed_s = allowed.total_seconds()
        self.due_at = slas.deadline(now, max(allowed - used, timedelta(0)))
        if self.warned_at is None:
            share = slas.warn_share
            self.warn_at = (
                None
                if share is None
                else slas.deadline(now, max(allowed * share - used, timedelta(0)))
            )

    # -- the rules the sweep also applies in SQL (CLOCK_WARN_DUE, CLOCK_BREACH_DUE below) -------

    def warning_due(self, now: datetime) -> bool:
        return (
            self.state == ClockState.RUNNING
            and self.warn_at is not None
            and self.warn_at <= now
            and self.warned_at is None
            and self.breached_at is None
        )

    def breach_due(self, now: datetime) -> bool:
        return self.state == ClockState.RUNNING and self.due_at <= now and self.breached_at is None

    def warn(self, now: datetime) -> list[NewEvent]:
        if not self.warning_due(now) or self.warn_at is None:
            return []
        self.warned_at = now
        payload = warning_payload(self.target, self.generation, self.due_at, self.warn_at, now)
        return [NewEvent(self.ticket_id, EventType.TICKET_SLA_WARNING, payload, now)]

    def breach(self, now: datetime) -> list[NewEvent]:
        if not self.breach_due(now):
            return []
        self.state = ClockState.BREACHED.value
        self.breached_at = now
        if self.target == Target.FIRST_RESPONSE:
            return []  # the ticket's own breach event tells (Ticket.breach)
        payload = clock_breach_payload(self.target, self.generation, self.due_at, now)
        return [NewEvent(self.ticket_id, EventType.TICKET_SLA_BREACHED, payload, now)]

    def mark_breached(self, now: datetime) -> None:
        """The first-response clock, breached by the ticket's own rule (``Ticket.breach``)."""
        if self.state == ClockState.RUNNING:
            self.state = ClockState.BREACHED.value
            self.breached_at = now


def _late_ms(moment: datetime, now: datetime) -> int:
    return int((now - moment).total_seconds() * 1000)


def warning_payload(
    target: str, generation: int, due_at: datetime, warn_at: datetime, now: datetime
) -> dict[str, Any]:
    return {
        "target": target,
        "generation": generation,
        "sla_due_at": isoformat_z(due_at),
        "warn_at": isoformat_z(warn_at),
        "late_ms": _late_ms(warn_at, now),
    }


def clock_breach_payload(
    target: str, generation: int, due_at: datetime, now: datetime
) -> dict[str, Any]:
    """A breach of a next-response or resolution clock. (A first-response breach keeps the
    historical payload, without ``target``: models.breach_payload.)"""
    return {
        "target": target,
        "generation": generation,
        "sla_due_at": isoformat_z(due_at),
        "late_ms": _late_ms(due_at, now),
    }


# The SQL twins of ``SlaClock.warning_due``/``warn`` and ``breach_due``/``breach``, for the sweep
# (domain/timers.py). Parameter: ``now``. 'running' is written into the statement so a generic
# plan can still use the partial indexes (migration 0006), as AUTO_CLOSE_DUE does.
_c = cast(Table, SlaClock.__table__).c
_RUNNING: Any = _c.state == literal(ClockState.RUNNING.value, literal_execute=True)
CLOCK_WARN_DUE = and_(
    _RUNNING,
    _c.warn_at <= bindparam("now"),
    _c.warned_at.is_(None),
    _c.breached_at.is_(None),
)
CLOCK_WARN_SET: dict[str, Any] = {"warned_at": bindparam("now")}
CLOCK_BREACH_DUE = and_(
    _RUNNING,
    _c.due_at <= bindparam("now"),
    _c.breached_at.is_(None),
)
CLOCK_BREACH_SET: dict[str, Any] = {
    "state": ClockState.BREACHED.value,
    "breached_at": bindparam("now"),
}
