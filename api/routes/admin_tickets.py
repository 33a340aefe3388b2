"""The support team's endpoints: /v1/admin/support/tickets (admin role only)."""

from __future__ import annotations

import msgspec
from litestar import Controller, get, patch, post
from litestar.datastructures import State
from litestar.params import FromQuery, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api import responses
from api.deps import CallerDep, ServiceDep, SessionDep, commit
from api.guards import admin_only
from api.routes.params import PageNumber, PerPage, TicketId, capped
from api.schemas import (
    AdminTicketList,
    AdminTicketOut,
    CreateMessage,
    MessageOut,
    UpdateTicket,
    admin_ticket_list,
    admin_ticket_out,
    message_out,
)
from domain.lifecycle import UNSET, Priority, Status, TicketChanges


class AdminTicketController(Controller):
    path = "/v1/admin/support/tickets"
    tags = ["admin"]
    guards = [admin_only]
    security = [{"BearerToken": []}]

    @get("/", responses=responses.admin(responses.READ), summary="All tickets, newest first")
    async def list_tickets(
        self,
        caller: CallerDep,
        session: SessionDep,
        service: ServiceDep,
        page: PageNumber = 1,
        per_page: PerPage = 20,
        status: FromQuery[Status | None] = None,
        priority: FromQuery[Priority | None] = None,
        breached: FromQuery[bool | None] = None,
    ) -> AdminTicketList:
        result = await service.list_all(
            session,
            page=page,
            per_page=capped(per_page),
            status=status,
            priority=priority,
            breached=breached,
        )
        return admin_ticket_list(result)

    @get("/{ticket_id:str}", responses=responses.admin(responses.READ_ONE), summary="One ticket")
    async def get_ticket(
        self, ticket_id: TicketId, caller: CallerDep, session: SessionDep, service: ServiceDep
    ) -> AdminTicketOut:
        view = await service.get(session, ticket_id)
        return admin_ticket_out(view.ticket, view.messages)

    @patch(
        "/{ticket_id:str}",
        responses=responses.admin(responses.WRITE_ONE),
        summary="Change status, priority or assignee (assignee_id null unassigns)",
    )
    async def update_ticket(
        self,
        ticket_id: TicketId,
        data: JSONBody[UpdateTicket],
        caller: CallerDep,
        session: SessionDep,
        service: ServiceDep,
        state: State,
    ) -> AdminTicketOut:
        change = TicketChanges(
            status=data.status,
            priority=data.priority,
            assignee_id=UNSET if data.assignee_id is msgspec.UNSET else data.assignee_id,
        )
        view = await service.update_as_admin(session, ticket_id, caller, change)
        await commit(session, state)
        return admin_ticket_out(view.ticket, view.messages)

    @post(
        "/{ticket_id:str}/messages",
        status_code=HTTP_201_CREATED,
        responses=responses.admin(responses.WRITE_ONE),
        summary="Admin reply",
    )
    async def reply(
        self,
        ticket_id: TicketId,
        data: JSONBody[CreateMessage],
        caller: CallerDep,
        session: SessionDep,
        service: ServiceDep,
        state: State,
    ) -> MessageOut:
        message = await service.reply_as_admin(session, ticket_id, caller, body=data.body)
        await commit(session, state)
        return message_out(message)
