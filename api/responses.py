"""OpenAPI descriptions of the error responses each kind of endpoint can return."""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

from api.schemas import ErrorResponse


def _spec(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorResponse, description=description)


BAD_REQUEST = _spec("Malformed JSON, a wrong type, an unknown enum value or an out-of-range value.")
UNAUTHORIZED = _spec("Missing, malformed, expired or untrusted bearer token.")
FORBIDDEN = _spec("The caller is not an admin.")
NOT_FOUND = _spec("No such ticket, or it belongs to another user.")
CONFLICT = _spec(
    "The ticket is closed, or the status change is not allowed from its current status."
)
TOO_LARGE = _spec("The request body is over the size limit.")
RATE_LIMITED = _spec("Too many requests; retry after the number of seconds in Retry-After.")
UNAVAILABLE = _spec("The database is unavailable; retry after the seconds in Retry-After.")

_COMMON = {401: UNAUTHORIZED, 429: RATE_LIMITED, 503: UNAVAILABLE}

READ = {**_COMMON, 400: BAD_REQUEST}
READ_ONE = {**_COMMON, 404: NOT_FOUND}
WRITE = {**_COMMON, 400: BAD_REQUEST, 413: TOO_LARGE}
WRITE_ONE = {**WRITE, 404: NOT_FOUND, 409: CONFLICT}


def admin(responses: dict[int, ResponseSpec]) -> dict[int, ResponseSpec]:
    return {**responses, 403: FORBIDDEN}
