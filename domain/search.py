"""The support team's queue: filters, full-text search over subjects and messages, and sorts.

Text search uses the stored ``search_vector`` documents of tickets (their subject, weight A) and
messages (their body, weight D), each with a GIN index (migration 0004). ``q`` is read as a web
search (``websearch_to_tsquery``: words, "quoted phrases", ``or``, ``-word``), in English
(stemmed: "payments" finds "payment"). A ticket matches when its subject or any of its messages
does; its rank is its best hit's ``ts_rank``, so a subject hit outranks a message hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    nulls_last,
    select,
    true,
    union_all,
)

from domain.lifecycle import Category, Priority, Status
from domain.models import Message, SlaClock, Ticket
from domain.sla_clocks import ClockState
from domain.sla_policy import Target

TEXT_SEARCH_CONFIG = "pg_catalog.english"
QUERY_MAX = 200  # characters of ``q``


class SortKey(StrEnum):
    RELEVANCE = "relevance"  # best text-search hit first (only with a query)
    CREATED = "created"
    UPDATED = "updated"
    PRIORITY = "priority"  # urgent, high, normal, low
    SLA_DUE = "sla_due"  # the first-response deadline; tickets without one come last


class SortOrder(StrEnum):
    ASC = "asc"
    DESC = "desc"


# The order each key sorts in unless told otherwise: newest, most urgent, due soonest first.
DEFAULT_ORDER = {
    SortKey.RELEVANCE: SortOrder.DESC,
    SortKey.CREATED: SortOrder.DESC,
    SortKey.UPDATED: SortOrder.DESC,
    SortKey.PRIORITY: SortOrder.DESC,
    SortKey.SLA_DUE: SortOrder.ASC,
}


@dataclass(frozen=True)
class QueueFilter:
    """What the queue shows. Every field is optional; time bounds are exclusive."""

    status: Status | None = None
    priority: Priority | None = None
    breached: bool | None = None
    assignee: str | None = None  # an agent's id
    unassigned: bool = False  # only tickets nobody is assigned to
    category: Category | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    sla_due_before: datetime | None = None
    # Tickets with an SLA clock in this state and/or for this target (both: the same clock).
    sla_state: ClockState | None = None
    sla_target: Target | None = None
    text: str | None = None
    sort: SortKey | None = None  # default: relevance with ``text``, else created
    order: SortOrder | None = None  # default: the key's own (DEFAULT_ORDER)

    @property
    def sort_key(self) -> SortKey:
        if self.sort is SortKey.RELEVANCE and not self.text:
            return SortKey.CREATED  # nothing to rank by
        return self.sort or (SortKey.RELEVANCE if self.text else SortKey.CREATED)

    @property
    def sort_order(self) -> SortOrder:
        return self.order or DEFAULT_ORDER[self.sort_key]


_tickets = cast(Table, Ticket.__table__)
_messages = cast(Table, Message.__table__)
_t = _tickets.c
_m = _messages.c
_sc = cast(Table, SlaClock.__table__).c
# Every ticket column a page shows (the search document stays in the database).
TICKET_COLUMNS = tuple(c for c in _tickets.columns if c.name != "search_vector")
_CONFIG: ColumnElement[Any] = literal_column(f"'{TEXT_SEARCH_CONFIG}'::regconfig")
PRIORITY_RANK = case({p.value: rank for rank, p in enumerate(Priority)}, value=_t.priority)


def conditions(f: QueueFilter) -> list[ColumnElement[bool]]:
    """The WHERE conditions of the filter's fields (the text query aside)."""
    where: list[ColumnElement[bool]] = []
    if f.status is not None:
        where.append(_t.status == f.status.value)
    if f.priority is not None:
        where.append(_t.priority == f.priority.value)
    if f.breached is True:
        where.append(_t.sla_breached_at.is_not(None))
    elif f.breached is False:
        where.append(_t.sla_breached_at.is_(None))
    if f.unassigned:
        where.append(_t.assignee_id.is_(None))
    if f.assignee is not None:
        where.append(_t.assignee_id == f.assignee)
    if f.category is not None:
        where.append(_t.category == f.category.value)
    by_clock = f.sla_state is not None or f.sla_target is not None
    bounds = (
        (_t.created_at, f.created_after, f.created_before),
        (_t.updated_at, f.updated_after, f.updated_before),
        # With a clock filter, "due before" is that clock's deadline; else the first response's.
        (_t.sla_due_at, None, None if by_clock else f.sla_due_before),
    )
    for column, after, before in bounds:
        if after is not None:
            where.append(column > after)
        if before is not None:
            where.append(column < before)
    if by_clock:
        clock = [_sc.ticket_id == _t.id]
        if f.sla_state is not None:
            clock.append(_sc.state == f.sla_state.value)
        if f.sla_target is not None:
            clock.append(_sc.target == f.sla_target.value)
        if f.sla_due_before is not None:
            clock.append(_sc.due_at < f.sla_due_before)
        where.append(exists().where(*clock))
    return where


def _ranked_hits(text: str) -> Any:
    """(id, rank) of every ticket whose subject or any message matches ``text``."""
    query = select(func.websearch_to_tsquery(_CONFIG, text).label("q")).cte("query")
    tsquery = query.c.q
    subjects = (
        select(_t.id.label("id"), func.ts_rank(_t.search_vector, tsquery).label("rank"))
        .select_from(_tickets.join(query, true()))
        .where(_t.search_vector.bool_op("@@")(tsquery))
    )
    bodies = (
        select(_m.ticket_id.label("id"), func.ts_rank(_m.search_vector, tsquery).label("rank"))
        .select_from(_messages.join(query, true()))
        .where(_m.search_vector.bool_op("@@")(tsquery))
    )
    hits = union_all(subjects, bodies).subquery("hits")
    return (
        select(hits.c.id, func.max(hits.c.rank).label("rank"))
        .group_by(hits.c.id)
        .subquery("ranked")
    )


def _relevance_page(f: QueueFilter, text: str) -> tuple[Select[Any], Select[Any]]:
    """A search with no other filter, by relevance: the page is cut from the hits alone and only
    its tickets are read (reading every hit's ticket to sort them was most of the time of a
    search for a common word: bench/search.py)."""
    ranked = _ranked_hits(text)
    descending = f.sort_order is SortOrder.DESC

    def directed(column: Any) -> Any:
        return column.desc() if descending else column.asc()

    page = (
        select(ranked.c.id, ranked.c.rank, func.count().over().label("total"))
        .order_by(directed(ranked.c.rank), directed(ranked.c.id))
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
        .subquery("page")
    )
    rows = (
        select(*TICKET_COLUMNS, page.c.total)
        .select_from(_tickets.join(page, page.c.id == _t.id))
        .order_by(directed(page.c.rank), directed(_t.id))
    )
    return rows, select(func.count()).select_from(ranked)


def queue_page(f: QueueFilter) -> tuple[Select[Any], Select[Any]]:
    """The page query (``limit``/``offset`` bound at execution, each row carrying the total) and
    the count query for a page past the end. Ties go newest first (by id, a ULID, when the sort
    is by relevance alone)."""
    where = conditions(f)
    if f.text and not where and f.sort_key is SortKey.RELEVANCE:
        return _relevance_page(f, f.text)
    source: Any = _tickets
    rank: Any = None
    if f.text:
        ranked = _ranked_hits(f.text)
        source = _tickets.join(ranked, ranked.c.id == _t.id)
        rank = ranked.c.rank
    descending = f.sort_order is SortOrder.DESC

    def directed(column: Any) -> Any:
        return column.desc() if descending else column.asc()

    order: list[Any]
    match f.sort_key:
        case SortKey.RELEVANCE:
            order = [directed(rank)]
        case SortKey.UPDATED:
            order = [directed(_t.updated_at)]
        case SortKey.PRIORITY:
            order = [directed(PRIORITY_RANK), _t.created_at.desc()]
        case SortKey.SLA_DUE:
            order = [nulls_last(directed(_t.sla_due_at))]
        case _:
            order = []
    # Ties (and the created sort itself) go newest first; the id makes the order total.
    if f.sort_key is SortKey.CREATED:
        order += [directed(_t.created_at), directed(_t.id)]
    else:
        order += [_t.created_at.desc(), _t.id.desc()]

    page = (
        select(*TICKET_COLUMNS, func.count().over().label("total"))
        .select_from(source)
        .where(and_(True, *where))
        .order_by(*order)
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
    )
    count = select(func.count()).select_from(source).where(and_(True, *where))
    return page, count
