"""A client generated from /schema/openapi.json (openapi-python-client) walks a user's and an
agent's journey: what the OpenAPI document says is enough to use the API, conditional requests
and idempotency keys included."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from api.app import create_app
from domain.settings import Settings
from tests.asgi_client import served_in_loop
from tests.conftest import RecordingPublisher
from tests.tokens import TokenFactory

PACKAGE = "support_api_client"
CONFIG = f"""\
project_name_override: {PACKAGE}
package_name_override: {PACKAGE}
post_hooks: []
"""


def generator() -> list[str]:
    found = shutil.which("openapi-python-client") or str(
        Path(sys.executable).parent / "openapi-python-client"
    )
    if not Path(found).exists():
        pytest.fail("openapi-python-client is not installed: run `uv sync` (a dev dependency)")
    return [found]


@contextmanager
def generated_from(document: dict[str, Any], workdir: Path) -> Iterator[ModuleType]:
    """The client package openapi-python-client generates from ``document``, importable inside
    the block."""
    (workdir / "openapi.json").write_text(json.dumps(document))
    (workdir / "config.yml").write_text(CONFIG)
    done = subprocess.run(
        [
            *generator(),
            "generate",
            "--path", str(workdir / "openapi.json"),
            "--config", str(workdir / "config.yml"),
            "--meta", "none",
            "--output-path", str(workdir / PACKAGE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # Every operation and response of ours must come through (the tool skips what it cannot
    # read, with a warning naming the operation).
    warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING")]
    ours = [w for w in warnings if "/support/tickets" in w and "/events" not in w]
    assert ours == [], done.stdout
    sys.path.insert(0, str(workdir))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(workdir))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def api(package: ModuleType, tag: str, operation: str) -> Any:
    return importlib.import_module(f"{package.__name__}.api.{tag}.{operation}")


def model(package: ModuleType, name: str) -> Any:
    return getattr(importlib.import_module(f"{package.__name__}.models"), name)


async def test_a_user_and_an_agent_through_the_generated_client(
    settings: Settings,
    publisher: RecordingPublisher,
    make_token: TokenFactory,
    tmp_path: Path,
) -> None:
    app = create_app(settings, publisher=publisher)
    async with served_in_loop(app) as served:
        document = (await served.get("/schema/openapi.json")).json()
        with generated_from(document, tmp_path) as generated:

            def as_caller(token: str) -> Any:
                # The generated client makes its own httpx client; ours only lends the app.
                transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
                return generated.AuthenticatedClient(
                    base_url="http://test", token=token, httpx_args={"transport": transport}
                )

            user = as_caller(make_token("gen-user", email="user@example.com"))
            agent = as_caller(make_token("gen-agent", admin=True))
            await journey(generated, user, agent, publisher)


async def journey(g: ModuleType, user: Any, agent: Any, publisher: RecordingPublisher) -> None:
    tickets, admin = "tickets", "admin"
    create = api(g, tickets, "v1_support_tickets_create_ticket")
    listing = api(g, tickets, "v1_support_tickets_list_tickets")
    own = api(g, tickets, "v1_support_tickets_ticket_id_get_ticket")
    user_reply = api(g, tickets, "v1_support_tickets_ticket_id_messages_reply")
    close = api(g, tickets, "v1_support_tickets_ticket_id_close_close")
    queue = api(g, admin, "v1_admin_support_tickets_list_tickets")
    one = api(g, admin, "v1_admin_support_tickets_ticket_id_get_ticket")
    update = api(g, admin, "v1_admin_support_tickets_ticket_id_update_ticket")
    agent_reply = api(g, admin, "v1_admin_support_tickets_ticket_id_messages_reply")
    CreateTicket, CreateMessage, UpdateTicket = (
        model(g, "CreateTicket"),
        model(g, "CreateMessage"),
        model(g, "UpdateTicket"),
    )
    Priority, Category, Status = model(g, "Priority"), model(g, "Category"), model(g, "Status")

    # The user opens a ticket, with a key; the retry of a lost answer gets the same ticket.
    key = str(uuid.uuid4())
    body = CreateTicket(
        subject="Payout missing",
        body="My weekly payout has not arrived.",
        category=Category.BILLING,
        priority=Priority.HIGH,
    )
    first = await create.asyncio_detailed(client=user, body=body, idempotency_key=key)
    assert first.status_code == 201
    ticket = first.parsed
    assert isinstance(ticket, model(g, "TicketOut"))
    retry = await create.asyncio_detailed(client=user, body=body, idempotency_key=key)
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.parsed.id == ticket.id
    assert len(publisher.published) == 1

    mine = await listing.asyncio(client=user, status=Status.OPEN)
    assert [t.id for t in mine.data] == [ticket.id]
    assert mine.pagination.total == 1

    # The agent finds it in the queue by a word of its body, takes it with If-Match.
    found = await queue.asyncio(
        client=agent, q="payouts", assignee="none", sort=model(g, "SortKey").RELEVANCE
    )
    assert [t.id for t in found.data] == [ticket.id]
    read = await one.asyncio_detailed(ticket.id, client=agent)
    tag = read.headers["etag"]
    taken = await update.asyncio_detailed(
        ticket.id,
        client=agent,
        body=UpdateTicket(status=Status.IN_PROGRESS, assignee_id="gen-agent"),
        if_match=tag,
    )
    assert taken.status_code == 200
    assert taken.parsed.assignee_id == "gen-agent"
    new_tag = taken.headers["etag"]

    # A second change made from the stale copy is refused with the current state.
    stale = await update.asyncio_detailed(
        ticket.id, client=agent, body=UpdateTicket(priority=Priority.LOW), if_match=tag
    )
    assert stale.status_code == 412
    refused = stale.parsed
    assert isinstance(refused, model(g, "PreconditionFailedResponse"))
    assert refused.error.code == "precondition_failed"
    assert refused.ticket.status == Status.IN_PROGRESS
    assert stale.headers["etag"] == new_tag

    # The agent replies (with a key and If-Match); the user sees it, with a 304 once seen.
    reply_key = str(uuid.uuid4())
    answer = CreateMessage(body="We found it: the payout goes out today.")
    replied = await agent_reply.asyncio_detailed(
        ticket.id, client=agent, body=answer, idempotency_key=reply_key, if_match=new_tag
    )
    assert replied.status_code == 201
    again = await agent_reply.asyncio_detailed(
        ticket.id, client=agent, body=answer, idempotency_key=reply_key, if_match=new_tag
    )
    assert again.headers["idempotent-replayed"] == "true"
    assert again.parsed.id == replied.parsed.id

    seen = await own.asyncio_detailed(ticket.id, client=user)
    assert [m.is_admin for m in seen.parsed.messages] == [False, True]
    unchanged = await own.asyncio_detailed(
        ticket.id, client=user, if_none_match=seen.headers["etag"]
    )
    assert unchanged.status_code == 304

    # The user thanks and closes it.
    thanks = await user_reply.asyncio(ticket.id, client=user, body=CreateMessage(body="Thanks!"))
    assert thanks.is_admin is False
    closed = await close.asyncio(ticket.id, client=user, idempotency_key=str(uuid.uuid4()))
    assert closed.status == Status.CLOSED

    # Errors come back as the documented error shape.
    bad = await create.asyncio_detailed(client=user, body=body, idempotency_key="not a key")
    assert bad.status_code == 400
    assert bad.parsed.error.code == "validation_error"
