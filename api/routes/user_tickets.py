"""The ticket owner's endpoints: /v1/support/tickets."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromQuery, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api import responses
from api.deps import CallerDep, DirectDep, SessionDep, ticket_service
from api.etags import ETAG, IfNoneMatchHeader, if_none_match, not_modified, with_etag
from api.idempotency import REPLAYED, IdempotencyKeyHeader, write_once
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
from domain.lifecycle import Status


class UserTicketController(Controller):
    path = "/v1/support/tickets"
    tags = ["tickets"]
    security = [{"BearerToken": []}]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        responses=responses.idempotent(responses.WRITE),
        response_headers=[REPLAYED],
        summary="Create a ticket",
    )
    async def create_ticket(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[CreateTicket],
        caller: CallerDep,
        db: DirectDep,
        state: State,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[TicketOut]:
        service = ticket_service(state)

        async def create() -> TicketOut:
            view = await service.create(
                db,
                caller,
                subject=data.subject,
                body=data.body,
                category=data.category.value if data.category else None,
                priority=data.priority,
            )
            return ticket_out(view.ticket, view.messages)

        return await write_once(
            request,
            db,
            caller,
            state,
            key=idempotency_key,
            status_code=HTTP_201_CREATED,
            payload=data,
            write=create,
        )

    @get("/", responses=responses.READ, summary="List the caller's own tickets, newest first")
    async def list_tickets(
        self,
        caller: CallerDep,
        db: DirectDep,
        state: State,
        page: PageNumber = 1,
        per_page: PerPage = 20,
        status: FromQuery[Status | None] = None,
    ) -> TicketList:
        service = ticket_service(state)
        result = await service.list_for_user(
            db, caller.user_id, page=page, per_page=capped(per_page), status=status
        )
        return ticket_list(result)

    @get(
        "/{ticket_id:str}",
        responses=responses.conditional_read(responses.READ_ONE),
        response_headers=[ETAG],
        summary="One ticket with its messages",
    )
    async def get_ticket(
        self,
        ticket_id: TicketId,
        caller: CallerDep,
        session: SessionDep,
        state: State,
        if_none_match_header: IfNoneMatchHeader = None,
    ) -> Response[TicketOut]:
        service = ticket_service(state)
        view = await service.get_for_user(
            session, ticket_id, caller, unless=if_none_match(if_none_match_header)
        )
        if view.not_modified:
            return not_modified(view.version)
        return with_etag(ticket_out(view.ticket, view.messages), view.version)

    @post(
        "/{ticket_id:str}/messages",
        status_code=HTTP_201_CREATED,
        responses=responses.idempotent(responses.WRITE_ONE),
        response_headers=[REPLAYED],
        summary="The owner replies (reopens a resolved ticket)",
    )
    async def reply(
        self,
        request: Request[Any, Any, Any],
        ticket_id: TicketId,
        data: JSONBody[CreateMessage],
        caller: CallerDep,
        session: SessionDep,
        state: State,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[MessageOut]:
        service = ticket_service(state)

        async def reply() -> MessageOut:
            message = await service.reply_as_owner(session, ticket_id, caller, body=data.body)
            return message_out(message)

        return await write_once(
            request,
            session,
            caller,
            state,
            key=idempotency_key,
            status_code=HTTP_201_CREATED,
            payload=data,
            write=reply,
        )

    @post(
        "/{ticket_id:str}/close",
        status_code=HTTP_200_OK,
        responses=responses.idempotent(responses.WRITE_ONE),
        response_headers=[REPLAYED],
        summary="The owner closes the ticket",
    )
    async def close(
        self,
        request: Request[Any, Any, Any],
        ticket_id: TicketId,
        caller: CallerDep,
        session: SessionDep,
        state: State,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[TicketOut]:
        service = ticket_service(state)

        async def close() -> TicketOut:
            view = await service.close_as_owner(session, ticket_id, caller)
            return ticket_out(view.ticket, view.messages)

        return await write_once(
            request,
            session,
            caller,
            state,
            key=idempotency_key,
            status_code=HTTP_200_OK,
            payload=None,
            write=close,
        )
