"""The agent console (/console), served and driven in a real browser.

The first tests check what the server sends (files, security headers, the development-only token
route) in-process. The browser tests run Playwright against Chromium and a real API server
process on the test database: users act through the JSON API, the agent through the console,
and each side sees the other's work. They also save screenshots of the queue and a ticket
(test-artifacts/console/; CONSOLE_SCREENSHOTS=docs/img refreshes the README's).

Chromium is the system's (``chromium``; .ci/run installs it). Without it these tests fail in CI
(``CI=true``) and are skipped elsewhere, saying what to install.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.console import CONTENT_SECURITY_POLICY, DEV_TOKEN_TTL_S, STATIC_DIR
from domain.db import make_engine, make_sessionmaker
from domain.settings import Settings, load_settings
from domain.timers import fire_sla_breaches, fire_sla_clocks
from tests.conftest import ADMIN_URL, TEST_REDIS_URL, USER_URL, RecordingPublisher, auth
from tests.processes import ROOT, ApiServer
from tests.sinks import free_port
from tests.tokens import TokenFactory, key_signer, new_rsa_key

# Every run saves the screenshots to test-artifacts/console/ (not tracked, so a test run leaves
# the checkout clean); CONSOLE_SCREENSHOTS=docs/img refreshes the README's copies.
SCREENSHOTS = ROOT / os.environ.get("CONSOLE_SCREENSHOTS", "test-artifacts/console")
TOKEN_KEY = "helpdesk.console.token"
XSS_SUBJECT = "<img src=x onerror=alert(1)>"
SLA_URGENT_SECONDS = 2  # the live server's first-response deadline, short enough to pass
APPEAR_WITHIN_MS = 5_000  # the issue: a new ticket shows in an open console within 5 s

# -- what the server sends (no browser) --------------------------------------------------------


async def test_console_files_come_with_a_csp_that_forbids_inline_script(
    client: AsyncTestClient[Any],
) -> None:
    for path in (
        "/console",
        "/console/",
        "/console/assets/console.js",
        "/console/assets/format.js",
    ):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        again = await client.get(path, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    css = await client.get("/console/assets/console.css")
    assert css.headers["content-type"].startswith("text/css")
    js = await client.get("/console/assets/console.js")
    assert js.headers["content-type"].startswith("text/javascript")
    missing = await client.get("/console/assets/nothing.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"  # the API's error shape
    assert (await client.get("/console/assets/..%2Fconsole%2F__init__.py")).status_code == 404


def test_console_markup_has_no_inline_script_or_style_and_sets_text_only() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all("src=" in tag for tag in scripts)
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)
    for script in STATIC_DIR.glob("*.js"):
        source = script.read_text()
        # User text goes in as text: no HTML parsing sinks anywhere in the console.
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, (script.name, sink)


async def test_production_console_is_read_only_files_with_no_dev_sign_in(
    client: AsyncTestClient[Any],
) -> None:
    console_routes = [r for r in client.app.routes if r.path.startswith("/console")]
    assert {r.path for r in console_routes} == {
        "/console",
        "/console/index.html",
        "/console/assets/{name:str}",
        "/console/config.json",
    }
    for route in console_routes:
        for handler in getattr(route, "route_handlers", []):
            assert handler.http_methods <= {"GET", "HEAD", "OPTIONS"}, route.path
    assert (await client.post("/console/dev-token")).status_code == 404
    assert (await client.get("/console/config.json")).json() == {"dev_sign_in": False}
    schema = (await client.get("/schema/openapi.json")).json()
    assert not [path for path in schema["paths"] if path.startswith("/console")]


@pytest.fixture
def dev_settings(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Development mode with no key configured: the API trusts the development key."""
    monkeypatch.setenv("HELPDESK_DEV_KEY_DIR", str(tmp_path / "devkeys"))
    return replace(settings, app_env="development", jwt_public_key=None)


async def test_development_agent_gets_a_short_lived_admin_token(dev_settings: Settings) -> None:
    app = create_app(dev_settings, publisher=RecordingPublisher())
    async with AsyncTestClient(app=app) as dev:
        assert (await dev.get("/console/config.json")).json() == {"dev_sign_in": True}
        response = await dev.post("/console/dev-token")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        token = response.json()["token"]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["role"] == "admin"
        assert claims["exp"] - claims["iat"] == DEV_TOKEN_TTL_S
        queue = await dev.get(ADMIN_URL, headers=auth(token))
        assert queue.status_code == 200, queue.text


async def test_no_dev_sign_in_where_a_real_key_is_configured(
    settings: Settings, public_pem: str
) -> None:
    keyed = replace(settings, app_env="development", jwt_public_key=public_pem)
    async with AsyncTestClient(app=create_app(keyed, publisher=RecordingPublisher())) as dev:
        assert (await dev.post("/console/dev-token")).status_code == 404
        assert (await dev.get("/console/config.json")).json() == {"dev_sign_in": False}


# -- the browser ---------------------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = (
        "Chromium is not installed: the console's browser tests need the system's `chromium` "
        "(Debian/Ubuntu: apt-get install chromium; .ci/run installs it)"
    )
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(database_url: str, public_pem: str) -> Iterator[ApiServer]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "SMTP_", "SLACK_"))},
        "APP_ENV": "production",
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "JWT_PUBLIC_KEY": public_pem,
        "PORT": str(free_port()),
        "RATE_LIMIT_PER_MINUTE": "0",
        "SLA_URGENT_SECONDS": str(SLA_URGENT_SECONDS),
        "LOG_FORMAT": "json",
    }
    api = ApiServer(env, workers=1).start()
    yield api
    api.stop()


class Api:
    """The JSON API as a user's app or another agent calls it."""

    def __init__(self, base_url: str, make_token: TokenFactory) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.make_token = make_token

    def create(self, user: str, subject: str, body: str, priority: str = "normal") -> str:
        fields = {"subject": subject, "body": body, "priority": priority}
        response = self.http.post(USER_URL, json=fields, headers=auth(self.make_token(user)))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def user_reply(self, user: str, ticket_id: str, body: str) -> None:
        response = self.http.post(
            f"{USER_URL}/{ticket_id}/messages",
            json={"body": body},
            headers=auth(self.make_token(user)),
        )
        assert response.status_code == 201, response.text

    def user_view(self, user: str, ticket_id: str) -> dict[str, Any]:
        response = self.http.get(f"{USER_URL}/{ticket_id}", headers=auth(self.make_token(user)))
        assert response.status_code == 200, response.text
        return dict(response.json())

    def admin(self, agent: str, method: str, path: str, **body: Any) -> dict[str, Any]:
        headers = auth(self.make_token(agent, admin=True))
        response = self.http.request(method, f"{ADMIN_URL}/{path}", json=body, headers=headers)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())


@pytest.fixture
def api(server: ApiServer, make_token: TokenFactory, clean_db: str) -> Iterator[Api]:
    client = Api(server.base_url, make_token)
    yield client
    client.http.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (its own sessionStorage) at desktop size; dialogs are recorded
    (an alert would mean user text ran as script)."""
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    ctx.dialogs = []
    ctx.on("page", lambda page: page.on("dialog", lambda d: (ctx.dialogs.append(d), d.dismiss())))
    yield ctx
    ctx.close()


def open_console(context: Any, server: ApiServer, token: str) -> Any:
    """The host app's 'open support console' link: the token rides in the fragment."""
    page = context.new_page()
    page.goto(f"{server.base_url}/console#token={token}")
    page.locator("#queue").wait_for()
    return page


def row(page: Any, subject: str) -> Any:
    return page.locator("tr.ticket-row", has=page.get_by_role("link", name=subject, exact=True))


def sweep_sla(database_url: str) -> None:
    """Run the SLA sweep once, as the sla pool's sweep actor does (workers/sla.py)."""

    async def sweep() -> None:
        engine = make_engine(load_settings({"DATABASE_URL": database_url}), pool_size=1)
        try:
            async with make_sessionmaker(engine)() as session:
                now = datetime.now(UTC)
                await fire_sla_breaches(session, now)
                await fire_sla_clocks(session, now)
                await session.commit()
        finally:
            await engine.dispose()

    # Playwright's sync API runs an event loop in this thread: the sweep gets a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, sweep()).result(timeout=30)


def test_an_agent_works_a_ticket_the_user_sees_it(
    api: Api, context: Any, server: ApiServer, make_token: TokenFactory
) -> None:
    from playwright.sync_api import expect

    agent_token = make_token("agent-1", admin=True)
    page = open_console(context, server, agent_token)
    # The hand-off left the address bar at once and lives in this tab only.
    assert "token" not in page.url
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == agent_token
    assert context.cookies() == []
    expect(page.locator("#who-name")).to_have_text("Signed in as agent-1")
    expect(page.locator("#queue-title")).to_be_focused()

    # A user's new ticket appears in the open console without a reload, within 5 s.
    ticket_id = api.create("alice", "Payout missing", "My payout from Monday is not there.")
    created = time.monotonic()
    expect(row(page, "Payout missing")).to_be_visible(timeout=APPEAR_WITHIN_MS)
    assert time.monotonic() - created <= APPEAR_WITHIN_MS / 1000
    expect(row(page, "Payout missing").locator(".activity")).to_have_text("new")
    expect(row(page, "Payout missing")).to_contain_text("alice")
    expect(row(page, "Payout missing")).to_contain_text("Open")

    # The agent opens it (by keyboard), reads the user's message and replies with Ctrl+Enter.
    page.get_by_role("link", name="Payout missing").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#ticket-subject")).to_have_text("Payout missing")
    expect(page.locator("#ticket-subject")).to_be_focused()
    expect(page.locator("li.msg-user")).to_have_text(re.compile("My payout from Monday"))
    page.get_by_label("Reply to the requester").fill("We are checking with the bank.")
    page.get_by_label("Reply to the requester").press("Control+Enter")
    expect(page.locator("li.msg-agent")).to_contain_text("We are checking with the bank.")
    expect(page.get_by_label("Reply to the requester")).to_have_value("")

    # Only legal transitions are offered; in_progress, then resolved.
    status = page.locator("#status-select")
    assert status.locator("option").all_inner_texts() == [
        "Open (now)",
        "In progress",
        "Resolved",
        "Closed",
    ]
    status.select_option("in_progress")
    page.get_by_role("button", name="Save changes").click()
    expect(status).to_have_value("in_progress")
    expect(page.locator("#ticket-facts")).to_contain_text("In progress")
    expect(row(page, "Payout missing")).to_contain_text("In progress")
    assert status.locator("option").all_inner_texts() == [
        "In progress (now)",
        "Open",
        "Resolved",
        "Closed",
    ]
    status.select_option("resolved")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#ticket-facts")).to_contain_text("Resolved")  # saved, not just picked

    # The user sees the reply and the status through the API.
    seen = api.user_view("alice", ticket_id)
    assert seen["status"] == "resolved"
    assert [(m["body"], m["is_admin"]) for m in seen["messages"]][-1] == (
        "We are checking with the bank.",
        True,
    )

    # The user's answer shows in the open ticket without a reload (and reopens it).
    api.user_reply("alice", ticket_id, "Thanks, it arrived!")
    expect(page.locator("li.msg-user").last).to_contain_text(
        "Thanks, it arrived!", timeout=APPEAR_WITHIN_MS
    )
    expect(status).to_have_value("open")  # the user's reply reopened it

    # The audit trail tells who did what.
    page.locator("#audit summary").click()
    trail = page.locator("#events")
    expect(trail).to_contain_text("status: open → in_progress")
    expect(trail).to_contain_text("status: in_progress → resolved")
    expect(trail).to_contain_text("by agent agent-1")

    # A change the API refuses shows its error: another agent closed the ticket meanwhile (the
    # console's own refresh of the ticket is held back so its copy is stale).
    page.route(
        re.compile(rf"{ADMIN_URL}/{ticket_id}$"),
        lambda route: (
            route.fulfill(status=304) if route.request.method == "GET" else route.fallback()
        ),
    )
    api.admin("agent-2", "PATCH", ticket_id, status="closed")
    page.locator("#priority-select").select_option("high")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#ticket-error")).to_contain_text("the ticket changed since the version")
    expect(status).to_have_value("closed")
    expect(page.get_by_role("button", name="Save changes")).to_be_disabled()

    assert agent_token not in server.output()  # the token is never in a log line
    assert context.dialogs == []


def test_user_text_is_shown_as_text_never_run(
    api: Api, context: Any, server: ApiServer, make_token: TokenFactory
) -> None:
    from playwright.sync_api import expect

    ticket_id = api.create("mallory", XSS_SUBJECT, "<script>alert(2)</script><b>bold?</b>")
    page = open_console(context, server, make_token("agent-1", admin=True))
    link = page.get_by_role("link", name=XSS_SUBJECT, exact=True)
    expect(link).to_be_visible()
    expect(page.locator("#queue-rows img")).to_have_count(0)
    link.click()
    expect(page.locator("#ticket-subject")).to_have_text(XSS_SUBJECT)
    expect(page.locator("li.msg-user .msg-body")).to_have_text(
        "<script>alert(2)</script><b>bold?</b>"
    )
    expect(page.locator("#ticket img, #ticket b, #ticket li script")).to_have_count(0)
    page.wait_for_timeout(500)
    assert context.dialogs == []
    assert ticket_id in page.url


def test_an_urgent_ticket_past_its_sla_stands_out_as_breached(
    api: Api, context: Any, server: ApiServer, make_token: TokenFactory, clean_db: str
) -> None:
    """Also the screenshots: a queue with a bit of everything, and a ticket."""
    from playwright.sync_api import expect

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    late = api.create(
        "demo-user-3", "Checkout fails for every card", "Card payments fail.", "urgent"
    )
    fill_queue(api)
    time.sleep(SLA_URGENT_SECONDS + 0.5)
    sweep_sla(clean_db)

    page = open_console(context, server, make_token("agent-1", admin=True))
    breached = row(page, "Checkout fails for every card")
    expect(breached).to_have_class(re.compile(r"\bis-breached\b"))
    expect(breached).to_have_class(re.compile(r"\bis-urgent\b"))
    expect(breached).to_contain_text(re.compile(r"breached \d+ s ago"))
    expect(row(page, "Two-factor codes never arrive")).not_to_have_class(re.compile(r"is-breached"))
    page.locator("#f-sla").select_option("breached")
    expect(page.locator("tr.ticket-row")).to_have_count(1)
    expect(page.locator("#queue-count")).to_have_text("1 ticket")
    page.locator("#f-sla").select_option("")
    expect(page.locator("tr.ticket-row")).to_have_count(8)
    page.mouse.move(0, 0)
    page.screenshot(path=SCREENSHOTS / "console-queue-desktop.png")

    page.goto(f"{server.base_url}/console#/tickets/{late}")
    expect(page.locator("#sla-clock")).to_contain_text(re.compile("First response.* breached"))
    page.get_by_label("Reply to the requester").fill("Looking at the payment provider now.")
    page.screenshot(path=SCREENSHOTS / "console-ticket-desktop.png")

    page.set_viewport_size({"width": 375, "height": 812})
    page.get_by_role("button", name="Back to the queue").click()
    expect(page.locator("#queue")).to_be_visible()
    page.evaluate("window.scrollTo(0, 0)")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling
    page.screenshot(path=SCREENSHOTS / "console-queue-narrow.png")
    row(page, "Payout missing").get_by_role("link").click()
    expect(page.locator("#queue")).to_be_hidden()  # one column: the ticket replaces the queue
    expect(page.locator("li.msg-agent")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=SCREENSHOTS / "console-ticket-narrow.png", full_page=True)
    assert context.dialogs == []


def test_the_sla_clock_counts_down(
    api: Api, context: Any, server: ApiServer, make_token: TokenFactory
) -> None:
    """The page's clock is set a while before the deadline and moved by hand (the live server's
    deadline is two seconds away, too close to watch)."""
    from playwright.sync_api import expect

    ticket_id = api.create("demo-user-1", "Site is down", "Nothing loads.", "urgent")
    ticket = api.admin("agent-1", "GET", ticket_id)
    due = datetime.fromisoformat(ticket["sla_due_at"].replace("Z", "+00:00"))
    page = context.new_page()
    page.clock.install(time=due - timedelta(minutes=5))
    page.clock.pause_at(due - timedelta(minutes=4))
    page.goto(f"{server.base_url}/console#token={make_token('agent-1', admin=True)}")
    row(page, "Site is down").get_by_role("link").click()
    clock = page.locator("#sla-clock")
    expect(clock).to_have_text("First response: due in 04:00.")
    expect(row(page, "Site is down")).to_contain_text("due in 4 min")
    page.clock.run_for(61_000)
    expect(clock).to_have_text("First response: due in 02:59.")
    page.clock.run_for(3 * 60_000)
    expect(clock).to_contain_text("First response: overdue by 00:01.")


def fill_queue(api: Api) -> None:
    """A few tickets in every state, for the screenshots."""
    payout = api.create("demo-user-1", "Payout missing", "My payout from Monday is not there.")
    api.admin("agent-1", "PATCH", payout, status="in_progress", assignee_id="agent-1")
    api.admin("agent-1", "POST", f"{payout}/messages", body="We are checking with the bank.")
    api.user_reply("demo-user-1", payout, "Thanks! It was 120 EUR, paid on Monday.")
    vat = api.create("demo-user-2", "Invoice shows the wrong VAT number", "Please fix.", "high")
    api.admin("agent-2", "PATCH", vat, assignee_id="agent-2")
    export = api.create("demo-user-4", "Export to CSV is empty", "The file has headers only.")
    api.admin("agent-1", "PATCH", export, status="resolved", assignee_id="agent-1")
    api.create("demo-user-5", "Two-factor codes never arrive", "No SMS since Friday.", "high")
    api.create("demo-user-6", "Dark mode for the dashboard?", "Would be nice.", "low")
    delete = api.create("demo-user-2", "Please delete my account", "GDPR request.")
    api.admin("agent-2", "PATCH", delete, status="closed")
    api.create("demo-user-3", "App crashes when uploading a photo", "Android 15, v3.2.")


def test_an_expired_or_refused_token_sends_the_agent_back_to_sign_in(
    api: Api, context: Any, server: ApiServer, make_token: TokenFactory
) -> None:
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(f"{server.base_url}/console")
    notice = page.locator("#sign-in-notice")
    token_box = page.get_by_label("Admin token")
    expect(page.get_by_role("button", name="Sign in as a development agent")).to_be_hidden()
    sign_in = page.get_by_role("button", name="Sign in", exact=True)

    # Pasted, valid for a few seconds: the console signs the agent out when it runs out.
    token_box.fill(make_token("agent-1", admin=True, exp_in=4))
    sign_in.click()
    expect(page.locator("#queue")).to_be_visible()
    expect(notice).to_contain_text("expired", timeout=8_000)
    expect(page.locator("#queue")).to_be_hidden()
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    expect(token_box).to_be_focused()

    # Already expired: refused before anything is shown.
    token_box.fill(make_token("agent-1", admin=True, exp_in=-120))
    sign_in.click()
    expect(notice).to_contain_text("That token has expired")

    # Signed by a key the API does not trust: the API's 401.
    forged = key_signer(new_rsa_key())("agent-1", admin=True)
    token_box.fill(forged)
    sign_in.click()
    expect(notice).to_contain_text("expired or was refused")

    # A user's token is not an admin's: the API's 403.
    token_box.fill(make_token("alice"))
    sign_in.click()
    expect(notice).to_contain_text("not an admin's")
    expect(page.locator("#app")).to_be_hidden()

    # A token the API starts refusing while the console is open (401 on a poll) signs out too.
    page2 = open_console(context, server, make_token("agent-1", admin=True))
    page2.route(
        re.compile(rf"{ADMIN_URL}\?"),
        lambda route: route.fulfill(status=401, json={"success": False}),
    )
    expect(page2.locator("#sign-in-notice")).to_contain_text(
        "expired or was refused", timeout=APPEAR_WITHIN_MS
    )
    assert page2.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None


def test_a_newcomer_signs_in_as_the_development_agent(
    browser: Any, database_url: str, clean_db: str, tmp_path: Path
) -> None:
    """``make run`` (APP_ENV=development, no key configured): one button and the queue shows."""
    from playwright.sync_api import expect

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "SMTP_", "SLACK_"))},
        "APP_ENV": "development",
        "HELPDESK_DEV_KEY_DIR": str(tmp_path / "devkeys"),
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "PORT": str(free_port()),
        "RATE_LIMIT_PER_MINUTE": "0",
    }
    dev_server = ApiServer(env, workers=1).start()
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        page = ctx.new_page()
        page.goto(f"{dev_server.base_url}/console")
        page.get_by_role("button", name="Sign in as a development agent").click()
        expect(page.locator("#queue")).to_be_visible()
        expect(page.locator("#who-name")).to_have_text("Signed in as dev-agent")
        expect(page.locator("#queue-empty")).to_be_visible()
        token = page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")
        assert token and token not in dev_server.output()
    finally:
        ctx.close()
        dev_server.stop()
