"""Ticket use cases shared by the API and the workers. Each takes a session and leaves the commit
to the caller, so a use case and the events it records land in one transaction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from domain import events
from domain.errors import NotFound, TicketClosed
from domain.ids import is_valid_id, new_id, utcnow
from domain.lifecycle import Priority, Status, Trigger, check_transition
from domain.models import Message, Staff, Ticket
from domain.policies import TimePolicy, sla_applies, update_sla_clock
from domain.ticket_sql import INSERT_CREATED, insert_created_params

MAX_PER_PAGE = 100
_TICKET_COLUMNS = tuple(Ticket.__table__.columns)


@dataclass(frozen=True)
class Caller:
    """Who is acting: the token's subject, whether it is an admin, and its email if it had one."""

    user_id: str
    is_admin: bool = False
    email: str | None = None


@dataclass(frozen=True)
class TicketView:
    ticket: Ticket
    messages: Sequence[Message]


class TicketRow(Protocol):
    """A ticket's columns as read for a response: an ORM ``Ticket`` or a plain row of a list
    query (the attributes the responses use)."""

    id: str
    user_id: str
    subject: str
    status: str
    priority: str
    category: str | None
    assignee_id: str | None
    created_at: datetime
    updated_at: datetime
    sla_due_at: datetime | None
    sla_breached_at: datetime | None


@dataclass(frozen=True)
class Page:
    items: Sequence[TicketRow]
    page: int
    per_page: int
    total: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total / self.per_page) if self.total else 0


_UNSET: Any = object()


@dataclass(frozen=True)
class TicketChanges:
    """An admin's PATCH; ``UNSET`` fields are not touched (``assignee_id=None`` unassigns)."""

    status: Status | None = None
    priority: Priority | None = None
    assignee_id: str | None = field(default=_UNSET)

    @property
    def assigns(self) -> bool:
        return self.assignee_id is not _UNSET


UNSET = _UNSET


async def remember_staff_email(session: AsyncSession, caller: Caller, now: datetime) -> None:
    """Keep the admin's email (from their token) so they can be told about tickets they own."""
    if not (caller.is_admin and caller.email):
        return
    upsert = insert(Staff).values(user_id=caller.user_id, email=caller.email, updated_at=now)
    await session.execute(
        upsert.on_conflict_do_update(
            index_elements=[Staff.user_id],
            set_={"email": upsert.excluded.email, "updated_at": upsert.excluded.updated_at},
            where=Staff.email != upsert.excluded.email,
        )
    )


class TicketService:
    """The ticket use cases. ``clock`` is injectable so time policies can be tested exactly."""

    def __init__(self, policy: TimePolicy, clock: Any = utcnow) -> None:
        self.policy = policy
        self.clock = clock

    # -- reads ---------------------------------------------------------------------------------

    async def list_for_user(
        self, session: AsyncSession, user_id: str, *, page: int, per_page: int
    ) -> Page:
        return await self._page(session, [Ticket.user_id == user_id], page, per_page)

    async def list_all(
        self,
        session: AsyncSession,
        *,
        page: int,
        per_page: int,
        status: Status | None = None,
        priority: Priority | None = None,
        breached: bool | None = None,
    ) -> Page:
        where: list[Any] = []
        if status is not None:
            where.append(Ticket.status == status.value)
        if priority is not None:
            where.append(Ticket.priority == priority.value)
        if breached is True:
            where.append(Ticket.sla_breached_at.is_not(None))
        elif breached is False:
            where.append(Ticket.sla_breached_at.is_(None))
        return await self._page(session, where, page, per_page)

    async def _page(
        self, session: AsyncSession, where: list[Any], page: int, per_page: int
    ) -> Page:
        # Plain rows, not ORM objects: a page is only read and serialised, and loading it into
        # the identity map was a fifth of the API's time per list request (py-spy).
        query = (
            select(*_TICKET_COLUMNS)
            .where(*where)
            .order_by(Ticket.created_at.desc(), Ticket.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
        items = cast(Sequence[TicketRow], (await session.execute(query)).all())
        if page == 1 and len(items) < per_page:
            total = len(items)  # the whole result fits on this page: no need to count
        else:
            count = select(func.count()).select_from(Ticket).where(*where)
            total = int((await session.scalar(count)) or 0)
        return Page(items=items, page=page, per_page=per_page, total=total)

    async def get_for_user(
        self, session: AsyncSession, ticket_id: str, caller: Caller
    ) -> TicketView:
        ticket = await self._owned(session, ticket_id, caller, lock=False)
        return TicketView(ticket, await self._messages(session, ticket.id))

    async def get(self, session: AsyncSession, ticket_id: str) -> TicketView:
        ticket = await self._load(session, ticket_id, lock=False)
        return TicketView(ticket, await self._messages(session, ticket.id))

    # -- user writes ---------------------------------------------------------------------------

    async def create(
        self,
        session: AsyncSession,
        caller: Caller,
        *,
        subject: str,
        body: str,
        category: str | None,
        priority: Priority,
    ) -> TicketView:
        now = self.clock()
        ticket = Ticket(
            id=new_id(),
            user_id=caller.user_id,
            requester_email=caller.email,
            subject=subject,
            status=Status.OPEN.value,
            priority=priority.value,
            category=category,
            assignee_id=None,
            created_at=now,
            updated_at=now,
            resolved_at=None,
            closed_at=None,
            first_admin_reply_at=None,
            sla_due_at=None,
            sla_breached_at=None,
        )
        update_sla_clock(ticket, applied_before=False, now=now, policy=self.policy)
        message = Message(
            id=new_id(),
            ticket_id=ticket.id,
            author_id=caller.user_id,
            is_admin=False,
            body=body,
            created_at=now,
        )
        event = events.record_event(
            session,
            ticket_id=ticket.id,
            type=events.TICKET_CREATED,
            actor_id=caller.user_id,
            actor_is_admin=False,
            payload=self._created_payload(ticket, message),
            now=now,
            add=False,
        )
        # The hottest write: one statement (one round trip) instead of the unit of work's
        # three INSERTs; the objects stay out of the session and only shape the response.
        await session.execute(INSERT_CREATED, insert_created_params(ticket, message, event))
        return TicketView(ticket, [message])

    async def reply_as_owner(
        self, session: AsyncSession, ticket_id: str, caller: Caller, *, body: str
    ) -> Message:
        ticket = await self._owned(session, ticket_id, caller, lock=True)
        now = self.clock()
        current = Status(ticket.status)
        if current is Status.CLOSED:
            raise TicketClosed()
        changes: dict[str, Any] = {}
        if current is Status.RESOLVED:
            # A reply to a resolved ticket means "not solved": reopen it (cancels auto-close).
            applied_before = sla_applies(ticket)
            self._set_status(ticket, Trigger.USER_REPLY, Status.OPEN, now, changes)
            # Reopened while urgent and never answered: back on the first-response clock.
            update_sla_clock(ticket, applied_before=applied_before, now=now, policy=self.policy)
        if caller.email and ticket.requester_email != caller.email:
            ticket.requester_email = caller.email
        message = await self._add_message(session, ticket, caller, body, now)
        if changes:
            self._record_update(session, ticket, caller, changes, now)
        return message

    async def close_as_owner(
        self, session: AsyncSession, ticket_id: str, caller: Caller
    ) -> TicketView:
        ticket = await self._owned(session, ticket_id, caller, lock=True)
        await self._close(session, ticket, caller, Trigger.OWNER_CLOSE, reason="user")
        return TicketView(ticket, await self._messages(session, ticket.id))

    # -- admin writes --------------------------------------------------------------------------

    async def reply_as_admin(
        self, session: AsyncSession, ticket_id: str, caller: Caller, *, body: str
    ) -> Message:
        ticket = await self._load(session, ticket_id, lock=True)
        if ticket.status == Status.CLOSED:
            raise TicketClosed()
        now = self.clock()
        await remember_staff_email(session, caller, now)
        if ticket.first_admin_reply_at is None:
            ticket.first_admin_reply_at = now  # meets the first-response SLA
        return await self._add_message(session, ticket, caller, body, now)

    async def update_as_admin(
        self, session: AsyncSession, ticket_id: str, caller: Caller, change: TicketChanges
    ) -> TicketView:
        ticket = await self._load(session, ticket_id, lock=True)
        current = Status(ticket.status)
        if current is Status.CLOSED:
            raise TicketClosed(change.status.value if change.status is not None else None)
        now = self.clock()
        await remember_staff_email(session, caller, now)
        applied_before = sla_applies(ticket)
        changes: dict[str, Any] = {}
        if change.priority is not None and change.priority.value != ticket.priority:
            changes["priority"] = {"old": ticket.priority, "new": change.priority.value}
            ticket.priority = change.priority.value
        if change.assigns and change.assignee_id != ticket.assignee_id:
            changes["assignee_id"] = {"old": ticket.assignee_id, "new": change.assignee_id}
            ticket.assignee_id = change.assignee_id
        if change.status is not None and change.status is not current:
            check_transition(Trigger.ADMIN, current, change.status)
            if change.status is Status.CLOSED:
                # Other fields in the same request are applied first, then the ticket closes.
                if changes:
                    self._touch_and_record(session, ticket, caller, changes, now, applied_before)
                await self._close(session, ticket, caller, Trigger.ADMIN, reason="admin")
                return TicketView(ticket, await self._messages(session, ticket.id))
            self._set_status(ticket, Trigger.ADMIN, change.status, now, changes)
        if changes:
            self._touch_and_record(session, ticket, caller, changes, now, applied_before)
        return TicketView(ticket, await self._messages(session, ticket.id))

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _created_payload(ticket: Ticket, message: Message) -> dict[str, Any]:
        payload: dict[str, Any] = {"message_id": message.id, "priority": ticket.priority}
        if ticket.sla_due_at is not None:
            # Full precision: a worker sets a wake-up message for this exact moment.
            payload["sla_due_at"] = ticket.sla_due_at.isoformat()
        return payload

    def _touch_and_record(
        self,
        session: AsyncSession,
        ticket: Ticket,
        caller: Caller,
        changes: dict[str, Any],
        now: datetime,
        applied_before: bool,
    ) -> None:
        update_sla_clock(ticket, applied_before=applied_before, now=now, policy=self.policy)
        ticket.updated_at = now
        self._record_update(session, ticket, caller, changes, now)

    def _record_update(
        self,
        session: AsyncSession,
        ticket: Ticket,
        caller: Caller,
        changes: dict[str, Any],
        now: datetime,
    ) -> None:
        payload: dict[str, Any] = {"changes": changes}
        if ticket.sla_due_at is not None:
            payload["sla_due_at"] = ticket.sla_due_at.isoformat()
        events.record_event(
            session,
            ticket_id=ticket.id,
            type=events.TICKET_UPDATED,
            actor_id=caller.user_id,
            actor_is_admin=caller.is_admin,
            payload=payload,
            now=now,
        )

    def _set_status(
        self,
        ticket: Ticket,
        trigger: Trigger,
        requested: Status,
        now: datetime,
        changes: dict[str, Any],
    ) -> None:
        current = Status(ticket.status)
        check_transition(trigger, current, requested)
        changes["status"] = {"old": current.value, "new": requested.value}
        ticket.status = requested.value
        ticket.updated_at = now
        # resolved_at drives auto-close: set on entering resolved, cleared on leaving it.
        ticket.resolved_at = now if requested is Status.RESOLVED else None
        if requested is Status.CLOSED:
            ticket.closed_at = now

    async def _close(
        self,
        session: AsyncSession,
        ticket: Ticket,
        caller: Caller,
        trigger: Trigger,
        *,
        reason: str,
    ) -> None:
        now = self.clock()
        applied_before = sla_applies(ticket)
        previous = ticket.status
        self._set_status(ticket, trigger, Status.CLOSED, now, {})
        update_sla_clock(ticket, applied_before=applied_before, now=now, policy=self.policy)
        events.record_event(
            session,
            ticket_id=ticket.id,
            type=events.TICKET_CLOSED,
            actor_id=caller.user_id,
            actor_is_admin=caller.is_admin,
            payload={"reason": reason, "previous_status": previous},
            now=now,
        )
        await session.flush()

    async def _add_message(
        self, session: AsyncSession, ticket: Ticket, caller: Caller, body: str, now: datetime
    ) -> Message:
        message = Message(
            id=new_id(),
            ticket_id=ticket.id,
            author_id=caller.user_id,
            is_admin=caller.is_admin,
            body=body,
            created_at=now,
        )
        session.add(message)
        ticket.updated_at = now
        events.record_event(
            session,
            ticket_id=ticket.id,
            type=events.MESSAGE_CREATED,
            actor_id=caller.user_id,
            actor_is_admin=caller.is_admin,
            payload={"message_id": message.id, "is_admin": caller.is_admin},
            now=now,
        )
        await session.flush()
        return message

    async def _load(self, session: AsyncSession, ticket_id: str, *, lock: bool) -> Ticket:
        if not is_valid_id(ticket_id):
            raise NotFound()  # not a ULID: it cannot exist, and it never reaches the database
        ticket = await session.get(Ticket, ticket_id, with_for_update=lock or None)
        if ticket is None:
            raise NotFound()
        return ticket

    async def _owned(
        self, session: AsyncSession, ticket_id: str, caller: Caller, *, lock: bool
    ) -> Ticket:
        ticket = await self._load(session, ticket_id, lock=lock)
        if ticket.user_id != caller.user_id:
            raise NotFound()  # another user's ticket looks exactly like a missing one
        return ticket

    async def _messages(self, session: AsyncSession, ticket_id: str) -> Sequence[Message]:
        query = (
            select(Message)
            .where(Message.ticket_id == ticket_id)
            .order_by(Message.created_at, Message.id)
        )
        return (await session.scalars(query)).all()
