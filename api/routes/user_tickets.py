"""The ticket owner's endpoints: /v1/support/tickets."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api import responses
from api.deps import CallerDep, DirectDep, ServiceDep, SessionDep, commit
from api.routes.params import PageNumber, PerPage, TicketId, capped
from api.schemas import (
    CreateMessage,
    CreateTicket,
    MessageOut,
    TicketList,
    TicketOut,
    message_out,
    ticket_list,
    ticket_out,
)


class UserTicketController(Controller):
    path = "/v1/support/tickets"
    tags = ["tickets"]
    security = [{"BearerToken": []}]

    @post("/", status_code=HTTP_201_CREATED, responses=responses.WRITE, summary="Create a ticket")
    async def create_ticket(
        self,
        data: JSONBody[CreateTicket],
        caller: CallerDep,
        db: DirectDep,
        service: ServiceDep,
        state: State,
    ) -> TicketOut:
        view = await service.create(
            db,
            caller,
            subject=data.subject,
            body=data.body,
            category=data.category.value if data.category else None,
            priority=data.priority,
        )
        await commit(db, state)
        return ticket_out(view.ticket, view.messages)

    @get("/", responses=responses.READ, summary="List the caller's own tickets, newest first")
    async def list_tickets(
        self,
        caller: CallerDep,
        db: DirectDep,
        service: ServiceDep,
        page: PageNumber = 1,
        per_page: PerPage = 20,
    ) -> TicketList:
        result = await service.list_for_user(
            db, caller.user_id, page=page, per_page=capped(per_page)
        )
        return ticket_list(result)

    @get("/{ticket_id:str}", responses=responses.READ_ONE, summary="One ticket with its messages")
    async def get_ticket(
        self, ticket_id: TicketId, caller: CallerDep, session: SessionDep, service: ServiceDep
    ) -> TicketOut:
        view = await service.get_for_user(session, ticket_id, caller)
        return ticket_out(view.ticket, view.messages)

    @post(
        "/{ticket_id:str}/messages",
        status_code=HTTP_201_CREATED,
        responses=responses.WRITE_ONE,
        summary="The owner replies (reopens a resolved ticket)",
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
        message = await service.reply_as_owner(session, ticket_id, caller, body=data.body)
        await commit(session, state)
        return message_out(message)

    @post(
        "/{ticket_id:str}/close",
        status_code=HTTP_200_OK,
        responses=responses.WRITE_ONE,
        summary="The owner closes the ticket",
    )
    async def close(
        self,
        ticket_id: TicketId,
        caller: CallerDep,
        session: SessionDep,
        service: ServiceDep,
        state: State,
    ) -> TicketOut:
        view = await service.close_as_owner(session, ticket_id, caller)
        await commit(session, state)
        return ticket_out(view.ticket, view.messages)
