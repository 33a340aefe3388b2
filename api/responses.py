"""OpenAPI descriptions of the error responses each kind of endpoint can return."""

from __future__ import annotations

from typing import Any

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from api.schemas import ErrorResponse


def _spec(
    description: str, code: str, message: str, detail: dict[str, Any] | None = None
) -> ResponseSpec:
    example = {
        "success": False,
        "error": {"code": code, "message": message, "details": [detail] if detail else None},
    }
    return ResponseSpec(
        data_container=ErrorResponse,
        description=description,
        # Generated examples are random strings (and say "success": true); show a real one.
        generate_examples=False,
        examples=[Example(summary=code, value=example)],
    )


BAD_REQUEST = _spec(
    "Malformed JSON, a wrong type, an unknown enum value or an out-of-range value.",
    "validation_error",
    "subject: `subject` must not be blank",
    {"message": "`subject` must not be blank", "field": "subject"},
)
UNAUTHORIZED = _spec(
    "Missing, malformed, expired or untrusted bearer token.",
    "unauthorized",
    "a valid bearer token is required",
)
FORBIDDEN = _spec(
    "The caller is not an admin.",
    "forbidden",
    "this endpoint is for the support team (admin role)",
)
NOT_FOUND = _spec("No such ticket, or it belongs to another user.", "not_found", "ticket not found")
CONFLICT = _spec(
    "The ticket is closed, or the status change is not allowed from its current status.",
    "ticket_closed",
    "ticket is closed: cannot change status from 'closed' to 'open'",
)
TOO_LARGE = _spec(
    "The request body is over the size limit.", "payload_too_large", "Request Entity Too Large"
)
NOT_JSON = _spec(
    "The request has a body whose Content-Type is not JSON.",
    "unsupported_media_type",
    "request bodies must be JSON: send Content-Type: application/json",
)
RATE_LIMITED = _spec(
    "Too many requests; retry after the number of seconds in Retry-After.",
    "rate_limited",
    "too many requests",
)
UNAVAILABLE = _spec(
    "The database is unavailable; retry after the seconds in Retry-After.",
    "service_unavailable",
    "the database is unavailable; retry shortly",
)

_COMMON = {401: UNAUTHORIZED, 429: RATE_LIMITED, 503: UNAVAILABLE}

READ = {**_COMMON, 400: BAD_REQUEST}
READ_ONE = {**_COMMON, 404: NOT_FOUND}
WRITE = {**_COMMON, 400: BAD_REQUEST, 413: TOO_LARGE, 415: NOT_JSON}
WRITE_ONE = {**WRITE, 404: NOT_FOUND, 409: CONFLICT}


def admin(responses: dict[int, ResponseSpec]) -> dict[int, ResponseSpec]:
    return {**responses, 403: FORBIDDEN}
