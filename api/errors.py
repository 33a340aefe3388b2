"""One JSON shape for every error, and the mapping from exceptions to HTTP statuses."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import psycopg
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.auth import InvalidToken
from api.metrics import AUTH_FAILURES, record_unrouted
from api.request_log import note_refusal_reason
from api.schemas import ErrorBody, ErrorDetail, ErrorResponse
from domain.errors import Conflict, NotFound

log = structlog.get_logger(__name__)
_JSON_PATH = re.compile(r" - at `\$\.?([^`]*)`")
_FIELD = re.compile(r"^`(\w+)`")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]*)`")

# Litestar's detail for a body that stopped arriving (litestar.connection.Request.stream).
BODY_ENDED_EARLY = "client disconnected prematurely"
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "service_unavailable",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _validation_details(exc: ValidationException) -> list[ErrorDetail]:
    details: list[ErrorDetail] = []
    extra = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else []
    for item in extra:
        if isinstance(item, dict):
            message = str(item.get("message", exc.detail))
            key = item.get("key")
            if key == "data" and message == "'data'":
                # No body at all (or JSON null): Litestar reports the missing argument's name.
                details.append(ErrorDetail(message="a JSON object body is required"))
                continue
            # Body errors name the JSON path ("$.subject") or, from our own checks, the field
            # in backticks; report the field the client sent rather than Litestar's "data",
            # which is no name the client knows (an error about the whole body has no field).
            path = _JSON_PATH.search(message) or (
                (_FIELD.search(message) or _NAMED_FIELD.search(message)) if key == "data" else None
            )
            field = path.group(1) if path else (str(key) if key and key != "data" else None)
            details.append(ErrorDetail(message=_JSON_PATH.sub("", message), field=field))
        else:
            details.append(ErrorDetail(message=str(item)))
    return details


def on_validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    details = _validation_details(exc)
    if len(details) == 1:
        only = details[0]
        message = f"{only.field}: {only.message}" if only.field else only.message
    else:
        message = "the request is invalid"
    return error_response(400, "validation_error", message, details or None)


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.detail == BODY_ENDED_EARLY:
        # Litestar calls a body that stopped arriving a server error; it is the client's doing
        # (it hung up, or its chunked body was not chunked): a 400 on the access line, no error.
        note_refusal_reason(request.scope, "request body ended early")
        return error_response(
            HTTP_400_BAD_REQUEST, "bad_request", "malformed request: the body ended early"
        )
    if "path_template" not in request.scope:
        record_unrouted(request.scope.get("method", ""), exc.status_code)
    code = _CODES.get(exc.status_code, "error")
    headers = dict(exc.headers or {})
    if exc.status_code == HTTP_401_UNAUTHORIZED:
        headers.setdefault("WWW-Authenticate", "Bearer")
    message = exc.detail
    if exc.status_code == HTTP_400_BAD_REQUEST:
        message = f"malformed request: {exc.detail}"
    if exc.status_code >= HTTP_500_INTERNAL_SERVER_ERROR:
        log.error("http.server_error", status=exc.status_code, error=str(exc))
        message = "internal error"
    return error_response(exc.status_code, code, message, headers=headers or None)


def on_invalid_token(request: Request[Any, Any, Any], exc: InvalidToken) -> Response[Any]:
    # The reason goes on the access line; the client learns only that the token was refused.
    note_refusal_reason(request.scope, f"token: {exc}")
    AUTH_FAILURES.labels(exc.reason).inc()
    return error_response(
        HTTP_401_UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def on_not_found(_: Request[Any, Any, Any], exc: NotFound) -> Response[Any]:
    return error_response(HTTP_404_NOT_FOUND, "not_found", str(exc))


def on_conflict(_: Request[Any, Any, Any], exc: Conflict) -> Response[Any]:
    return error_response(HTTP_409_CONFLICT, exc.code, str(exc))


def on_database_unavailable(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if (
        isinstance(exc, DBAPIError)
        and not isinstance(exc, OperationalError)
        and not exc.connection_invalidated
    ):
        return on_unexpected(_, exc)
    log.warning("db.unavailable", error=type(exc).__name__)
    return error_response(
        HTTP_503_SERVICE_UNAVAILABLE,
        "service_unavailable",
        "the database is unavailable; retry shortly",
        headers={"Retry-After": "5"},
    )


def on_recursion_error(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    # The JSON decoder gives up on absurdly nested input ("[[[[..."): the client's fault, not ours.
    if "deserializing" in str(exc):
        return error_response(
            HTTP_400_BAD_REQUEST, "bad_request", "malformed request: JSON is nested too deeply"
        )
    return on_unexpected(request, exc)


def on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("http.unhandled_error", error_type=type(exc).__name__)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "internal error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ValidationException: on_validation_error,
    HTTPException: on_http_error,
    InvalidToken: on_invalid_token,
    NotFound: on_not_found,
    Conflict: on_conflict,
    DBAPIError: on_database_unavailable,
    # The hot paths run their statements through psycopg itself (domain/db.py).
    psycopg.OperationalError: on_database_unavailable,
    PoolTimeout: on_database_unavailable,
    RecursionError: on_recursion_error,
    Exception: on_unexpected,
}
