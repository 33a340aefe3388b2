"""The abuse suite (bench/abuse.py, quick sizes) against the real server: one misbehaving client
never hurts anyone else.

One ``helpdesk serve`` (Granian, 2 processes, RATE_LIMIT_PER_MINUTE=60) runs for the module on
a random loopback port, against the test database and Redis. Each case attacks it while a
bystander (other users, ~30 requests/s, from a process of its own) is measured, then checks
what was answered, what was written, the server's resources and its log. Behaviour only: the
latency figures are the benchmark's (``python -m bench.abuse``, docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import redis

from bench import abuse
from domain.events import EventType
from tests.conftest import ADMIN_URL, TEST_REDIS_URL, USER_URL, TokenFactory, auth

pytestmark = pytest.mark.slow


def _flush_redis() -> None:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()  # rate-limit counters of an earlier run, events nobody consumes
    client.close()


@pytest.fixture(scope="module")
def suite(database_url: str, public_pem: str, make_token: TokenFactory) -> Iterator[abuse.Suite]:
    _flush_redis()
    target = abuse.Target.start(
        database_url=database_url, redis_url=TEST_REDIS_URL, public_pem=public_pem, sign=make_token
    )
    try:
        suite = abuse.Suite(target, abuse.QUICK)
        try:
            yield suite
        finally:
            suite.close()
    finally:
        target.stop()
        _flush_redis()


def _statuses(result: abuse.CaseResult, *kinds: str) -> set[str]:
    kinds = kinds or tuple(result.by_kind)
    return {outcome for kind in kinds for outcome in result.by_kind[kind]}


# What each case must be answered, beyond "only what bench/abuse.py expects for each kind".
def _rate_limit(r: abuse.CaseResult) -> None:
    assert _statuses(r, "list") == {"200", "429"}
    assert _statuses(r, "create") <= {"201", "429"}
    assert _statuses(r, "admin list (not admin)") <= {"403", "429"}
    admitted = r.details["admitted_past_the_limiter"]
    assert admitted <= abuse.RATE_LIMIT_PER_MINUTE * r.details["limit_windows_at_most"]
    assert r.outcomes["429"] >= r.sent - admitted


def _bad_tokens(r: abuse.CaseResult) -> None:
    assert r.outcomes == {"401": r.sent}
    assert {
        "expired",
        "signed by a foreign RSA key",
        "alg: none",
        "HS256 with the server's public PEM as secret",
        "20 kB token signed by the server's key",
        "many users, foreign key",
    } <= set(r.by_kind)


def _still_open(r: abuse.CaseResult) -> None:
    # The quick case ends (4 s) before Granian's 30 s header-read timeout: the server held
    # every connection, answered none, and the bystander was served meanwhile.
    assert r.outcomes == {"open when the client gave up": r.sent}


def _idle_keepalive(r: abuse.CaseResult) -> None:
    assert r.outcomes == {"answered, idle until the client gave up": r.sent}


def _hostile_bodies(r: abuse.CaseResult) -> None:
    # Every kind of body gets one and the same answer each time.
    assert all(len(v) == 1 for k, v in r.by_kind.items())
    assert _statuses(r, "64 kB of nested arrays", "invalid UTF-8", "raw NUL byte in subject") == {
        "400"
    }
    assert _statuses(r, "text/plain", "form-urlencoded", "no content type") == {"415"}
    assert _statuses(r, "70 kB body (over MAX_BODY_BYTES)") == {"413"}
    assert _statuses(r, "60 kB of 4-byte emoji in body") == {"201"}


def _hostile_paths(r: abuse.CaseResult) -> None:
    assert _statuses(r, "10 kB ticket id (GET)", "%00 as ticket id", "../ encoded") == {"404"}
    assert _statuses(r, "100 headers of 8 kB") == {"431"}


def _hang_ups(r: abuse.CaseResult) -> None:
    assert r.outcomes == {"sent, then hung up": r.sent}
    # Whatever the server did for a client that left, it did whole (checked for every case).
    assert 0 <= r.tickets["attacker_delta"] <= r.tickets["attacker_at_most"]


def _open_endpoints(r: abuse.CaseResult) -> None:
    assert set(r.by_kind) == set(abuse.OPEN_PATHS)
    assert r.outcomes == {"200": r.sent}


CASE_CHECKS = {
    "rate-limit": _rate_limit,
    "bad-tokens": _bad_tokens,
    "slowloris": _still_open,
    "slow-body": _still_open,
    "idle-keepalive": _idle_keepalive,
    "silent": _still_open,
    "hostile-bodies": _hostile_bodies,
    "hostile-paths": _hostile_paths,
    "hang-ups": _hang_ups,
    "open-endpoints": _open_endpoints,
}


def test_every_case_is_checked() -> None:
    assert set(CASE_CHECKS) == set(abuse.CASE_NAMES)


@pytest.mark.parametrize("case", abuse.CASE_NAMES)
def test_one_abusive_client_hurts_no_one_else(suite: abuse.Suite, clean_db: str, case: str) -> None:
    r = suite.run(case)
    assert r.sent > 0

    # Answers: what each kind of abuse must get, and no 5xx.
    assert r.unexpected == {}, r.by_kind
    server_errors = {
        kind: outcomes
        for kind, outcomes in r.by_kind.items()
        if any(o.startswith("5") for o in outcomes)
    }
    assert server_errors == {}
    CASE_CHECKS[case](r)

    # The bystander was served throughout (before, during and just after), and only with 2xx.
    assert r.bystander["baseline"]["count"] > 0 and r.bystander["after"]["count"] > 0
    assert r.bystander["non_2xx"] == {}

    # Nothing half-written; tickets grew by exactly what 2xx answers said.
    assert r.half_written == dict.fromkeys(abuse.HALF_WRITTEN, 0)
    t = r.tickets
    assert t["bystander_delta"] == t["bystander_201"]
    if t["attacker_at_most"] is None:
        assert t["attacker_delta"] == t["attacker_201"]
    assert t["all_delta"] == t["attacker_delta"] + t["bystander_delta"]

    # Resources back to the baseline, the service ready and answering at once.
    assert r.resources["back_to_baseline"], r.resources
    assert r.after["readyz"] == 200
    assert r.after["bystander_request"] == "200"
    assert r.after["burst"] == {"200": sum(r.after["burst"].values())}

    # No error line or traceback in the server's log, and nothing else the suite calls a problem.
    assert r.log["error_lines"] == 0, r.log["error_samples"]
    assert r.problems == [], r.problems


def test_a_body_that_never_arrives_is_the_clients_fault(suite: abuse.Suite) -> None:
    slow, bodies = suite.run("slow-body"), suite.run("hostile-bodies")
    assert _statuses(bodies, "invalid chunked encoding") == {"400"}
    assert slow.log["error_lines"] == 0
    assert bodies.log["error_lines"] == 0


async def _new_client_while_connections_are_held(port: int, held: int) -> tuple[str, str]:
    """Hold ``held`` silent connections, then try a new client; try again after letting go."""
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(held):
            writers.append((await abuse._connect(port, 10.0))[1])
        during = await abuse.exchange(port, abuse.http_request("GET", "/healthz"), wait_s=3.0)
    finally:
        for writer in writers:
            abuse._abort(writer)
    after = await abuse.exchange(port, abuse.http_request("GET", "/healthz"), wait_s=10.0)
    return during, after


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="not defended: Granian serves at most --backpressure (default backlog/workers = 512) "
    "connections per worker, idle or not, and never times out a connection that sends nothing; "
    "one client holding ~1,100 connections locks out every new client (docs/reliability.md)",
)
def test_a_client_holding_a_thousand_connections_does_not_lock_out_new_clients(
    suite: abuse.Suite,
) -> None:
    # Each worker listens on its own socket (SO_REUSEPORT) and the kernel spreads connections
    # over them by a hash: 1,400 fill both workers' 512 permits whatever the spread.
    held = 1400
    during, after = abuse.run_async(_new_client_while_connections_are_held(suite.target.port, held))
    if after != "200":  # not the known limitation: the server did not come back
        raise RuntimeError(f"after the connections were released a new client got {after}")
    assert during == "200"


async def _replies_that_hang_up(port: int, path: str, tokens: list[str], count: int) -> None:
    body = json.dumps({"body": "are you there?"}).encode()
    writers = []
    for n in range(count):
        # Spread over several agents, each under the rate limit, so all of them reach the database.
        request = abuse.http_request("POST", path, token=tokens[n % len(tokens)], body=body)
        _, writer = await abuse._connect(port, 10.0)
        writer.write(request)
        writers.append(writer)
    await asyncio.sleep(0.5)  # the server has them: waiting for a slot or for the row lock
    for writer in writers:
        abuse._abort(writer)


def test_clients_that_hang_up_while_waiting_for_the_database_hold_nothing_afterwards(
    suite: abuse.Suite, make_token: TokenFactory, clean_db: str
) -> None:
    """200 agent replies to one ticket wait (on the gate, then on the ticket's row lock held by
    another transaction) and their clients hang up; once the lock goes, nothing stays held."""
    target = suite.target
    token = make_token("hang-up-owner")
    headers = auth(token)
    created = httpx.post(
        f"{target.base_url}{USER_URL}",
        json={"subject": "s", "body": "b"},
        headers=headers,
        timeout=10,
    )
    ticket_id = created.json()["id"]
    log_before = len(target.api.output())
    with psycopg.connect(target.database_url) as locker:
        locker.execute("SELECT 1 FROM tickets WHERE id = %s FOR UPDATE", (ticket_id,))
        path = f"{ADMIN_URL}/{ticket_id}/messages"
        agents = [make_token(f"hang-up-agent-{n}", admin=True) for n in range(5)]
        abuse.run_async(_replies_that_hang_up(target.port, path, agents, 200))
        locker.rollback()
    with psycopg.connect(target.database_url, autocommit=True) as db:
        for _ in range(100):  # the abandoned requests finish (or not) once the lock is gone
            busy = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'helpdesk' "
                "AND state <> 'idle'"
            ).fetchone()
            if busy == (0,):
                break
            time.sleep(0.1)
        assert busy == (0,)
        # Whole or not at all: every reply that was written has its event.
        replies, events = db.execute(
            "SELECT (SELECT count(*) - 1 FROM messages WHERE ticket_id = %(t)s),"
            " (SELECT count(*) FROM ticket_events WHERE ticket_id = %(t)s"
            "  AND type = %(type)s)",
            {"t": ticket_id, "type": EventType.MESSAGE_CREATED},
        ).fetchone() or (None, None)
        assert replies == events
    assert httpx.get(f"{target.base_url}/readyz", timeout=10).status_code == 200
    assert httpx.get(f"{target.base_url}{USER_URL}", headers=headers, timeout=10).status_code == 200
    others = [make_token(f"hang-up-bystander-{n}") for n in range(60)]
    burst = abuse.run_async(_burst(target.base_url, others))
    assert burst == {200}
    new_lines = target.api.output()[log_before:]
    assert abuse.scan_log(new_lines).error_lines == []


async def _burst(base_url: str, tokens: list[str]) -> set[int]:
    """One request per user, all at once: more than the connection gates admit together."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        answers = await asyncio.gather(
            *(client.get(USER_URL, headers=auth(token)) for token in tokens)
        )
    return {answer.status_code for answer in answers}
