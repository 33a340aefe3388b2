"""``api_request_guard``, the three checks of every API route as one guard: the same refusals, in
the same order (token, rate limit, JSON body), as the three guards it replaces, and a refused
token is not counted against anyone's limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from litestar import Litestar, Request, get, post
from litestar.datastructures import State
from litestar.params import JSONBody
from litestar.testing import AsyncTestClient

from api.auth import TokenVerifier
from api.errors import EXCEPTION_HANDLERS
from api.guards import api_request_guard, authenticated_caller
from api.rate_limit import UserRateLimiter
from domain.settings import load_settings
from tests.conftest import TEST_REDIS_URL, TokenFactory, auth

LIMIT = 3


@get("/who", guards=[api_request_guard], sync_to_thread=False)
def who(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {"user": authenticated_caller(request).user_id}


@post("/echo", guards=[api_request_guard], sync_to_thread=False)
def echo(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    return data


@pytest.fixture
async def client(public_pem: str, redis_client: redis.Redis) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = replace(load_settings({"APP_ENV": "production"}), jwt_public_key=public_pem)
    state = {
        "verifier": TokenVerifier(settings),
        "rate_limiter": UserRateLimiter(TEST_REDIS_URL, per_minute=LIMIT),
    }
    app = Litestar([who, echo], state=State(state), exception_handlers=EXCEPTION_HANDLERS)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


async def test_token_then_rate_limit_then_json_body(
    client: AsyncTestClient[Any], make_token: TokenFactory, redis_client: redis.Redis
) -> None:
    alice = auth(make_token("alice"))
    assert (await client.get("/who")).status_code == 401
    refused = await client.post("/echo", content=b"x=1", headers={"content-type": "text/plain"})
    assert refused.status_code == 401  # the token is checked before the body's type
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert redis_client.keys("helpdesk:rate:*") == []  # nobody was counted

    ok = await client.get("/who", headers=alice)
    assert (ok.status_code, ok.json()) == (200, {"user": "alice"})
    not_json = await client.post(
        "/echo", content=b"x=1", headers={**alice, "content-type": "text/plain"}
    )
    assert not_json.status_code == 415  # counted, then refused for its body
    assert (await client.post("/echo", json={"a": 1}, headers=alice)).json() == {"a": 1}
    over = await client.post(
        "/echo", content=b"x=1", headers={**alice, "content-type": "text/plain"}
    )
    assert over.status_code == 429  # the limit is checked before the body's type
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert (await client.get("/who", headers=auth(make_token("bob")))).status_code == 200
