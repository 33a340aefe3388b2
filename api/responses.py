"""OpenAPI descriptions of the error responses each kind of endpoint can return."""

from __future__ import annotations

from typing import Any

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from api.schemas import ErrorResponse, PreconditionFailedResponse


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


def _error_example(code: str, message: str, detail: dict[str, Any] | None = None) -> Example:
    value = {
        "success": False,
        "error": {"code": code, "message": message, "details": [detail] if detail else None},
    }
    return Example(summary=code, value=value)


def _with_examples(spec: ResponseSpec, description: str, *extra: Example) -> ResponseSpec:
    return ResponseSpec(
        data_container=ErrorResponse,
        description=f"{spec.description} {description}",
        generate_examples=False,
        examples=[*(spec.examples or []), *extra],
    )


KEY_INVALID = _error_example(
    "validation_error",
    "Idempotency-Key: may only contain A-Z a-z 0-9 - _ . : ~ + / = (a UUID is a good key)",
    {
        "message": "may only contain A-Z a-z 0-9 - _ . : ~ + / = (a UUID is a good key)",
        "field": "Idempotency-Key",
    },
)
KEY_IN_USE = _error_example(
    "idempotency_key_in_use",
    "a request with this Idempotency-Key is still being processed; send it again in a moment "
    "to get its response",
)
KEY_REUSED = _spec(
    "The Idempotency-Key was already used, within 24 hours, for a different request (another "
    "body or endpoint). Nothing was written.",
    "idempotency_key_reused",
    "this Idempotency-Key was already used for a different request "
    "(POST /v1/support/tickets); use a new key for a new request",
)


def idempotent(responses: dict[int, ResponseSpec]) -> dict[int, ResponseSpec]:
    """The answers an ``Idempotency-Key`` adds to a POST's."""
    conflict = responses.get(409)
    in_use = "A request with the same Idempotency-Key is still being processed (Retry-After)."
    return {
        **responses,
        400: _with_examples(responses[400], "Or a malformed Idempotency-Key.", KEY_INVALID),
        409: _with_examples(conflict, in_use, KEY_IN_USE)
        if conflict
        else ResponseSpec(
            data_container=ErrorResponse,
            description=in_use,
            generate_examples=False,
            examples=[KEY_IN_USE],
        ),
        422: KEY_REUSED,
    }


NOT_MODIFIED = ResponseSpec(
    data_container=None,
    description="The ticket is still at the version named in If-None-Match; no body.",
    generate_examples=False,
)
PRECONDITION_FAILED = ResponseSpec(
    data_container=PreconditionFailedResponse,
    description=(
        "The ticket changed since the version named in If-Match; nothing was changed. The "
        "body has the ticket as it is now, the ETag header its current version."
    ),
    generate_examples=False,
    examples=[
        Example(
            summary="precondition_failed",
            value={
                "success": False,
                "error": {
                    "code": "precondition_failed",
                    "message": "the ticket changed since the version named in If-Match; "
                    "nothing was changed. Its current state and ETag are in this response: "
                    "review them and send the change again with the new ETag",
                    "details": None,
                },
                "ticket": {
                    "id": "01JN2XG6H7J8K9M0N1P2Q3R4S5",
                    "subject": "Payment not received",
                    "status": "in_progress",
                    "priority": "high",
                    "category": "billing",
                    "assignee_id": "agent-2",
                    "created_at": "2026-03-15T10:00:00Z",
                    "updated_at": "2026-03-15T10:05:00Z",
                    "user_id": "user-42",
                    "sla_due_at": None,
                    "sla_breached": False,
                    "sla_breached_at": None,
                    "messages": [
                        {
                            "id": "01JN2XH7J8K9M0N1P2Q3R4S5T6",
                            "body": "My payout is missing.",
                            "is_admin": False,
                            "created_at": "2026-03-15T10:00:00Z",
                        }
                    ],
                },
            },
        )
    ],
)


def conditional_read(responses: dict[int, ResponseSpec]) -> dict[int, ResponseSpec]:
    """A GET that answers If-None-Match (a header too long for one is a 400)."""
    return {**responses, 304: NOT_MODIFIED, 400: BAD_REQUEST}


def conditional_write(responses: dict[int, ResponseSpec]) -> dict[int, ResponseSpec]:
    """A change that honours If-Match."""
    return {**responses, 412: PRECONDITION_FAILED}
