"""Hand-built SQL for the hottest write, creating a ticket, kept next to the models it mirrors.

A new ticket, its first message, its SLA clocks (often none) and its ``ticket.created`` event
go in as one statement: CTEs insert the ticket, message and clocks ahead of the events' own
INSERT (domain/events.py): one round trip and no unit-of-work bookkeeping (profiling showed the
ORM flush as the largest part of the API's time per create).
Foreign keys are checked at the end of the statement, when all three rows exist. The column
lists come from the mapped tables, so a migration that adds a column cannot be missed here.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table

from domain.events import insert_statement
from domain.models import Message, SlaClock, Ticket


def _insert(table: Table, prefix: str) -> str:
    names = [column.name for column in table.columns]
    values = ", ".join(f":{prefix}{name}" for name in names)
    return f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({values})"


def _params(obj: Any, table: Table, prefix: str) -> dict[str, Any]:
    return {f"{prefix}{column.name}": getattr(obj, column.key) for column in table.columns}


_TICKETS = cast(Table, Ticket.__table__)
_MESSAGES = cast(Table, Message.__table__)

# A new ticket's clocks as arrays (the statement's text is the same for none or three); only
# the columns a new clock has, the others start NULL.
_NEW_CLOCKS = """INSERT INTO sla_clocks
        (ticket_id, target, state, generation, started_at, allowed_s, due_at, warn_at, policy)
    SELECT :t_id, c.target, c.state, c.generation, c.started_at, c.allowed_s, c.due_at,
           c.warn_at, c.policy
    FROM unnest(
        CAST(:c_targets AS varchar[]), CAST(:c_states AS varchar[]),
        CAST(:c_generations AS integer[]), CAST(:c_started_at AS timestamptz[]),
        CAST(:c_allowed_s AS double precision[]), CAST(:c_due_at AS timestamptz[]),
        CAST(:c_warn_at AS timestamptz[]), CAST(:c_policies AS varchar[])
    ) AS c (target, state, generation, started_at, allowed_s, due_at, warn_at, policy)"""

INSERT_CREATED = insert_statement(
    f"WITH new_ticket AS ({_insert(_TICKETS, 't_')}), new_message AS ({_insert(_MESSAGES, 'm_')}),"
    f" new_clocks AS ({_NEW_CLOCKS})"
)


def _clock_params(clocks: list[SlaClock]) -> dict[str, Any]:
    return {
        "c_targets": [c.target for c in clocks],
        "c_states": [c.state for c in clocks],
        "c_generations": [c.generation for c in clocks],
        "c_started_at": [c.started_at for c in clocks],
        "c_allowed_s": [c.allowed_s for c in clocks],
        "c_due_at": [c.due_at for c in clocks],
        "c_warn_at": [c.warn_at for c in clocks],
        "c_policies": [c.policy for c in clocks],
    }


def insert_created_params(ticket: Ticket, message: Message) -> dict[str, Any]:
    return {
        **_params(ticket, _TICKETS, "t_"),
        **_params(message, _MESSAGES, "m_"),
        **_clock_params(ticket.clocks),
    }
