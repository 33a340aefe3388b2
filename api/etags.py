"""ETags of tickets, and the conditional headers that use them.

``GET`` of a ticket sends its ``ETag`` (the ticket's version, domain/versions.py); a ``GET``
with ``If-None-Match`` naming it is answered ``304 Not Modified`` without the messages being
read. ``PATCH`` and the admin reply accept ``If-Match``: when the ticket is no longer at a
version it names, nothing is changed and the answer is ``412`` with the ticket as it is now
and its ETag (checked under the ticket's row lock). ETags are strong; ``If-Match`` compares
strongly (a weak ``W/"..."`` tag never matches), ``If-None-Match`` weakly, as RFC 9110 says.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.datastructures import ResponseHeader
from litestar.openapi.spec import Example
from litestar.params import HeaderParameter
from litestar.status_codes import HTTP_304_NOT_MODIFIED, HTTP_412_PRECONDITION_FAILED

from api.schemas import ErrorBody, PreconditionFailedResponse, admin_ticket_out
from domain.versions import VersionCondition, VersionMismatch

MAX_TAGS = 32  # entity tags read from one header; more cannot be a real client's list

IfMatchHeader = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match",
        max_length=2048,
        description=(
            "Change the ticket only if it is still at this version: the `ETag` of your last "
            "`GET` (or `*`, any version). If it changed since, nothing is changed and the "
            "answer is 412 with the ticket as it is now. Without it the change applies "
            "whatever the ticket's version."
        ),
        examples=[Example(summary="the ETag of a GET", value='"3f2a9c04b1d7e6a85c10"')],
    ),
]
IfNoneMatchHeader = Annotated[
    str | None,
    HeaderParameter(
        name="If-None-Match",
        max_length=2048,
        description=(
            "The `ETag` of the copy you have: when the ticket is still at that version the "
            "answer is `304 Not Modified` with no body."
        ),
        examples=[Example(summary="the ETag of a GET", value='"3f2a9c04b1d7e6a85c10"')],
    ),
]

ETAG = ResponseHeader(
    name="ETag",
    documentation_only=True,
    value='"3f2a9c04b1d7e6a85c10"',  # documents the header's type (a string); never sent
    description="The ticket's version; changes with every change to the ticket "
    "(status, priority, assignee, SLA, a new message). Send it in If-Match or If-None-Match.",
    example='"3f2a9c04b1d7e6a85c10"',
)


def etag(version: str) -> str:
    return f'"{version}"'


def _condition(header: str | None, *, weak_matches: bool) -> VersionCondition | None:
    if header is None:
        return None
    if header.strip() == "*":
        return VersionCondition(any_version=True)
    versions: list[str] = []
    for raw in header.split(",")[:MAX_TAGS]:
        tag = raw.strip()
        if tag.startswith("W/"):
            if not weak_matches:
                continue  # strong comparison: a weak tag matches nothing
            tag = tag[2:]
        if len(tag) >= 2 and tag[0] == tag[-1] == '"':
            tag = tag[1:-1]
        if tag:
            versions.append(tag)
    return VersionCondition.of(versions)


def if_match(header: str | None) -> VersionCondition | None:
    """The precondition of an ``If-Match`` header (None without one)."""
    return _condition(header, weak_matches=False)


def if_none_match(header: str | None) -> VersionCondition | None:
    """The versions an ``If-None-Match`` header says the client has (None without one)."""
    return _condition(header, weak_matches=True)


def with_etag(content: Any, version: str) -> Response[Any]:
    return Response(content, headers={"ETag": etag(version)})


def not_modified(version: str) -> Response[Any]:
    return Response(None, status_code=HTTP_304_NOT_MODIFIED, headers={"ETag": etag(version)})


def on_version_mismatch(_: Request[Any, Any, Any], exc: VersionMismatch) -> Response[Any]:
    body = PreconditionFailedResponse(
        error=ErrorBody(code=exc.code, message=str(exc)),
        ticket=admin_ticket_out(exc.ticket, exc.messages),
    )
    return Response(
        msgspec.json.encode(body),
        status_code=HTTP_412_PRECONDITION_FAILED,
        media_type=MediaType.JSON,
        headers={"ETag": etag(exc.version)},
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {VersionMismatch: on_version_mismatch}
