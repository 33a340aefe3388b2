"""The support team's queue: filters, full-text search over subjects and messages, sorts; and the
owner's list filtered by status."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import ADMIN_URL, T0, USER_URL, Clock, auth, create_ticket, iso
from tests.tokens import TokenFactory


@pytest.fixture
def me(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("agent-me", admin=True))


async def queue(client: AsyncTestClient[Any], headers: dict[str, str], **params: Any) -> list[str]:
    """The subjects the queue shows for ``params``, in order."""
    response = await client.get(ADMIN_URL, params={"per_page": 100, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return [t["subject"] for t in response.json()["data"]]


async def patch(
    client: AsyncTestClient[Any], headers: dict[str, str], ticket_id: str, **body: Any
) -> None:
    response = await client.patch(f"{ADMIN_URL}/{ticket_id}", json=body, headers=headers)
    assert response.status_code == 200, response.text


@pytest.fixture
async def desk(
    client: AsyncTestClient[Any], alice: dict[str, str], me: dict[str, str], clock: Clock
) -> dict[str, str]:
    """Four tickets a minute apart (ids by subject):

    - "Payout missing" (billing, high), assigned to agent-me
    - "Cannot log in" (account, urgent: SLA due T0+2min+1h), assigned to agent-2
    - "App crashes on start" (technical, low), unassigned, a reply mentions payments
    - "Question" (no category, normal), unassigned, urgent later (SLA due T0+10min+1h)
    """
    ids: dict[str, str] = {}
    specs = [
        ("Payout missing", "My weekly payout has not arrived.", "billing", "high"),
        ("Cannot log in", "The login page says my password is wrong.", "account", "urgent"),
        ("App crashes on start", "It closes right after the splash screen.", "technical", "low"),
        ("Question", "How do I change my email?", None, "normal"),
    ]
    for subject, body, category, priority in specs:
        clock.advance(minutes=1)
        fields: dict[str, Any] = {"subject": subject, "body": body, "priority": priority}
        if category:
            fields["category"] = category
        ids[subject] = (await create_ticket(client, alice, **fields))["id"]
    clock.advance(minutes=1)
    await patch(client, me, ids["Payout missing"], assignee_id="agent-me")
    await patch(client, me, ids["Cannot log in"], assignee_id="agent-2")
    clock.advance(minutes=1)
    reply = await client.post(
        f"{USER_URL}/{ids['App crashes on start']}/messages",
        json={"body": "Also, two of my payments failed since the update."},
        headers=alice,
    )
    assert reply.status_code == 201
    clock.advance(minutes=4)  # T0 + 10 min
    await patch(client, me, ids["Question"], priority="urgent")
    return ids


async def test_assignee_filter(
    client: AsyncTestClient[Any], me: dict[str, str], desk: dict[str, str]
) -> None:
    assert await queue(client, me, assignee="me") == ["Payout missing"]
    assert await queue(client, me, assignee="agent-2") == ["Cannot log in"]
    assert await queue(client, me, assignee="none") == ["Question", "App crashes on start"]
    assert await queue(client, me, assignee="nobody-here") == []


async def test_category_and_time_filters(
    client: AsyncTestClient[Any], me: dict[str, str], desk: dict[str, str]
) -> None:
    assert await queue(client, me, category="billing") == ["Payout missing"]
    # Created at T0+1..4 min; bounds are exclusive.
    minute = lambda n: iso(T0.replace(minute=n))  # noqa: E731
    assert await queue(client, me, created_after=minute(2)) == ["Question", "App crashes on start"]
    assert await queue(client, me, created_before=minute(2)) == ["Payout missing"]
    assert await queue(client, me, created_after=minute(1), created_before=minute(3)) == [
        "Cannot log in"
    ]
    # Updated: the PATCHes at +5 min, the reply at +6, the upgrade at +10.
    assert await queue(client, me, updated_after=minute(5)) == ["Question", "App crashes on start"]
    assert await queue(client, me, updated_before=minute(6)) == ["Cannot log in", "Payout missing"]
    # A time without a zone is UTC.
    naive = T0.replace(minute=5, tzinfo=None).isoformat()
    assert await queue(client, me, updated_after=naive) == ["Question", "App crashes on start"]
    # SLA: "Cannot log in" due at +2 min + 1 h, "Question" at +10 min + 1 h.
    assert await queue(client, me, sla_due_before=iso(T0.replace(hour=11, minute=5))) == [
        "Cannot log in"
    ]
    assert await queue(client, me, sla_due_before=iso(T0.replace(hour=12)), category="account") == [
        "Cannot log in"
    ]


async def test_filters_combine_with_status_priority_and_breached(
    client: AsyncTestClient[Any], me: dict[str, str], desk: dict[str, str]
) -> None:
    await patch(client, me, desk["Question"], status="in_progress")
    assert await queue(client, me, status="in_progress", priority="urgent") == ["Question"]
    assert await queue(client, me, status="open", assignee="none") == ["App crashes on start"]
    assert await queue(client, me, breached="false", priority="urgent") == [
        "Question",
        "Cannot log in",
    ]
    assert await queue(client, me, breached="true") == []


async def test_sorts(
    client: AsyncTestClient[Any], me: dict[str, str], desk: dict[str, str]
) -> None:
    newest_first = ["Question", "App crashes on start", "Cannot log in", "Payout missing"]
    assert await queue(client, me) == newest_first
    assert await queue(client, me, sort="created", order="asc") == newest_first[::-1]
    assert await queue(client, me, sort="updated") == [
        "Question",
        "App crashes on start",
        "Cannot log in",
        "Payout missing",
    ]
    assert await queue(client, me, sort="priority") == [
        "Question",  # urgent (newer)
        "Cannot log in",  # urgent
        "Payout missing",  # high
        "App crashes on start",  # low
    ]
    assert (await queue(client, me, sort="priority", order="asc"))[0] == "App crashes on start"
    assert await queue(client, me, sort="sla_due") == [
        "Cannot log in",
        "Question",
        "App crashes on start",  # no deadline: last, newest first
        "Payout missing",
    ]
    assert (await queue(client, me, sort="sla_due", order="desc"))[:2] == [
        "Question",
        "Cannot log in",
    ]


async def test_text_search_over_subjects_and_messages_ranked(
    client: AsyncTestClient[Any], me: dict[str, str], desk: dict[str, str]
) -> None:
    # "payout" is in a subject; "payments" (stemmed to "payment") only in a reply.
    assert await queue(client, me, q="payout") == ["Payout missing"]
    assert await queue(client, me, q="payment") == ["App crashes on start"]
    assert await queue(client, me, q="payouts or payments") == [
        "Payout missing",  # a subject hit outranks a message hit
        "App crashes on start",
    ]
    assert await queue(client, me, q="splash screen") == ["App crashes on start"]  # first message
    assert await queue(client, me, q='"splash screen"') == ["App crashes on start"]
    assert await queue(client, me, q='"screen splash"') == []
    assert await queue(client, me, q="password -login") == []
    assert await queue(client, me, q="password") == ["Cannot log in"]
    # With filters and another sort.
    assert await queue(client, me, q="payouts or payments", assignee="none") == [
        "App crashes on start"
    ]
    assert await queue(client, me, q="payouts or payments", sort="created", order="asc") == [
        "Payout missing",
        "App crashes on start",
    ]
    # A ticket whose subject and several messages match is listed once.
    assert await queue(client, me, q="app or payments or crashes") == ["App crashes on start"]
    # Blank: no search. Only stop words: nothing to find.
    assert len(await queue(client, me, q="   ")) == 4
    assert await queue(client, me, q="the") == []


async def test_search_pagination_counts_matching_tickets(
    client: AsyncTestClient[Any], alice: dict[str, str], me: dict[str, str]
) -> None:
    for i in range(5):
        await create_ticket(client, alice, subject=f"refund {i}", body="please refund me")
    await create_ticket(client, alice, subject="other", body="unrelated")
    response = await client.get(
        ADMIN_URL, params={"q": "refund", "per_page": 2, "page": 3}, headers=me
    )
    body = response.json()
    assert body["pagination"] == {"page": 3, "per_page": 2, "total": 5, "total_pages": 3}
    assert len(body["data"]) == 1
    past = await client.get(ADMIN_URL, params={"q": "refund", "per_page": 2, "page": 4}, headers=me)
    assert past.json()["pagination"]["total"] == 5
    assert past.json()["data"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort": "size"}, "sort"),
        ({"order": "up"}, "order"),
        ({"category": "sales"}, "category"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"q": "x" * 201}, "q"),
        ({"q": "bad\x00byte"}, "q"),
        ({"assignee": "a" * 256}, "assignee"),
    ],
)
async def test_bad_queue_parameters_are_400s(
    client: AsyncTestClient[Any], me: dict[str, str], params: dict[str, str], field: str
) -> None:
    response = await client.get(ADMIN_URL, params=params, headers=me)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == field


async def test_the_owners_list_filters_by_status(
    client: AsyncTestClient[Any], alice: dict[str, str], bob: dict[str, str], me: dict[str, str]
) -> None:
    first = (await create_ticket(client, alice, subject="one"))["id"]
    await create_ticket(client, alice, subject="two")
    await create_ticket(client, bob, subject="bob's")
    await patch(client, me, first, status="resolved")

    async def subjects(headers: dict[str, str], **params: Any) -> tuple[list[str], int]:
        response = await client.get(USER_URL, params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        return [t["subject"] for t in body["data"]], body["pagination"]["total"]

    assert await subjects(alice) == (["two", "one"], 2)
    assert await subjects(alice, status="resolved") == (["one"], 1)
    assert await subjects(alice, status="open") == (["two"], 1)
    assert await subjects(alice, status="closed") == ([], 0)
    assert await subjects(bob, status="open") == (["bob's"], 1)
    assert await subjects(alice, status="open", page=2, per_page=1) == ([], 1)
    bad = await client.get(USER_URL, params={"status": "done"}, headers=alice)
    assert bad.status_code == 400
