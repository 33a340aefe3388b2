"""``Idempotency-Key`` on the POST endpoints: a retried write is answered, not repeated.

The first request with a key is carried out and its status and body are kept with the key
(domain/idempotency.py), in the write's own transaction. A repeat with the same key and the
same request (method, path and body, compared after parsing, so key order and spacing do not
matter) within 24 h gets that status and body again with ``Idempotent-Replayed: true`` and
writes nothing; the same key on another request is a 422; a repeat that arrives while the
first is still running waits for it (up to 5 s, then 409). A request without the header runs
exactly as before: no statement, no hashing. A request that fails (4xx, 5xx) keeps no key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.datastructures import ResponseHeader, State
from litestar.exceptions import ValidationException
from litestar.openapi.spec import Example
from litestar.params import HeaderParameter
from litestar.status_codes import HTTP_409_CONFLICT, HTTP_422_UNPROCESSABLE_ENTITY
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import commit
from api.errors import error_response
from domain.db import DirectConnection
from domain.idempotency import IdempotencyKeys, KeyInFlight, KeyReused
from domain.lifecycle import Caller

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX = 255
KEY_CHARACTERS = "A-Z a-z 0-9 - _ . : ~ + / ="
_VALID_KEY = re.compile(rf"[A-Za-z0-9_.:~+/=-]{{1,{KEY_MAX}}}")

IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name=HEADER,
        description=(
            "Makes the request safe to retry. The first request with a key is carried out; a "
            "repeat with the same key and the same body within 24 hours gets the first "
            "response again (status and body, with `Idempotent-Replayed: true`) and changes "
            "nothing; the same key with a different request is a 422; a repeat sent while the "
            "first is still running waits for it, or gets a 409 after 5 s. Keys are the "
            f"caller's own. 1-{KEY_MAX} characters from {KEY_CHARACTERS}; a random UUID is "
            "a good key. A request that fails keeps no key, so it can be retried with it."
        ),
        examples=[Example(summary="a UUID", value="5f0c6a7e-8d1b-4f5e-9a3c-2b7d9e4f1a60")],
    ),
]

REPLAYED = ResponseHeader(
    name=REPLAYED_HEADER,
    documentation_only=True,
    value="true",  # documents the header's type (a string); never sent
    description="`true` when this is the stored response of an earlier request with the "
    "same Idempotency-Key (nothing was written again).",
    example="true",
)

Database = AsyncSession | DirectConnection


def checked_key(raw: str | None) -> str | None:
    """The header's value, or a 400 that says what a key may be."""
    if raw is None or _VALID_KEY.fullmatch(raw):
        return raw
    reason = (
        f"must be 1-{KEY_MAX} characters"
        if not raw or len(raw) > KEY_MAX
        else f"may only contain {KEY_CHARACTERS}"
    )
    message = f"{reason} (a UUID is a good key)"
    raise ValidationException(
        detail=f"{HEADER} {message}", extra=[{"key": HEADER, "message": message}]
    )


def fingerprint(request: Request[Any, Any, Any], payload: msgspec.Struct | None) -> str:
    """What makes two requests "the same": method, path and the parsed body."""
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    if payload is not None:
        digest.update(msgspec.json.encode(payload))
    return digest.hexdigest()


async def write_once(
    request: Request[Any, Any, Any],
    db: Database,
    caller: Caller,
    state: State,
    *,
    key: str | None,
    status_code: int,
    payload: msgspec.Struct | None,
    write: Callable[[], Awaitable[msgspec.Struct]],
) -> Response[Any]:
    """Run ``write`` (a use case in ``db``'s transaction, returning the response body), commit
    and answer ``status_code`` with its result; with a key, at most once per key."""
    key = checked_key(key)
    if key is None:
        result = await write()
        await commit(db, state)
        return Response(result, status_code=status_code)
    if isinstance(db, DirectConnection):
        await db.begin()  # the claim, the write and the stored answer commit together
    keys: IdempotencyKeys = state.idempotency_keys
    stored = await keys.claim(
        db,
        user_id=caller.user_id,
        key=key,
        fingerprint=fingerprint(request, payload),
        request_path=f"{request.method} {request.url.path}"[:300],
    )
    if stored is not None:
        return Response(
            stored.body,
            status_code=stored.status_code,
            media_type=MediaType.JSON,
            headers={REPLAYED_HEADER: "true"},
        )
    body = msgspec.json.encode(await write())
    await keys.store(db, user_id=caller.user_id, key=key, status_code=status_code, body=body)
    await commit(db, state)
    return Response(body, status_code=status_code, media_type=MediaType.JSON)


def on_key_in_flight(_: Request[Any, Any, Any], exc: KeyInFlight) -> Response[Any]:
    return error_response(HTTP_409_CONFLICT, exc.code, str(exc), headers={"Retry-After": "1"})


def on_key_reused(_: Request[Any, Any, Any], exc: KeyReused) -> Response[Any]:
    return error_response(HTTP_422_UNPROCESSABLE_ENTITY, exc.code, str(exc))


EXCEPTION_HANDLERS: dict[Any, Any] = {KeyInFlight: on_key_in_flight, KeyReused: on_key_reused}
