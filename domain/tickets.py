"""Ticket use cases shared by the API and the workers. Each loads (and locks) the ticket, calls
one of its methods (domain/models.py: the rules live there), and saves what the method changed
and the events it returned, leaving the commit to the caller: a use case and its events land in
one transaction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Integer, Select, String, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from domain import events
from domain.db import Executor
from domain.errors import NotFound
from domain.events import NewEvent
from domain.ids import is_valid_id, utcnow
from domain.lifecycle import Caller, CloseReason, Priority, Status, TicketChanges, Trigger
from domain.models import Message, SlaClock, Staff, Ticket
from domain.policies import TimePolicy
from domain.search import TICKET_COLUMNS, QueueFilter, queue_page
from domain.ticket_sql import INSERT_CREATED, insert_created_params
from domain.versions import ROW_VERSION, VersionCondition, VersionMismatch, ticket_version

__all__ = ["Caller", "Page", "TicketChanges", "TicketRow", "TicketService", "TicketView"]

MAX_PER_PAGE = 100


def _page_query(*where: Any) -> Select[Any]:
    """A page of tickets, newest first, each row carrying the total of the whole list (a window
    count: one round trip instead of the page and a count)."""
    return (
        select(*TICKET_COLUMNS, func.count().over().label("total"))
        .where(*where)
        .order_by(Ticket.created_at.desc(), Ticket.id.desc())
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
    )


# The owner's list is a hot path: its statements are built once (the direct connection runs
# them from their compiled text, domain/db.py). Filtered by status it has statements of its own,
# so the unfiltered list stays exactly what it was.
_OWNERS = Ticket.user_id == bindparam("user_id", type_=String)
_OWNER_PAGE = _page_query(_OWNERS)
_OWNER_COUNT = select(func.count()).select_from(Ticket).where(_OWNERS)
_WITH_STATUS = Ticket.status == bindparam("status", type_=String)
_OWNER_STATUS_PAGE = _page_query(_OWNERS, _WITH_STATUS)
_OWNER_STATUS_COUNT = select(func.count()).select_from(Ticket).where(_OWNERS, _WITH_STATUS)


@dataclass(frozen=True)
class TicketView:
    """A ticket with its messages, oldest first, and its version (domain/versions.py; empty
    where it was not read). ``not_modified``: the caller already had this version, so the
    messages were not read."""

    ticket: Ticket
    messages: Sequence[Message]
    version: str = ""
    not_modified: bool = False


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
    first_admin_reply_at: datetime | None


@dataclass(frozen=True)
class Page:
    items: Sequence[TicketRow]
    page: int
    per_page: int
    total: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total / self.per_page) if self.total else 0


def _version_of(ticket: Ticket, row_version: str) -> str:
    """The ticket's version, its SLA clocks included: the sweep changes a clock (a warning, a
    breach) without writing the ticket's row, and the admin view shows the clocks."""
    clocks = ";".join(
        f"{c.target}/{c.generation}/{c.state}/{c.warned_at is not None}/{c.due_at.timestamp()}"
        for c in ticket.clocks
    )
    return ticket_version(ticket.id, f"{row_version}|{clocks}", ticket.updated_at)


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
        self,
        db: Executor,
        user_id: str,
        *,
        page: int,
        per_page: int,
        status: Status | None = None,
    ) -> Page:
        if status is None:
            params: dict[str, Any] = {"user_id": user_id}
            return await self._page(db, _OWNER_PAGE, _OWNER_COUNT, params, page, per_page)
        params = {"user_id": user_id, "status": status.value}
        return await self._page(db, _OWNER_STATUS_PAGE, _OWNER_STATUS_COUNT, params, page, per_page)

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
        query = QueueFilter(status=status, priority=priority, breached=breached)
        return await self.search(session, query, page=page, per_page=per_page)

    async def search(
        self, session: AsyncSession, query: QueueFilter, *, page: int, per_page: int
    ) -> Page:
        """The support team's queue: ``query``'s filters, text search and sort
        (domain/search.py)."""
        page_query, count = queue_page(query)
        return await self._page(session, page_query, count, {}, page, per_page)

    @staticmethod
    async def _page(
        db: Executor,
        query: Select[Any],
        count: Select[Any],
        params: dict[str, Any],
        page: int,
        per_page: int,
    ) -> Page:
        # Plain rows, not ORM objects: a page is only read and serialised, and loading it into
        # the identity map was a fifth of the API's time per list request (py-spy).
        offset = (page - 1) * per_page
        rows = (await db.execute(query, {**params, "limit": per_page, "offset": offset})).all()
        items = cast(Sequence[TicketRow], rows)
        if rows:
            total = int(rows[0].total)
        elif page == 1:
            total = 0
        else:  # past the last page: no row to carry the total
            total = int((await db.execute(count, params)).scalar() or 0)
        return Page(items=items, page=page, per_page=per_page, total=total)

    async def get_for_user(
        self,
        session: AsyncSession,
        ticket_id: str,
        caller: Caller,
        *,
        unless: VersionCondition | None = None,
    ) -> TicketView:
        """The caller's own ticket; only its version if ``unless`` matches it (If-None-Match)."""
        ticket, version = await self._load_versioned(session, ticket_id, lock=False)
        if ticket.user_id != caller.user_id:
            raise NotFound()
        return await self._view(session, ticket, version, unless)

    async def get(
        self, session: AsyncSession, ticket_id: str, *, unless: VersionCondition | None = None
    ) -> TicketView:
        """Any ticket (the support team); only its version if ``unless`` matches it."""
        ticket, version = await self._load_versioned(session, ticket_id, lock=False)
        return await self._view(session, ticket, version, unless)

    async def _view(
        self,
        session: AsyncSession,
        ticket: Ticket,
        version: str,
        unless: VersionCondition | None,
    ) -> TicketView:
        if unless is not None and unless.matches(version):
            return TicketView(ticket, (), version, not_modified=True)
        return TicketView(ticket, await self._messages(session, ticket.id), version)

    # -- user writes ---------------------------------------------------------------------------

    async def create(
        self,
        db: Executor,
        caller: Caller,
        *,
        subject: str,
        body: str,
        category: str | None,
        priority: Priority,
    ) -> TicketView:
        ticket, message, created = Ticket.open(
            caller,
            subject=subject,
            body=body,
            category=category,
            priority=priority,
            now=self.clock(),
            policy=self.policy,
        )
        # The hottest write: the ticket, its message and its event in one statement (one round
        # trip) instead of the unit of work's three INSERTs; the objects stay out of the
        # session and only shape the response.
        await events.write(
            db,
            created,
            statement=INSERT_CREATED,
            params=insert_created_params(ticket, message),
        )
        return TicketView(ticket, [message])

    async def reply_as_owner(
        self, session: AsyncSession, ticket_id: str, caller: Caller, *, body: str
    ) -> Message:
        ticket = await self._owned(session, ticket_id, caller, lock=True)
        message, new = ticket.reply_as_owner(caller, body, now=self.clock(), policy=self.policy)
        await self._save(session, new, message)
        return message

    async def close_as_owner(
        self, session: AsyncSession, ticket_id: str, caller: Caller
    ) -> TicketView:
        ticket = await self._owned(session, ticket_id, caller, lock=True)
        new = ticket.close(
            caller, Trigger.OWNER_CLOSE, CloseReason.USER, now=self.clock(), policy=self.policy
        )
        await self._save(session, new)
        return TicketView(ticket, await self._messages(session, ticket.id))

    # -- admin writes --------------------------------------------------------------------------

    async def reply_as_admin(
        self,
        session: AsyncSession,
        ticket_id: str,
        caller: Caller,
        *,
        body: str,
        expected: VersionCondition | None = None,
    ) -> Message:
        """An agent's reply; with ``expected`` (If-Match), only to that version of the ticket."""
        ticket = await self._load_expected(session, ticket_id, expected)
        now = self.clock()
        message, new = ticket.reply_as_agent(caller, body, now=now)
        await remember_staff_email(session, caller, now)
        await self._save(session, new, message)
        return message

    async def update_as_admin(
        self,
        session: AsyncSession,
        ticket_id: str,
        caller: Caller,
        change: TicketChanges,
        *,
        expected: VersionCondition | None = None,
    ) -> TicketView:
        """An agent's change; with ``expected`` (If-Match), only to that version of the
        ticket. The view has the ticket's new version."""
        ticket = await self._load_expected(session, ticket_id, expected)
        now = self.clock()
        new = ticket.change(change, caller, now=now, policy=self.policy)
        await remember_staff_email(session, caller, now)
        await self._save(session, new)
        messages = await self._messages(session, ticket.id)
        return TicketView(ticket, messages, await self._current_version(session, ticket))

    # -- timers --------------------------------------------------------------------------------

    async def breach_if_due(self, session: AsyncSession, ticket_id: str) -> list[str]:
        """A wake-up for one ticket's deadline: fire whatever of its SLA timers is due and
        still unmet (the sweep does the same for many at once in SQL, domain/timers.py)."""
        ticket = await self._load(session, ticket_id, lock=True)
        return await self._save(session, ticket.fire_timers(now=self.clock()))

    async def replan_for_policy(self, session: AsyncSession, ticket_id: str) -> None:
        """Re-plan one ticket's open clocks under this service's policy (see
        domain/timers.py: tickets_planned_by_another_policy)."""
        ticket = await self._load(session, ticket_id, lock=True)
        ticket.replan_for_policy(now=self.clock(), policy=self.policy)
        await session.flush()

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    async def _save(
        session: AsyncSession, new: Sequence[NewEvent], message: Message | None = None
    ) -> list[str]:
        """Write what a ticket's method changed (the loaded ticket is in the session already)
        and the events it returned."""
        if message is not None:
            session.add(message)
        await session.flush()
        return await events.write(session, new)

    async def _load(self, session: AsyncSession, ticket_id: str, *, lock: bool) -> Ticket:
        if not is_valid_id(ticket_id):
            raise NotFound()  # not a ULID: it cannot exist, and it never reaches the database
        # FOR NO KEY UPDATE (writers still queue on it): a plain FOR UPDATE would also block the
        # foreign-key checks of other transactions' inserts for this ticket (the SLA sweep's
        # events) while this one waits for the sweep's clock rows: a deadlock.
        ticket = await session.get(
            Ticket, ticket_id, with_for_update={"key_share": True} if lock else None
        )
        if ticket is None:
            raise NotFound()
        await self._load_clocks(session, ticket, lock=lock)
        return ticket

    @staticmethod
    async def _load_clocks(session: AsyncSession, ticket: Ticket, *, lock: bool) -> None:
        """Attach the ticket's SLA clocks. Under the ticket's lock for a write they are locked
        too: the sweep locks clock rows (not tickets), so a write waits for a sweep that is
        firing one of them and then sees what it fired."""
        query = select(SlaClock).where(SlaClock.ticket_id == ticket.id).order_by(SlaClock.target)
        if lock:
            query = query.with_for_update().execution_options(populate_existing=True)
        clocks = (await session.scalars(query)).all()
        set_committed_value(ticket, "clocks", list(clocks))

    async def _load_versioned(
        self, session: AsyncSession, ticket_id: str, *, lock: bool
    ) -> tuple[Ticket, str]:
        """The ticket and its version, read in one statement (under the row lock if ``lock``:
        then the version is that of the row the change will apply to)."""
        if not is_valid_id(ticket_id):
            raise NotFound()
        query = select(Ticket, ROW_VERSION).where(Ticket.id == ticket_id)
        if lock:
            query = query.with_for_update(key_share=True).execution_options(populate_existing=True)
        row = (await session.execute(query)).one_or_none()
        if row is None:
            raise NotFound()
        ticket, row_version = row
        await self._load_clocks(session, ticket, lock=lock)
        return ticket, _version_of(ticket, row_version)

    async def _load_expected(
        self, session: AsyncSession, ticket_id: str, expected: VersionCondition | None
    ) -> Ticket:
        """Lock the ticket; if ``expected`` no longer matches its version, raise
        :class:`VersionMismatch` with the ticket as it is (checked under the lock, so no change
        can slip in between the check and the write)."""
        if expected is None:
            return await self._load(session, ticket_id, lock=True)
        ticket, version = await self._load_versioned(session, ticket_id, lock=True)
        if not expected.matches(version):
            raise VersionMismatch(ticket, await self._messages(session, ticket.id), version)
        return ticket

    @staticmethod
    async def _current_version(session: AsyncSession, ticket: Ticket) -> str:
        """The version of the ticket's row as this transaction left it (after a flush)."""
        query = select(ROW_VERSION).where(Ticket.id == ticket.id)
        row_version = (await session.execute(query)).scalar_one()
        return _version_of(ticket, row_version)

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
