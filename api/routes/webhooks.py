"""The host app's webhook endpoints, admin only: /v1/admin/support/webhooks.

A URL is checked when it is registered or changed (form, scheme, and every address its host
resolves to) and again by the worker at each send, since DNS can change in between.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import CacheControlHeader, State
from litestar.exceptions import ValidationException
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api import responses
from api.deps import SessionDep, commit, open_session
from api.guards import admin_only
from api.routes.params import PageNumber, PerPage, capped
from api.webhook_schemas import (
    CreateWebhook,
    UpdateWebhook,
    WebhookList,
    WebhookOut,
    WebhookWithSecret,
    webhook_list,
    webhook_out,
    webhook_with_secret,
)
from domain.ids import utcnow
from domain.webhooks import (
    UrlPolicy,
    WebhookUrlRefused,
    check_url,
    create_endpoint,
    delete_endpoint,
    get_endpoint,
    list_endpoints,
    rotate_secret,
    update_endpoint,
)

log = structlog.get_logger("api.webhooks")

EndpointId = FromPath[str]
# The answers that carry a secret must not be kept by any cache on the way.
NO_STORE = CacheControlHeader(no_store=True)


async def _allowed(url: str, state: State) -> str:
    """The URL if it may be called; a 400 naming the field and the reason otherwise.

    Called before the handler takes its database session: the name lookup may take up to its
    timeout, and a request waiting on DNS must not hold one of the process's connection slots
    (the handlers that check a URL ask for their session after it)."""
    try:
        return await check_url(url, UrlPolicy.of(state.settings))
    except WebhookUrlRefused as exc:
        raise ValidationException(
            detail=f"url: {exc}", extra=[{"key": "url", "message": str(exc)}]
        ) from None


class WebhookController(Controller):
    path = "/v1/admin/support/webhooks"
    tags = ["webhooks"]
    guards = [admin_only]
    security = [{"BearerToken": []}]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        cache_control=NO_STORE,
        responses=responses.admin(responses.WRITE),
        summary="Register an endpoint; the answer shows its signing secret, this once",
        description=(
            "Every ticket event of the types wanted is POSTed to the URL as JSON, signed as "
            "the Standard Webhooks specification says (webhook-id, webhook-timestamp, "
            "webhook-signature with HMAC-SHA256): verify it with any Standard Webhooks library "
            "and the `secret` of this answer. Keep the secret: it is never shown again."
        ),
    )
    async def register(
        self, request: Request[Any, Any, Any], data: JSONBody[CreateWebhook], state: State
    ) -> WebhookWithSecret:
        url = await _allowed(data.url, state)
        session = await open_session(request)  # after the lookup
        endpoint = await create_endpoint(
            session, url=url, event_types=data.event_types, enabled=data.enabled, now=utcnow()
        )
        out = webhook_with_secret(endpoint)
        await commit(session, state)
        log.info("webhook.registered", endpoint_id=endpoint.id, event_types=out.event_types)
        return out

    @get(
        "/",
        responses=responses.admin(responses.READ),
        summary="The registered endpoints, newest first (without their secrets)",
    )
    async def list_webhooks(
        self, session: SessionDep, page: PageNumber = 1, per_page: PerPage = 20
    ) -> WebhookList:
        return webhook_list(await list_endpoints(session, page=page, per_page=capped(per_page)))

    @get(
        "/{endpoint_id:str}",
        responses=responses.admin(responses.READ_ONE),
        summary="One endpoint (without its secret)",
    )
    async def get_webhook(self, endpoint_id: EndpointId, session: SessionDep) -> WebhookOut:
        return webhook_out(await get_endpoint(session, endpoint_id))

    @patch(
        "/{endpoint_id:str}",
        responses=responses.admin({**responses.WRITE, 404: responses.NOT_FOUND}),
        summary="Change the URL, the events wanted or whether it is enabled",
        description=(
            "Enabling an endpoint the service disabled (it failed for too long) clears its "
            "failure; its failed deliveries can then be retried from the deliveries list "
            "(`channel=webhook&status=failed`)."
        ),
    )
    async def update_webhook(
        self,
        endpoint_id: EndpointId,
        data: JSONBody[UpdateWebhook],
        request: Request[Any, Any, Any],
        state: State,
    ) -> WebhookOut:
        url = await _allowed(data.url, state) if isinstance(data.url, str) else None
        session = await open_session(request)  # after the lookup
        endpoint = await update_endpoint(
            session,
            endpoint_id,
            now=utcnow(),
            url=url,
            event_types=data.event_types if isinstance(data.event_types, list) else None,
            enabled=data.enabled if isinstance(data.enabled, bool) else None,
        )
        out = webhook_out(endpoint)
        await commit(session, state)
        return out

    @delete(
        "/{endpoint_id:str}",
        responses=responses.admin(responses.READ_ONE),
        summary="Remove the endpoint (its pending deliveries fail; the ledger keeps them)",
    )
    async def delete_webhook(self, endpoint_id: EndpointId, session: SessionDep) -> None:
        await delete_endpoint(session, endpoint_id)
        await session.commit()

    @post(
        "/{endpoint_id:str}/rotate-secret",
        status_code=HTTP_200_OK,
        cache_control=NO_STORE,
        responses=responses.admin(responses.READ_ONE),
        summary="A new signing secret; the old one stays valid for a grace period",
        description=(
            "The answer shows the new secret, this once. Until `previous_secret_expires_at` "
            "(WEBHOOK_SECRET_GRACE_SECONDS, a day by default) every message carries two "
            "signatures, one per secret, so receivers can switch at their own pace."
        ),
    )
    async def rotate(
        self, endpoint_id: EndpointId, session: SessionDep, state: State
    ) -> WebhookWithSecret:
        grace = timedelta(seconds=state.settings.webhook_secret_grace_s)
        endpoint = await rotate_secret(session, endpoint_id, now=utcnow(), grace=grace)
        out = webhook_with_secret(endpoint)
        await commit(session, state)
        log.info("webhook.secret_rotated", endpoint_id=endpoint.id)
        return out
