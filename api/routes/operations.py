"""The operator's view, admin only: the delivery ledger with a hand retry of failed deliveries
(/v1/admin/support/deliveries), and a ticket's audit trail
(/v1/admin/support/tickets/{id}/events)."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.status_codes import HTTP_200_OK

from api import responses
from api.deps import CallerDep, SessionDep, commit
from api.guards import admin_only
from api.operations_schemas import (
    AuditTrail,
    DeliveryList,
    DeliveryOut,
    audit_trail,
    delivery_list,
    delivery_out,
)
from api.routes.params import PageNumber, PerPage, TicketId, capped
from domain.delivery import LedgerStatus
from domain.ids import utcnow
from domain.operations import list_deliveries, retry_delivery, ticket_history

# A ULID: 26 characters of Crockford's base32 (a bad one is a 400, never a database query).
ULID_PATTERN = "^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"


class DeliveryController(Controller):
    path = "/v1/admin/support/deliveries"
    tags = ["operations"]
    guards = [admin_only]
    security = [{"BearerToken": []}]

    @get(
        "/",
        responses=responses.admin(responses.READ),
        summary="The notification ledger, newest first (failed ones are an operator's case)",
    )
    async def list_deliveries(
        self,
        caller: CallerDep,
        session: SessionDep,
        page: PageNumber = 1,
        per_page: PerPage = 20,
        status: FromQuery[LedgerStatus | None] = None,
        channel: FromQuery[Literal["email", "slack", "webhook"] | None] = None,
        ticket_id: Annotated[
            str | None,
            QueryParameter(pattern=ULID_PATTERN, description="Only this ticket's deliveries."),
        ] = None,
    ) -> DeliveryList:
        found = await list_deliveries(
            session,
            page=page,
            per_page=capped(per_page),
            status=status,
            channel=channel,
            ticket_id=ticket_id,
        )
        return delivery_list(found)

    @post(
        "/{delivery_id:str}/retry",
        status_code=HTTP_200_OK,
        responses=responses.admin(responses.WRITE_ONE),
        summary="Send a delivery that failed for good once more, through the normal pipeline",
    )
    async def retry(
        self, delivery_id: FromPath[str], caller: CallerDep, session: SessionDep, state: State
    ) -> DeliveryOut:
        delivery, event = await retry_delivery(session, delivery_id, caller, utcnow())
        out = delivery_out(delivery, event_type=event.type, ticket_id=event.ticket_id)
        await commit(session, state)
        return out


class TicketHistoryController(Controller):
    path = "/v1/admin/support/tickets/{ticket_id:str}/events"
    tags = ["operations"]
    guards = [admin_only]
    security = [{"BearerToken": []}]

    @get(
        "/",
        responses=responses.admin(responses.READ_ONE),
        summary="The ticket's audit trail, oldest first: who changed what, and who was told",
    )
    async def history(
        self,
        ticket_id: TicketId,
        caller: CallerDep,
        session: SessionDep,
        page: PageNumber = 1,
        per_page: PerPage = 50,
    ) -> AuditTrail:
        found, entries = await ticket_history(
            session, ticket_id, page=page, per_page=capped(per_page)
        )
        return audit_trail(found, entries)
