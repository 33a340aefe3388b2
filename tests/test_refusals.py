"""A refused request releases everything it took, whatever refuses it and at whatever point.

Each kind of refusal is sent 2,000 times, 16 at a time; afterwards every connection-gate slot
and every pool connection is free, another user is answered, and the service logged one access
line per request and no error. A refusal by a guard once leaked a gate slot per request (the
session generator was never closed), which wedged the whole API after a few hundred 429s.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import redis
from litestar import Litestar
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.settings import Settings
from domain.tickets import TicketService
from tests.conftest import ADMIN_URL, MISSING_ID, USER_URL, RecordingPublisher, TokenFactory, auth

REFUSALS = 2_000
CONCURRENCY = 16
RATE_LIMIT = 5
USED_KEY = "refusals-used-key"


@dataclass(frozen=True)
class Refusal:
    name: str
    status: int
    request: Callable[[AsyncTestClient[Any], dict[str, Any]], Any]


async def _post(client: AsyncTestClient[Any], url: str, token: str, body: bytes, ctype: str) -> Any:
    headers = {**auth(token), "content-type": ctype}
    return await client.post(url, content=body, headers=headers)


CASES = [
    Refusal("401 bad token", 401, lambda c, k: c.get(USER_URL, headers=auth("not-a-token"))),
    Refusal("403 user on admin route", 403, lambda c, k: c.get(ADMIN_URL, headers=k["user"])),
    Refusal(
        "404 missing ticket", 404, lambda c, k: c.get(f"{USER_URL}/{MISSING_ID}", headers=k["user"])
    ),
    Refusal(
        "409 reply to a closed ticket",
        409,
        lambda c, k: c.post(
            f"{USER_URL}/{k['closed']}/messages", json={"body": "hi"}, headers=k["user"]
        ),
    ),
    Refusal(
        "413 body too large",
        413,
        lambda c, k: c.post(
            USER_URL, json={"subject": "s", "body": "x" * 70_000}, headers=k["user"]
        ),
    ),
    Refusal(
        "415 not JSON",
        415,
        lambda c, k: _post(c, USER_URL, k["token"], b"subject=s&body=b", "text/plain"),
    ),
    Refusal(
        "400 malformed JSON",
        400,
        lambda c, k: _post(c, USER_URL, k["token"], b'{"subject": ', "application/json"),
    ),
    Refusal(
        "400 invalid field (checked after the session is taken)",
        400,
        lambda c, k: c.post(USER_URL, json={"subject": " ", "body": "b"}, headers=k["user"]),
    ),
    Refusal(
        "400 bad query parameter",
        400,
        lambda c, k: c.get(USER_URL, params={"page": "0"}, headers=k["user"]),
    ),
    Refusal(
        "400 malformed Idempotency-Key",
        400,
        lambda c, k: c.post(
            USER_URL,
            json={"subject": "s", "body": "b"},
            headers={**k["user"], "Idempotency-Key": "not a key!"},
        ),
    ),
    Refusal(
        "422 Idempotency-Key reused with another body",
        422,
        lambda c, k: c.post(
            USER_URL,
            json={"subject": "another", "body": "b"},
            headers={**k["user"], "Idempotency-Key": USED_KEY},
        ),
    ),
    Refusal(
        "412 stale If-Match (under the ticket's row lock)",
        412,
        lambda c, k: c.patch(
            f"{ADMIN_URL}/{k['open']}",
            json={"priority": "high"},
            headers={**k["admin"], "If-Match": '"stale"'},
        ),
    ),
    Refusal(
        "400 malformed ticket_id filter (never reaches the database)",
        400,
        lambda c, k: c.get(
            "/v1/admin/support/deliveries", params={"ticket_id": "\x00"}, headers=k["admin"]
        ),
    ),
    Refusal("429 over the rate limit", 429, lambda c, k: c.get(USER_URL, headers=k["flooder"])),
    Refusal("500 handler raises", 500, lambda c, k: c.get(USER_URL, headers=k["broken"])),
]


class BrokenForOneUser(TicketService):
    """The real service, except that listing raises for one user (a bug in a handler's path)."""

    async def list_for_user(self, session: Any, user_id: str, **kwargs: Any) -> Any:
        if user_id == "broken":
            raise RuntimeError("a bug")
        return await super().list_for_user(session, user_id, **kwargs)


def free_resources(app: Litestar) -> tuple[int, int]:
    """(gate slots free, pool connections checked out)."""
    gate = app.state.connection_gate
    return gate.free, app.state.engine.pool.checkedout()


@pytest.fixture
async def app(
    settings: Settings, publisher: RecordingPublisher, redis_client: redis.Redis
) -> AsyncIterator[Litestar]:
    # Rate limit on, but only the flooder gets near it.
    app = create_app(replace(settings, rate_limit_per_minute=REFUSALS * 4), publisher=publisher)
    app.state.service = BrokenForOneUser(app.state.service.policy)
    yield app


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    def read() -> list[dict[str, Any]]:
        lines = capsys.readouterr().err.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    yield read


async def _flood(send: Callable[[], Any], count: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with gate:
            statuses[(await send()).status_code] += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return statuses


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_refused_requests_release_everything_and_log_no_error(
    case: Refusal,
    app: Litestar,
    make_token: TokenFactory,
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    user = make_token("alice")
    async with AsyncTestClient(app=app) as client:
        closed = await client.post(USER_URL, json={"subject": "s", "body": "b"}, headers=auth(user))
        closed_id = closed.json()["id"]
        opened = await client.post(
            USER_URL,
            json={"subject": "s", "body": "b"},
            headers={**auth(user), "Idempotency-Key": USED_KEY},
        )
        assert opened.status_code == 201
        assert (
            await client.post(f"{USER_URL}/{closed_id}/close", headers=auth(user))
        ).status_code == 200
        if case.status == 429:
            app.state.rate_limiter.item = type(app.state.rate_limiter.item)(RATE_LIMIT)
        slots = app.state.connection_gate.slots
        assert free_resources(app) == (slots, 0)
        log_lines()
        kinds = {
            "user": auth(user),
            "token": user,
            "closed": closed_id,
            "open": opened.json()["id"],
            "admin": auth(make_token("agent-1", admin=True)),
            "flooder": auth(make_token("flooder")),
            "broken": auth(make_token("broken")),
        }

        statuses = await _flood(lambda: case.request(client, kinds), REFUSALS)

        expected = REFUSALS - RATE_LIMIT if case.status == 429 else REFUSALS
        assert statuses[case.status] == expected, statuses
        assert free_resources(app) == (slots, 0)
        bystander = auth(make_token("bystander"))
        answered = await client.get(USER_URL, headers=bystander)
        assert answered.status_code == 200
        assert (await client.get("/readyz")).status_code == 200

    lines = log_lines()
    access = [line for line in lines if line.get("event") == "request"]
    assert len(access) == REFUSALS + 2  # the flood, the bystander, the probe: one line each
    if case.status < 500:
        errors = [line for line in lines if line["level"] in ("error", "critical")]
        assert errors == [], errors[:3]
        assert not [line for line in lines if "exception" in line], "a traceback was logged"
        level = "warning" if case.status == 429 else "info"
        refused = [line for line in access if line["status"] == case.status]
        assert {line["level"] for line in refused} == {level}
