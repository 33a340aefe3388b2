"""Every bad input gets a 4xx in one JSON shape, and never a 500; plus the probes and the spec."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.deps import NoPublisher
from domain.settings import Settings
from tests.conftest import ADMIN_URL, MISSING_ID, USER_URL, TokenFactory, auth, create_ticket

JSON = {"content-type": "application/json"}


def assert_error(
    response: Any, status: int, code: str | None = None, *, case: str = ""
) -> dict[str, Any]:
    """The one error shape: {"success": false, "error": {"code", "message", "details"}}."""
    assert response.status_code == status, (case, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"success", "error"}
    assert body["success"] is False
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"].strip()
    if error["details"] is not None:
        assert isinstance(error["details"], list) and error["details"]
        for detail in error["details"]:
            assert set(detail) == {"message", "field"}
            assert isinstance(detail["message"], str) and detail["message"]
    if code is not None:
        assert error["code"] == code, (case, error)
    return error


def error_fields(error: dict[str, Any]) -> set[str | None]:
    return {detail["field"] for detail in error["details"] or []}


# This file's own callers (override conftest's ``user`` and ``admin``, alice and agent-7).
@pytest.fixture
def user(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("user-errors"))


@pytest.fixture
def admin(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("admin-errors", admin=True))


@pytest.fixture
async def ticket_id(client: AsyncTestClient[Any], user: dict[str, str]) -> str:
    value: str = (await create_ticket(client, user))["id"]
    return value


# -- request bodies -------------------------------------------------------------------------------

GOOD = {"subject": "Payment not received", "body": "Where is my money?"}


def good(**changes: Any) -> bytes:
    """The good create body with some fields changed (a value of ``...`` removes the field)."""
    payload = {**GOOD, **changes}
    return json.dumps({k: v for k, v in payload.items() if v is not ...}).encode()


V = "validation_error"
# (case id, raw JSON body, error code, the field the error must name or None)
CREATE_CASES: list[tuple[str, bytes, str, str | None]] = [
    ("malformed-json", b'{"subject": "x", ', "bad_request", None),
    ("not-json", b"subject=x&body=y", "bad_request", None),
    ("trailing-garbage", b'{"subject": "s", "body": "b"} x', "bad_request", None),
    ("invalid-utf8", b'{"subject": "\xff", "body": "b"}', "bad_request", None),
    ("lone-surrogate", b'{"subject": "\\ud800", "body": "b"}', "bad_request", None),
    ("deeply-nested", b"[" * 5000 + b"]" * 5000, "bad_request", None),
    ("number-out-of-range", b"1e999999", "bad_request", None),
    ("empty-body", b"", V, None),
    ("json-null", b"null", V, None),
    ("json-array", b"[]", V, None),
    ("json-string", b'"hello"', V, None),
    ("subject-int", good(subject=123), V, "subject"),
    ("body-list", good(body=["x"]), V, "body"),
    ("subject-null", good(subject=None), V, "subject"),
    ("priority-int", good(priority=1), V, "priority"),
    ("priority-null", good(priority=None), V, "priority"),
    ("category-bool", good(category=True), V, "category"),
    ("priority-unknown", good(priority="asap"), V, "priority"),
    ("priority-case", good(priority="HIGH"), V, "priority"),
    ("category-unknown", good(category="sales"), V, "category"),
    ("unknown-field", good(urgent=True), V, "urgent"),
    ("status-not-settable", good(status="closed"), V, "status"),
    ("missing-subject", good(subject=...), V, "subject"),
    ("missing-body", good(body=...), V, "body"),
    ("subject-empty", good(subject=""), V, "subject"),
    ("subject-spaces", good(subject="   "), V, "subject"),
    ("body-whitespace", good(body="\n\t \r\n"), V, "body"),
    ("subject-201", good(subject="s" * 201), V, "subject"),
    ("body-20001", good(body="b" * 20_001), V, "body"),
    ("body-nul", good(body="a\x00b"), V, "body"),
    ("subject-nul", good(subject="\x00"), V, "subject"),
]


async def test_create_rejects_bad_input(
    client: AsyncTestClient[Any], user: dict[str, str], db: psycopg.Connection[Any]
) -> None:
    for case, raw, code, field in CREATE_CASES:
        response = await client.post(USER_URL, content=raw, headers={**user, **JSON})
        error = assert_error(response, 400, code, case=case)
        if field is not None:
            assert error_fields(error) == {field}, (case, error)
            assert field in error["message"], (case, error)
    assert db.execute("SELECT count(*) FROM tickets").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM ticket_events").fetchone() == (0,)


async def test_create_accepts_the_boundaries(
    client: AsyncTestClient[Any], user: dict[str, str]
) -> None:
    response = await client.post(
        USER_URL, json={"subject": "s" * 200, "body": "é" * 20_000}, headers=user
    )
    assert response.status_code == 201, response.text
    ticket = response.json()
    assert ticket["subject"] == "s" * 200
    assert ticket["messages"][0]["body"] == "é" * 20_000


MESSAGE_CASES: list[tuple[str, bytes, str | None]] = [
    ("empty-object", b"{}", "body"),
    ("body-int", b'{"body": 5}', "body"),
    ("body-blank", b'{"body": "  "}', "body"),
    ("body-nul", b'{"body": "x\\u0000"}', "body"),
    ("body-20001", json.dumps({"body": "b" * 20_001}).encode(), "body"),
    ("is-admin-forged", b'{"body": "hi", "is_admin": true}', "is_admin"),
    ("malformed", b'{"body": ', None),
    ("no-body", b"", None),
]


async def test_reply_rejects_bad_input(
    client: AsyncTestClient[Any],
    user: dict[str, str],
    admin: dict[str, str],
    ticket_id: str,
    db: psycopg.Connection[Any],
) -> None:
    for url, headers in [(USER_URL, user), (ADMIN_URL, admin)]:
        for case, raw, field in MESSAGE_CASES:
            response = await client.post(
                f"{url}/{ticket_id}/messages", content=raw, headers={**headers, **JSON}
            )
            error = assert_error(response, 400, case=f"{url} {case}")
            if field is not None:
                assert error_fields(error) == {field}, (url, case, error)
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM ticket_events").fetchone() == (1,)


PATCH_CASES: list[tuple[str, Any, str | None]] = [
    ("status-unknown", {"status": "done"}, "status"),
    ("status-int", {"status": 2}, "status"),
    ("priority-unknown", {"priority": "critical"}, "priority"),
    ("assignee-empty", {"assignee_id": ""}, "assignee_id"),
    ("assignee-blank", {"assignee_id": "   "}, "assignee_id"),
    ("assignee-int", {"assignee_id": 7}, "assignee_id"),
    ("assignee-too-long", {"assignee_id": "a" * 256}, "assignee_id"),
    ("assignee-nul", {"assignee_id": "agent\x00"}, "assignee_id"),
    ("unknown-field", {"subject": "renamed"}, "subject"),
    ("array", [{"status": "open"}], None),
]


async def test_patch_rejects_bad_input(
    client: AsyncTestClient[Any],
    admin: dict[str, str],
    ticket_id: str,
    db: psycopg.Connection[Any],
) -> None:
    for case, payload, field in PATCH_CASES:
        response = await client.patch(f"{ADMIN_URL}/{ticket_id}", json=payload, headers=admin)
        error = assert_error(response, 400, "validation_error", case=case)
        if field is not None:
            assert error_fields(error) == {field}, (case, error)
    row = db.execute("SELECT status, priority, assignee_id, subject FROM tickets").fetchone()
    assert row == ("open", "normal", None, "s")
    assert db.execute("SELECT count(*) FROM ticket_events").fetchone() == (1,)


# -- query parameters -----------------------------------------------------------------------------

QUERY_CASES = [
    ("page=0", "page"),
    ("page=-1", "page"),
    ("page=abc", "page"),
    ("page=1.5", "page"),
    ("page=", "page"),
    ("page=%00", "page"),
    ("page=99999999999999999999999", "page"),
    ("per_page=0", "per_page"),
    ("per_page=-20", "per_page"),
    ("per_page=ten", "per_page"),
    ("per_page=2.5", "per_page"),
    ("per_page=1000001", "per_page"),
]
ADMIN_FILTER_CASES = [("status=pending", "status"), ("status=OPEN", "status")]
ADMIN_FILTER_CASES += [("priority=meh", "priority"), ("breached=maybe", "breached")]


async def test_list_rejects_bad_paging_and_filters(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    cases = [(USER_URL, user, q, f) for q, f in QUERY_CASES]
    cases += [(ADMIN_URL, admin, q, f) for q, f in [*QUERY_CASES, *ADMIN_FILTER_CASES]]
    for url, headers, query, field in cases:
        response = await client.get(f"{url}?{query}", headers=headers)
        error = assert_error(response, 400, "validation_error", case=f"{url}?{query}")
        assert error_fields(error) == {field}, (url, query, error)


async def test_per_page_above_the_maximum_is_capped(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    for url, headers in [(USER_URL, user), (ADMIN_URL, admin)]:
        for per_page in (101, 1000, 1_000_000):
            response = await client.get(f"{url}?per_page={per_page}", headers=headers)
            assert response.status_code == 200, response.text
            assert response.json()["pagination"]["per_page"] == 100, (url, per_page)


# -- body size ------------------------------------------------------------------------------------


async def test_body_over_the_size_limit_is_413(
    client: AsyncTestClient[Any],
    settings: Settings,
    user: dict[str, str],
    admin: dict[str, str],
    ticket_id: str,
    db: psycopg.Connection[Any],
) -> None:
    assert settings.max_body_bytes == 64 * 1024
    huge = json.dumps({"subject": "s", "body": "x" * settings.max_body_bytes}).encode()
    assert len(huge) > settings.max_body_bytes
    routes = [
        ("POST", USER_URL, user),
        ("POST", f"{USER_URL}/{ticket_id}/messages", user),
        ("POST", f"{ADMIN_URL}/{ticket_id}/messages", admin),
        ("PATCH", f"{ADMIN_URL}/{ticket_id}", admin),
    ]
    for method, url, headers in routes:
        response = await client.request(method, url, content=huge, headers={**headers, **JSON})
        assert_error(response, 413, "payload_too_large", case=f"{method} {url}")
    assert db.execute("SELECT count(*) FROM tickets").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)


# -- ids in the path ------------------------------------------------------------------------------

BAD_IDS = [
    "%00",
    "01JN2XG6H7J8K9M0N1P2Q3R4S%00",  # 26 characters, the last a NUL
    "01JN2XG6H7J8K9M0N1P2Q3R4S5%00",
    "not-a-ulid",
    "01jn2xg6h7j8k9m0n1p2q3r4s",
    "Z" * 26,  # base32, but past the largest ULID
    "x" * 5000,
    MISSING_ID,
]


async def test_bad_or_unknown_ids_are_404(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    for bad_id in BAD_IDS:
        routes: list[tuple[str, str, dict[str, str], Any]] = [
            ("GET", f"{USER_URL}/{bad_id}", user, None),
            ("POST", f"{USER_URL}/{bad_id}/messages", user, {"body": "hi"}),
            ("POST", f"{USER_URL}/{bad_id}/close", user, None),
            ("GET", f"{ADMIN_URL}/{bad_id}", admin, None),
            ("PATCH", f"{ADMIN_URL}/{bad_id}", admin, {"status": "open"}),
            ("POST", f"{ADMIN_URL}/{bad_id}/messages", admin, {"body": "hi"}),
        ]
        for method, url, headers, payload in routes:
            response = await client.request(method, url, json=payload, headers=headers)
            error = assert_error(response, 404, "not_found", case=f"{method} {url[:80]}")
            assert error["message"] == "ticket not found"


async def test_unknown_route_and_method_use_the_error_shape(
    client: AsyncTestClient[Any], user: dict[str, str], ticket_id: str
) -> None:
    assert_error(await client.get("/v1/nothing-here", headers=user), 404, "not_found")
    assert_error(await client.delete(f"{USER_URL}/{ticket_id}", headers=user), 405)
    assert_error(await client.put(USER_URL, json=GOOD, headers=user), 405)


async def test_hostile_inputs_never_cause_a_500(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str], ticket_id: str
) -> None:
    payloads: list[bytes] = [
        b"{" * 3000,
        b'{"a":' * 3000,
        b'{"subject": ' + b"9" * 5000 + b', "body": "b"}',
        b'{"subject": "s", "body": "b", "subject": "again"}',
        b'{"subject": {"$gt": ""}, "body": "b"}',
        b'{"subject": "\\u202e\\u0000", "body": "b"}',
        b"\x00\x00\x00",
        b'{"status": "open", "status": "closed"}',
        b'{"subject": "\'; DROP TABLE tickets; --", "body": "b"}',
    ]
    targets = [
        ("POST", USER_URL, user),
        ("POST", f"{USER_URL}/{ticket_id}/messages", user),
        ("POST", f"{ADMIN_URL}/{ticket_id}/messages", admin),
        ("PATCH", f"{ADMIN_URL}/{ticket_id}", admin),
    ]
    for method, url, headers in targets:
        for raw in payloads:
            response = await client.request(method, url, content=raw, headers={**headers, **JSON})
            assert response.status_code < 500, (method, url, raw[:40], response.text)
            if response.status_code >= 400:
                assert_error(response, response.status_code)
    odd_queries = ["page=1&page=x", "per_page[]=1", "page=%ff%fe", "status=open%00"]
    for query in odd_queries:
        for url, headers in [(USER_URL, user), (ADMIN_URL, admin)]:
            response = await client.get(f"{url}?{query}", headers=headers)
            assert response.status_code < 500, (url, query, response.text)


# -- probes and the published spec ----------------------------------------------------------------


async def test_probes_report_ready_when_the_database_is_up(client: AsyncTestClient[Any]) -> None:
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "database": "ok"}
    live = await client.get("/healthz")
    assert live.status_code == 200
    assert live.json() == {"status": "ok"}


async def test_openapi_documents_the_error_shape(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    schemas = spec["components"]["schemas"]
    error_response = schemas["ErrorResponse"]
    assert set(error_response["properties"]) == {"success", "error"}
    assert error_response["properties"]["error"]["$ref"] == "#/components/schemas/ErrorBody"
    assert set(schemas["ErrorBody"]["properties"]) == {"code", "message", "details"}
    assert "ErrorDetail" in schemas

    expected = {
        ("/v1/support/tickets", "post"): {400, 401, 413},
        ("/v1/support/tickets", "get"): {400, 401},
        ("/v1/support/tickets/{ticket_id}", "get"): {401, 404},
        ("/v1/support/tickets/{ticket_id}/messages", "post"): {400, 401, 404, 409, 413},
        ("/v1/support/tickets/{ticket_id}/close", "post"): {401, 404, 409},
        ("/v1/admin/support/tickets", "get"): {400, 401, 403},
        ("/v1/admin/support/tickets/{ticket_id}", "get"): {401, 403, 404},
        ("/v1/admin/support/tickets/{ticket_id}", "patch"): {400, 401, 403, 404, 409},
        ("/v1/admin/support/tickets/{ticket_id}/messages", "post"): {400, 401, 403, 404, 409},
    }
    for (path, method), statuses in expected.items():
        operation = spec["paths"][path][method]
        documented = {int(code) for code in operation["responses"]}
        assert statuses <= documented, (path, method, documented)
        for status in statuses:
            content = operation["responses"][str(status)]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
            for example in (content.get("examples") or {}).values():
                assert example["value"]["success"] is False, (path, method, status)


async def test_the_schema_is_built_at_start_not_by_a_request(settings: Settings) -> None:
    """/schema needs no token: building the schema held the event loop for ~260 ms and grew the
    process by ~13 MB, for whoever asked first after a start (bench/abuse.py, open-endpoints)."""
    app = create_app(settings, publisher=NoPublisher())
    config = app.openapi_config
    assert config is not None
    builds: list[str] = []
    build = config.to_openapi_schema

    def counted_build() -> Any:
        builds.append("built")
        return build()

    object.__setattr__(config, "to_openapi_schema", counted_build)
    async with AsyncTestClient(app=app) as client:
        assert builds == ["built"]  # by the start-up, before any request
        response = await client.get("/schema/openapi.json")
        assert response.status_code == 200
        assert "/v1/support/tickets" in response.json()["paths"]
    assert builds == ["built"]
