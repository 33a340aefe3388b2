"""The support team's endpoints: /v1/admin/support/tickets (admin role only)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api import responses
from api.deps import CallerDep, SessionDep, commit, ticket_service
from api.etags import (
    ETAG,
    IfMatchHeader,
    IfNoneMatchHeader,
    if_match,
    if_none_match,
    not_modified,
    with_etag,
)
from api.guards import admin_only
from api.idempotency import REPLAYED, IdempotencyKeyHeader, write_once
from api.routes.params import PageNumber, PerPage, TicketId, capped, provide_queue_filter
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
from domain.lifecycle import UNSET, TicketChanges
from domain.search import QueueFilter


class AdminTicketController(Controller):
    path = "/v1/admin/support/tickets"
    tags = ["admin"]
    guards = [admin_only]
    security = [{"BearerToken": []}]

    @get(
        "/",
        responses=responses.admin(responses.READ),
        dependencies={"queue": Provide(provide_queue_filter, sync_to_thread=False)},
        summary="The queue: all tickets, filtered, searched and sorted (newest first)",
        description=(
            "Every filter is optional and they combine (AND). `q` searches subjects and "
            "messages and sorts by relevance. Same envelope as the user's list."
        ),
    )
    async def list_tickets(
        self,
        queue: NamedDependency[QueueFilter],
        session: SessionDep,
        state: State,
        page: PageNumber = 1,
        per_page: PerPage = 20,
    ) -> AdminTicketList:
        service = ticket_service(state)
        result = await service.search(session, queue, page=page, per_page=capped(per_page))
        return admin_ticket_list(result)

    @get(
        "/{ticket_id:str}",
        responses=responses.admin(responses.conditional_read(responses.READ_ONE)),
        response_headers=[ETAG],
        summary="One ticket",
    )
    async def get_ticket(
        self,
        ticket_id: TicketId,
        session: SessionDep,
        state: State,
        if_none_match_header: IfNoneMatchHeader = None,
    ) -> Response[AdminTicketOut]:
        service = ticket_service(state)
        view = await service.get(session, ticket_id, unless=if_none_match(if_none_match_header))
        if view.not_modified:
            return not_modified(view.version)
        return with_etag(admin_ticket_out(view.ticket, view.messages), view.version)

    @patch(
        "/{ticket_id:str}",
        responses=responses.admin(responses.conditional_write(responses.WRITE_ONE)),
        response_headers=[ETAG],
        summary="Change status, priority or assignee (assignee_id null unassigns)",
    )
    async def update_ticket(
        self,
        ticket_id: TicketId,
        data: JSONBody[UpdateTicket],
        caller: CallerDep,
        session: SessionDep,
        state: State,
        if_match_header: IfMatchHeader = None,
    ) -> Response[AdminTicketOut]:
        service = ticket_service(state)
        change = TicketChanges(
            status=data.status,
            priority=data.priority,
            assignee_id=UNSET if data.assignee_id is msgspec.UNSET else data.assignee_id,
        )
        view = await service.update_as_admin(
            session, ticket_id, caller, change, expected=if_match(if_match_header)
        )
        await commit(session, state)
        return with_etag(admin_ticket_out(view.ticket, view.messages), view.version)

    @post(
        "/{ticket_id:str}/messages",
        status_code=HTTP_201_CREATED,
        responses=responses.admin(
            responses.conditional_write(responses.idempotent(responses.WRITE_ONE))
        ),
        response_headers=[REPLAYED],
        summary="Admin reply",
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
        if_match_header: IfMatchHeader = None,
    ) -> Response[MessageOut]:
        service = ticket_service(state)
        expected = if_match(if_match_header)

        async def reply() -> MessageOut:
            message = await service.reply_as_admin(
                session, ticket_id, caller, body=data.body, expected=expected
            )
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
