"""The framework floor: the service's two hottest routes, the same SQL, and nothing else.

A minimal Litestar app with msgspec structs and an async psycopg pool (10 connections per
process); no token check, no rate limit, no access log, no publishing. It answers

* ``POST /v1/support/tickets``: the service's one statement (autocommit, as the service), whose CTEs
  insert the ticket and its first message and whose last INSERT writes the ``ticket.created``
  event (the column lists of domain/ticket_sql.py, every value a parameter); 201 with the
  ticket shaped like the service's answer. The caller is always ``CREATE_USER``.
* ``GET /v1/support/tickets?page=1&per_page=20``: in autocommit, the page of
  ``LIST_USER``'s tickets newest first, each row carrying the total (a window count; a count
  query only for a page past the end), as the service does.

The statements are copies of the service's: when the service's change, these (and
bench/pgbench_*.sql) must follow, or the comparison no longer holds.

bench/http_load.py runs it under Granian (``bench.floor_app:app``), reading FLOOR_DATABASE_URL.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Litestar, get, post
from litestar.params import Parameter
from psycopg_pool import AsyncConnectionPool
from ulid import ULID

CREATE_USER = "bench-create"
LIST_USER = "bench-list"
POOL_SIZE = 10
TICKET_COLUMNS = (
    "id, user_id, requester_email, subject, status, priority, category, assignee_id, created_at,"
    " updated_at, resolved_at, closed_at, first_admin_reply_at, sla_due_at, sla_breached_at"
)
# The service's statements as it compiles them (domain/ticket_sql.py, domain/events.py,
# domain/tickets.py): every value a parameter, the event's from arrays.
INSERT_CREATED = f"""WITH new_ticket AS (INSERT INTO tickets ({TICKET_COLUMNS}) VALUES (%(t_id)s,
%(t_user_id)s, %(t_requester_email)s, %(t_subject)s, %(t_status)s, %(t_priority)s, %(t_category)s,
%(t_assignee_id)s, %(t_created_at)s, %(t_updated_at)s, %(t_resolved_at)s, %(t_closed_at)s,
%(t_first_admin_reply_at)s, %(t_sla_due_at)s, %(t_sla_breached_at)s)), new_message AS (INSERT INTO
messages (id, ticket_id, author_id, is_admin, body, created_at) VALUES (%(m_id)s, %(m_ticket_id)s,
%(m_author_id)s, %(m_is_admin)s, %(m_body)s, %(m_created_at)s)), new_clocks AS (INSERT INTO
sla_clocks (ticket_id, target, state, generation, started_at, allowed_s, due_at, warn_at, policy)
SELECT %(t_id)s, c.target, c.state, c.generation, c.started_at, c.allowed_s, c.due_at, c.warn_at,
c.policy FROM unnest(CAST(%(c_targets)s AS varchar[]), CAST(%(c_states)s AS varchar[]),
CAST(%(c_generations)s AS integer[]), CAST(%(c_started_at)s AS timestamptz[]),
CAST(%(c_allowed_s)s AS double precision[]), CAST(%(c_due_at)s AS timestamptz[]),
CAST(%(c_warn_at)s AS timestamptz[]), CAST(%(c_policies)s AS varchar[]))
AS c (target, state, generation, started_at, allowed_s, due_at, warn_at, policy))
INSERT INTO ticket_events
  (id, ticket_id, type, actor_id, actor_is_admin, payload, request_id, created_at, publish_count)
SELECT e.id, e.ticket_id, e.type, e.actor_id, e.actor_is_admin, e.payload, %(e_request_id)s,
  e.created_at, 0
FROM unnest(
  CAST(%(e_ids)s AS varchar[]), CAST(%(e_ticket_ids)s AS varchar[]),
  CAST(%(e_types)s AS varchar[]), CAST(%(e_actor_ids)s AS varchar[]),
  CAST(%(e_actor_is_admin)s AS boolean[]), CAST(%(e_payloads)s AS jsonb[]),
  CAST(%(e_created_at)s AS timestamptz[])
) AS e (id, ticket_id, type, actor_id, actor_is_admin, payload, created_at)"""
PAGE = f"""SELECT {TICKET_COLUMNS}, count(*) OVER () AS total FROM tickets
WHERE tickets.user_id = %(user_id)s::VARCHAR ORDER BY tickets.created_at DESC, tickets.id DESC
LIMIT %(limit)s::INTEGER OFFSET %(offset)s::INTEGER"""
COUNT = "SELECT count(*) AS count_1 FROM tickets WHERE tickets.user_id = %(user_id)s::VARCHAR"

Priority = Literal["low", "normal", "high", "urgent"]
Category = Literal["billing", "technical", "account", "other"]


class CreateTicket(msgspec.Struct, forbid_unknown_fields=True):
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    body: Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]
    category: Category | None = None
    priority: Priority = "normal"


class MessageOut(msgspec.Struct):
    id: str
    body: str
    is_admin: bool
    created_at: str


class TicketSummary(msgspec.Struct):
    id: str
    subject: str
    status: str
    priority: str
    category: str | None
    assignee_id: str | None
    created_at: str
    updated_at: str


class TicketOut(TicketSummary):
    messages: list[MessageOut]


class Pagination(msgspec.Struct):
    page: int
    per_page: int
    total: int
    total_pages: int


class TicketList(msgspec.Struct):
    data: list[TicketSummary]
    pagination: Pagination
    success: bool = True


# The parameters of the clocks CTE (domain/ticket_sql.py), one array each.
CLOCK_ARRAYS = [
    "targets",
    "states",
    "generations",
    "started_at",
    "allowed_s",
    "due_at",
    "warn_at",
    "policies",
]


def zulu(moment: datetime) -> str:
    # As the service formats them (domain/ids.py isoformat_z).
    return moment.astimezone(UTC).isoformat(timespec="seconds")[:19] + "Z"


def create_params(data: CreateTicket, user: str) -> dict[str, Any]:
    t_id, m_id, now = str(ULID()), str(ULID()), datetime.now(UTC)
    ticket: dict[str, Any] = {"id": t_id, "user_id": user, "requester_email": None}
    ticket["subject"] = data.subject
    ticket |= {"status": "open", "priority": data.priority, "category": data.category}
    ticket |= {"assignee_id": None, "created_at": now, "updated_at": now}
    ticket |= dict.fromkeys(("resolved_at", "closed_at", "first_admin_reply_at", "sla_due_at"))
    ticket["sla_breached_at"] = None
    message: dict[str, Any] = {"id": m_id, "ticket_id": t_id, "author_id": user, "is_admin": False}
    message |= {"body": data.body, "created_at": now}
    payload = json.dumps({"message_id": m_id, "priority": data.priority})
    return {
        **{f"t_{k}": v for k, v in ticket.items()},
        **{f"m_{k}": v for k, v in message.items()},
        # A normal ticket has no SLA clock under the default policy: the CTE inserts none,
        # as the service's does for these tickets.
        **{f"c_{name}": [] for name in CLOCK_ARRAYS},
        "e_request_id": str(ULID()),
        "e_ids": [str(ULID())],
        "e_ticket_ids": [t_id],
        "e_types": ["ticket.created"],
        "e_actor_ids": [user],
        "e_actor_is_admin": [False],
        "e_payloads": [payload],
        "e_created_at": [now],
    }


# Autocommit: each statement its own transaction, as the service's direct connection runs them.
pool = AsyncConnectionPool(
    os.environ.get("FLOOR_DATABASE_URL", ""),
    min_size=POOL_SIZE,
    max_size=POOL_SIZE,
    open=False,
    kwargs={"autocommit": True},
)


@post("/v1/support/tickets")
async def create_ticket(data: CreateTicket) -> TicketOut:
    params = create_params(data, CREATE_USER)
    async with pool.connection() as conn:
        await conn.execute(INSERT_CREATED, params)
    at = zulu(params["t_created_at"])
    message = MessageOut(id=params["m_id"], body=data.body, is_admin=False, created_at=at)
    return TicketOut(
        id=params["t_id"],
        subject=data.subject,
        status="open",
        priority=data.priority,
        category=data.category,
        assignee_id=None,
        created_at=at,
        updated_at=at,
        messages=[message],
    )


@get("/v1/support/tickets")
async def list_tickets(
    page: Annotated[int, Parameter(ge=1)] = 1, per_page: Annotated[int, Parameter(ge=1)] = 20
) -> TicketList:
    per_page = min(per_page, 100)
    params = {"user_id": LIST_USER, "limit": per_page, "offset": (page - 1) * per_page}
    async with pool.connection() as conn:
        rows = await (await conn.execute(PAGE, params)).fetchall()
        if rows:
            total = int(rows[0][-1])
        elif page > 1:  # past the last page: no row to carry the total
            total = int(((await (await conn.execute(COUNT, params)).fetchone()) or (0,))[0])
        else:
            total = 0
    data = [
        TicketSummary(
            id=r[0],
            subject=r[3],
            status=r[4],
            priority=r[5],
            category=r[6],
            assignee_id=r[7],
            created_at=zulu(r[8]),
            updated_at=zulu(r[9]),
        )
        for r in rows
    ]
    pages = -(-total // per_page)
    return TicketList(data=data, pagination=Pagination(page, per_page, total, pages))


async def open_pool() -> None:
    await pool.open(wait=True)


async def close_pool() -> None:
    await pool.close()


app = Litestar(
    [create_ticket, list_tickets],
    on_startup=[open_pool],
    on_shutdown=[close_pool],
    openapi_config=None,
    logging_config=None,
)
