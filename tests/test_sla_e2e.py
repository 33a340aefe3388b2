"""SLA warnings and breaches in real time, through real Redis, worker and scheduler processes and a
real SMTP server, under a policy file with targets of a few seconds: each warning and each breach
reaches the team once, within a second of its moment."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from domain.settings import load_settings
from tests.conftest import QUEUES, TEAM, TokenFactory, auth, create_ticket
from tests.processes import ServiceProcess, dramatiq_workers, scheduler
from tests.sinks import SmtpSink, eventually

pytestmark = pytest.mark.slow

POLICY = """
warn_at = 0.5
[urgent]
first_response = 4
resolution = 7
"""


def sla_mails(sink: SmtpSink) -> list[tuple[str, str, str]]:
    """(headline, ticket, recipient) of every SLA email received."""
    found = []
    for mail in sink.received:
        subject = str(mail.message["Subject"])
        if subject.startswith("[SLA "):
            headline = subject[1 : subject.index("]")]
            for recipient in mail.rcpt_tos:
                found.append((headline, str(mail.message["X-Helpdesk-Ticket"]), recipient))
    return found


async def test_warnings_and_breaches_reach_the_team_once_and_on_time(
    service_env: dict[str, str],
    processes: list[ServiceProcess],
    smtp_sink: SmtpSink,
    make_token: TokenFactory,
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    policy = tmp_path / "sla.toml"
    policy.write_text(POLICY)
    env = {**service_env, "SLA_POLICY_FILE": str(policy), "SLA_SWEEP_INTERVAL_SECONDS": "0.5"}
    processes += [dramatiq_workers(env, QUEUES).start(), scheduler(env).start()]
    user = auth(make_token("user-1", email="user@example.com"))
    async with AsyncTestClient(app=create_app(load_settings(env))) as client:
        ticket = (await create_ticket(client, user, subject="Down", priority="urgent"))["id"]
        quiet = (await create_ticket(client, user, subject="Fine", priority="normal"))["id"]
        # Per target: a warning at half the target, then the breach: four notices, each to
        # every team address.
        expected = (
            {("SLA warning: a deadline is near", ticket, r) for r in TEAM}
            | {("SLA breached: no admin response in time", ticket, r) for r in TEAM}
            | {("SLA breached: not resolved in time", ticket, r) for r in TEAM}
        )
        assert await eventually(lambda: len(sla_mails(smtp_sink)) == 4 * len(TEAM), within_s=30)
    await eventually(lambda: False, within_s=2.0)  # nothing more arrives later
    counts = Counter(sla_mails(smtp_sink))
    assert set(counts) == expected
    warnings = ("SLA warning: a deadline is near", ticket, TEAM[0])
    assert counts[warnings] == 2  # one per target (first response, resolution)
    assert all(n == 1 for key, n in counts.items() if key[0] != warnings[0])
    assert quiet not in {t for _, t, _ in counts}

    # Each fired once, within a second of its moment (the sweep runs every half second).
    rows = db.execute(
        "SELECT target, state, warn_at, warned_at, due_at, breached_at FROM sla_clocks "
        "WHERE ticket_id = %s ORDER BY target",
        (ticket,),
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        ("first_response", "breached"),
        ("resolution", "breached"),
    ]
    for _, _, warn_at, warned_at, due_at, breached_at in rows:
        assert 0 <= (warned_at - warn_at).total_seconds() <= 1.0
        assert 0 <= (breached_at - due_at).total_seconds() <= 1.0
    assert db.execute(
        "SELECT type, payload->>'target', count(*) FROM ticket_events "
        "WHERE type LIKE 'ticket.sla_%%' GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall() == [
        ("ticket.sla_breached", "resolution", 1),
        ("ticket.sla_breached", None, 1),
        ("ticket.sla_warning", "first_response", 1),
        ("ticket.sla_warning", "resolution", 1),
    ]
