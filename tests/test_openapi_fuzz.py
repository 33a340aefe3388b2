"""Property-based run of the whole API against its own OpenAPI document (schemathesis), with
valid tokens, against a real server process: no 5xx, and every response is one the document
describes (status code, content type, body schema)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import TEST_REDIS_URL, TokenFactory, auth
from tests.processes import ApiServer
from tests.sinks import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_server(database_url: str, public_pem: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "JWT_PUBLIC_KEY": public_pem,
        "PORT": str(port),
        "RATE_LIMIT_PER_MINUTE": "0",
        "LOG_LEVEL": "WARNING",
    }
    server = ApiServer(env, workers=1).start()
    yield server.base_url
    server.stop()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE tickets, messages, ticket_events, deliveries, staff CASCADE")


@pytest.fixture(scope="module")
def api_schema(live_server: str) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_server}/schema/openapi.json")


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_every_operation_answers_as_documented(
    api_schema: schemathesis.schemas.BaseSchema, make_token: TokenFactory
) -> None:
    headers = auth(make_token("fuzzer", admin=True, email="fuzz@example.com"))
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9  # every endpoint of the contract plus the health probes

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def answers_as_documented(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        answers_as_documented()
