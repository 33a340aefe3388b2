"""Query parameters shared by the list endpoints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from litestar.exceptions import ValidationException
from litestar.openapi.spec import Example
from litestar.params import FromPath, FromQuery, QueryParameter

from api.deps import CallerDep
from api.schemas import USER_ID_MAX
from domain.lifecycle import Caller, Category, Priority, Status
from domain.search import QUERY_MAX, QueueFilter, SortKey, SortOrder
from domain.sla_clocks import ClockState
from domain.sla_policy import Target
from domain.tickets import MAX_PER_PAGE

MAX_PAGE = 1_000_000

PageNumber = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="1-based page number.")]
PerPage = Annotated[
    int,
    QueryParameter(
        ge=1,
        le=1_000_000,
        description=f"Page size; values above {MAX_PER_PAGE} are capped at {MAX_PER_PAGE}.",
    ),
]


def capped(per_page: int) -> int:
    return min(per_page, MAX_PER_PAGE)


TicketId = FromPath[str]


# -- the support team's queue (GET /v1/admin/support/tickets) -------------------------------


def _moment(description: str) -> Any:
    return QueryParameter(
        description=f"{description} ISO-8601; a time without a zone is read as UTC.",
        examples=[Example(value="2026-03-15T10:00:00Z")],
    )


AssigneeQuery = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=USER_ID_MAX,
        description="Tickets assigned to this agent id; `me`: to the caller; `none`: unassigned.",
        examples=[Example(summary="mine", value="me"), Example(summary="unassigned", value="none")],
    ),
]
SearchQuery = Annotated[
    str | None,
    QueryParameter(
        max_length=QUERY_MAX,
        description=(
            "Full-text search over subjects and every message, in English (stemmed: "
            '"payments" finds "payment"). Web-search syntax: words (all must match), '
            '"a quoted phrase", `or`, `-word` to exclude. Sorted by relevance unless `sort` '
            "says otherwise; a subject hit ranks above a message hit. Blank: no search."
        ),
        examples=[Example(summary="words", value="payout missing")],
    ),
]
SortQuery = Annotated[
    SortKey | None,
    QueryParameter(
        description=(
            "`relevance` (best search hit first; the default with `q`), `created` (the default "
            "without), `updated`, `priority` (urgent first) or `sla_due` (deadline soonest "
            "first; tickets without one last). Ties: newest first."
        )
    ),
]
OrderQuery = Annotated[
    SortOrder | None,
    QueryParameter(
        description="`asc` or `desc`; the default is the one each sort describes (`desc` for "
        "created, updated, priority and relevance; `asc` for sla_due)."
    ),
]
CreatedAfter = Annotated[datetime | None, _moment("Created strictly after this moment.")]
CreatedBefore = Annotated[datetime | None, _moment("Created strictly before this moment.")]
UpdatedAfter = Annotated[datetime | None, _moment("Last changed strictly after this moment.")]
UpdatedBefore = Annotated[datetime | None, _moment("Last changed strictly before this moment.")]
SlaDueBefore = Annotated[
    datetime | None,
    _moment(
        "First-response deadline strictly before this moment (tickets that have one); with "
        "`sla_state` or `sla_target`, the deadline of that clock (e.g. `sla_state=running` for "
        "any target due soon)."
    ),
]


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _assignee(value: str | None, caller: Caller) -> str | None:
    if value == "me":
        return caller.user_id
    return None if value == "none" else value


def _search_text(q: str | None) -> str | None:
    if q is None or not q.strip():
        return None
    if "\x00" in q:
        raise ValidationException(
            detail="q must not contain NUL characters",
            extra=[{"key": "q", "message": "must not contain NUL characters"}],
        )
    return q.strip()


def provide_queue_filter(
    caller: CallerDep,
    status: FromQuery[Status | None] = None,
    priority: FromQuery[Priority | None] = None,
    breached: Annotated[
        bool | None,
        QueryParameter(description="`true`: missed the first-response deadline; `false`: not."),
    ] = None,
    assignee: AssigneeQuery = None,
    category: FromQuery[Category | None] = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    updated_after: UpdatedAfter = None,
    updated_before: UpdatedBefore = None,
    sla_due_before: SlaDueBefore = None,
    sla_state: Annotated[
        ClockState | None,
        QueryParameter(
            description="Tickets with an SLA clock in this state: `running`, `paused` (resolved, "
            "waiting on the user), `met` or `breached`; with `sla_target`, that target's clock."
        ),
    ] = None,
    sla_target: Annotated[
        Target | None,
        QueryParameter(
            description="Tickets with a clock for this SLA target: `first_response`, "
            "`next_response` or `resolution`."
        ),
    ] = None,
    q: SearchQuery = None,
    sort: SortQuery = None,
    order: OrderQuery = None,
) -> QueueFilter:
    """The queue's filters, search and sort, from the query string."""
    return QueueFilter(
        status=status,
        priority=priority,
        breached=breached,
        assignee=_assignee(assignee, caller),
        unassigned=assignee == "none",
        category=category,
        created_after=_utc(created_after),
        created_before=_utc(created_before),
        updated_after=_utc(updated_after),
        updated_before=_utc(updated_before),
        sla_due_before=_utc(sla_due_before),
        sla_state=sla_state,
        sla_target=sla_target,
        text=_search_text(q),
        sort=sort,
        order=order,
    )
