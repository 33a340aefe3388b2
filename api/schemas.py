"""Request and response bodies: explicit msgspec structs, separate from the ORM models."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from domain.ids import isoformat_z
from domain.lifecycle import Category, Priority, Status
from domain.models import Message, SlaClock, Ticket
from domain.sla_clocks import ClockState
from domain.sla_policy import Target
from domain.tickets import Page, TicketRow

SUBJECT_MAX = 200
BODY_MAX = 20_000
USER_ID_MAX = 255

Subject = Annotated[str, Meta(min_length=1, max_length=SUBJECT_MAX, description="Non-blank.")]
Body = Annotated[str, Meta(min_length=1, max_length=BODY_MAX, description="Non-blank.")]


def _check_text(field: str, value: str) -> None:
    if "\x00" in value:
        raise ValueError(f"`{field}` must not contain NUL characters")
    if not value.strip():
        raise ValueError(f"`{field}` must not be blank")


# -- requests --------------------------------------------------------------------------------


class CreateTicket(msgspec.Struct, forbid_unknown_fields=True):
    subject: Subject
    body: Body
    category: Category | None = None
    priority: Priority = Priority.NORMAL

    def __post_init__(self) -> None:
        _check_text("subject", self.subject)
        _check_text("body", self.body)


class CreateMessage(msgspec.Struct, forbid_unknown_fields=True):
    body: Body

    def __post_init__(self) -> None:
        _check_text("body", self.body)


class UpdateTicket(msgspec.Struct, forbid_unknown_fields=True):
    """Every field optional; ``assignee_id: null`` unassigns, leaving it out leaves it alone."""

    status: Status | None = None
    priority: Priority | None = None
    assignee_id: (
        Annotated[str, Meta(min_length=1, max_length=USER_ID_MAX)] | msgspec.UnsetType | None
    ) = msgspec.UNSET

    def __post_init__(self) -> None:
        if isinstance(self.assignee_id, str):
            _check_text("assignee_id", self.assignee_id)


# -- responses -------------------------------------------------------------------------------


class MessageOut(msgspec.Struct):
    id: str
    body: str
    is_admin: bool
    created_at: str


class TicketSummary(msgspec.Struct):
    id: str
    subject: str
    status: Status
    priority: Priority
    category: Category | None
    assignee_id: str | None
    created_at: str
    updated_at: str


class TicketOut(TicketSummary):
    messages: list[MessageOut]


class AdminTicketSummary(TicketSummary):
    user_id: str
    sla_due_at: str | None
    sla_breached: bool
    sla_breached_at: str | None
    # When an agent first replied (the first-response target met then, unless breached before).
    first_response_at: str | None


class SlaClockOut(msgspec.Struct):
    """One SLA target's clock: ``running`` towards ``due_at``, ``paused`` (the ticket is
    resolved: waiting on the user), ``met`` or ``breached``."""

    target: Target
    state: ClockState
    started_at: str
    due_at: str
    warn_at: str | None
    warned_at: str | None
    met_at: str | None
    breached_at: str | None
    paused_at: str | None


class AdminTicketOut(AdminTicketSummary):
    messages: list[MessageOut]
    # Each SLA target's clock (SLA_POLICY_FILE; by default only urgent first response).
    sla: list[SlaClockOut] = []


class Pagination(msgspec.Struct):
    page: int
    per_page: int
    total: int
    total_pages: int


class TicketList(msgspec.Struct):
    data: list[TicketSummary]
    pagination: Pagination
    success: bool = True


class AdminTicketList(msgspec.Struct):
    data: list[AdminTicketSummary]
    pagination: Pagination
    success: bool = True


class ErrorDetail(msgspec.Struct):
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    details: list[ErrorDetail] | None = None


class ErrorResponse(msgspec.Struct):
    """Every error has this shape: ``{"success": false, "error": {code, message, details?}}``."""

    error: ErrorBody
    success: bool = False


class PreconditionFailedResponse(msgspec.Struct):
    """A 412: the error, and the ticket as it is now (its ETag is in the ``ETag`` header)."""

    error: ErrorBody
    ticket: AdminTicketOut
    success: bool = False


# -- conversions -----------------------------------------------------------------------------


def message_out(message: Message) -> MessageOut:
    return MessageOut(
        id=message.id,
        body=message.body,
        is_admin=message.is_admin,
        created_at=isoformat_z(message.created_at),
    )


# Rows hold the stored strings; a dict lookup finds the member several times faster than
# calling the enum, which was a tenth of a list page's rendering.
_STATUSES = {member.value: member for member in Status}
_PRIORITIES = {member.value: member for member in Priority}
_CATEGORIES = {member.value: member for member in Category}


def _summary_fields(ticket: TicketRow) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "subject": ticket.subject,
        "status": _STATUSES[ticket.status],
        "priority": _PRIORITIES[ticket.priority],
        "category": _CATEGORIES[ticket.category] if ticket.category else None,
        "assignee_id": ticket.assignee_id,
        "created_at": isoformat_z(ticket.created_at),
        "updated_at": isoformat_z(ticket.updated_at),
    }


def _admin_fields(ticket: TicketRow) -> dict[str, Any]:
    return {
        "user_id": ticket.user_id,
        "sla_due_at": isoformat_z(ticket.sla_due_at) if ticket.sla_due_at else None,
        "sla_breached": ticket.sla_breached_at is not None,
        "sla_breached_at": isoformat_z(ticket.sla_breached_at) if ticket.sla_breached_at else None,
        "first_response_at": (
            isoformat_z(ticket.first_admin_reply_at) if ticket.first_admin_reply_at else None
        ),
    }


def ticket_out(ticket: Ticket, messages: list[Message] | Any) -> TicketOut:
    return TicketOut(**_summary_fields(ticket), messages=[message_out(m) for m in messages])


def _moment(value: Any) -> str | None:
    return isoformat_z(value) if value is not None else None


def sla_clock_out(clock: SlaClock) -> SlaClockOut:
    return SlaClockOut(
        target=Target(clock.target),
        state=ClockState(clock.state),
        started_at=isoformat_z(clock.started_at),
        due_at=isoformat_z(clock.due_at),
        warn_at=_moment(clock.warn_at),
        warned_at=_moment(clock.warned_at),
        met_at=_moment(clock.met_at),
        breached_at=_moment(clock.breached_at),
        paused_at=_moment(clock.paused_at),
    )


def admin_ticket_out(ticket: Ticket, messages: list[Message] | Any) -> AdminTicketOut:
    order = list(Target)
    clocks = sorted(ticket.clocks, key=lambda c: order.index(Target(c.target)))
    return AdminTicketOut(
        **_summary_fields(ticket),
        **_admin_fields(ticket),
        messages=[message_out(m) for m in messages],
        sla=[sla_clock_out(c) for c in clocks],
    )


def pagination_of(page: Page) -> Pagination:
    return Pagination(
        page=page.page, per_page=page.per_page, total=page.total, total_pages=page.total_pages
    )


def ticket_list(page: Page) -> TicketList:
    return TicketList(
        data=[TicketSummary(**_summary_fields(t)) for t in page.items],
        pagination=pagination_of(page),
    )


def admin_ticket_list(page: Page) -> AdminTicketList:
    return AdminTicketList(
        data=[AdminTicketSummary(**_summary_fields(t), **_admin_fields(t)) for t in page.items],
        pagination=pagination_of(page),
    )
