"""Idempotency keys: a write sent again with the same key gets the first answer again, and is
never carried out twice.

A key is claimed in the transaction of the write it guards, as that transaction's first
statement; the response is stored in the same transaction just before it commits. So a key
exists exactly when its write does: a crash, an error or a refusal (4xx) rolls both back, and
the request may simply be sent again. A second request with a key that is still being
processed waits on the first one's row (PostgreSQL's unique index makes it) and then replays
what the first stored; if the first takes longer than ``lock_timeout_s`` it is told so
(:class:`KeyInFlight`) rather than waiting on.

Keys are per caller (``user_id``): one user cannot see, replay or block another's. A key is
kept ``ttl_s`` (24 h); after that it may be used for a new request. Each new key deletes a few
expired ones, so the table holds about a day of keys with no sweep of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from domain.db import Executor
from domain.errors import Conflict, DomainError

KEY_TTL_S = 24 * 3600
LOCK_TIMEOUT_S = 5.0
PURGE_PER_CLAIM = 10  # expired keys deleted by each new key: more than one, so it keeps up


class KeyInFlight(Conflict):
    """Another request with this key is still being processed."""

    code = "idempotency_key_in_use"

    def __init__(self) -> None:
        super().__init__(
            "a request with this Idempotency-Key is still being processed; "
            "send it again in a moment to get its response"
        )


class KeyReused(DomainError):
    """The key was used for a different request (another body, path or method)."""

    code = "idempotency_key_reused"

    def __init__(self, first_request: str) -> None:
        self.first_request = first_request
        super().__init__(
            f"this Idempotency-Key was already used for a different request ({first_request}); "
            "use a new key for a new request"
        )


@dataclass(frozen=True)
class StoredResponse:
    """What the first request with a key answered."""

    status_code: int
    body: bytes


# Statements are built once (the direct connection compiles each on first use, domain/db.py).
#
# The claim: delete a few expired keys (never the caller's own: one statement must not touch a
# row twice), then insert the key. A conflicting row not yet committed makes the INSERT wait for
# its transaction; set_config bounds that wait (lock_timeout, for the rest of this transaction).
_CLAIM = text(
    """
    WITH purged AS (
        DELETE FROM idempotency_keys
        WHERE (user_id, key) IN (
            SELECT user_id, key FROM idempotency_keys
            WHERE created_at < now() - make_interval(secs => :ttl_s)
              AND NOT (user_id = :user_id AND key = :key)
            ORDER BY created_at
            LIMIT :purge_limit
            FOR UPDATE SKIP LOCKED
        )
    )
    INSERT INTO idempotency_keys (user_id, key, fingerprint, request_path, created_at)
    SELECT :user_id, :key, :fingerprint, :request_path, now()
    FROM (SELECT set_config('lock_timeout', :lock_timeout, true) AS setting) AS wait_at_most
    WHERE wait_at_most.setting IS NOT NULL
    ON CONFLICT (user_id, key) DO NOTHING
    RETURNING 1
    """
)
_FIND = text(
    """
    SELECT fingerprint, request_path, status_code, response_body,
           created_at < now() - make_interval(secs => :ttl_s) AS expired
    FROM idempotency_keys WHERE user_id = :user_id AND key = :key
    """
)
_FORGET_EXPIRED = text(
    """
    DELETE FROM idempotency_keys
    WHERE user_id = :user_id AND key = :key
      AND created_at < now() - make_interval(secs => :ttl_s)
    """
)
_STORE = text(
    """
    UPDATE idempotency_keys SET status_code = :status_code, response_body = :response_body
    WHERE user_id = :user_id AND key = :key
    """
)


def _lock_timeout_error(exc: Exception) -> bool:
    cause = exc.orig if isinstance(exc, OperationalError) else exc
    return isinstance(cause, psycopg.errors.LockNotAvailable)


class IdempotencyKeys:
    """Claims keys and stores their responses, in the caller's transaction. ``ttl_s`` and
    ``lock_timeout_s`` are settable for tests."""

    def __init__(self, *, ttl_s: int = KEY_TTL_S, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.ttl_s = ttl_s
        self.lock_timeout_s = lock_timeout_s

    async def claim(
        self, db: Executor, *, user_id: str, key: str, fingerprint: str, request_path: str
    ) -> StoredResponse | None:
        """Claim ``key`` for this request, as the transaction's first statement. Returns None
        when the request is the key's first (carry it out, then :meth:`store`), or the response
        stored by the first request with the same fingerprint (send it again, write nothing).

        Raises :class:`KeyReused` for another fingerprint and :class:`KeyInFlight` when the
        first request is still running after ``lock_timeout_s``.
        """
        names = {"user_id": user_id, "key": key, "ttl_s": self.ttl_s}
        for _ in range(2):  # a second round only after forgetting an expired key
            try:
                claimed = await db.execute(
                    _CLAIM,
                    {
                        **names,
                        "fingerprint": fingerprint,
                        "request_path": request_path,
                        "purge_limit": PURGE_PER_CLAIM,
                        "lock_timeout": f"{int(self.lock_timeout_s * 1000)}ms",
                    },
                )
            except (OperationalError, psycopg.OperationalError) as exc:
                if _lock_timeout_error(exc):
                    raise KeyInFlight() from None
                raise
            if claimed.all():
                return None
            row = (await db.execute(_FIND, names)).all()
            if not row:
                continue  # deleted since (it had expired): claim it again
            first = row[0]
            if first.expired:
                await db.execute(_FORGET_EXPIRED, names)
                continue
            if first.fingerprint != fingerprint:
                raise KeyReused(first.request_path)
            if first.status_code is None:  # cannot be committed so; never replay a blank
                raise KeyInFlight()
            return StoredResponse(first.status_code, bytes(first.response_body))
        raise KeyInFlight()

    async def store(
        self, db: Executor, *, user_id: str, key: str, status_code: int, body: bytes
    ) -> None:
        """Keep the response of the claimed key's request; call just before the commit."""
        await db.execute(
            _STORE,
            {"user_id": user_id, "key": key, "status_code": status_code, "response_body": body},
        )
