"""Pagination arithmetic at the edges, for the user list and the admin list."""

from __future__ import annotations

import math
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import ADMIN_URL, USER_URL, TokenFactory, auth, create_ticket


# This file's own callers (override conftest's ``user`` and ``admin``, alice and agent-7).
@pytest.fixture
def user(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("pager"))


@pytest.fixture
def admin(make_token: TokenFactory) -> dict[str, str]:
    return auth(make_token("pager-admin", admin=True))


async def create_many(client: AsyncTestClient[Any], headers: dict[str, str], n: int) -> list[str]:
    """Create ``n`` tickets; returns their ids newest first (the order lists must use)."""
    ids = [(await create_ticket(client, headers, subject=f"ticket {i}"))["id"] for i in range(n)]
    return ids[::-1]


async def page_of(
    client: AsyncTestClient[Any], url: str, headers: dict[str, str], **query: Any
) -> dict[str, Any]:
    response = await client.get(url, params=query, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is True
    assert set(body) == {"success", "data", "pagination"}
    assert set(body["pagination"]) == {"page", "per_page", "total", "total_pages"}
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [ticket["id"] for ticket in body["data"]]


@pytest.mark.parametrize("url", [USER_URL, ADMIN_URL])
async def test_no_tickets(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str], url: str
) -> None:
    headers = user if url == USER_URL else admin
    first = await page_of(client, url, headers)
    assert first["data"] == []
    assert first["pagination"] == {"page": 1, "per_page": 20, "total": 0, "total_pages": 0}
    later = await page_of(client, url, headers, page=3, per_page=5)
    assert later["data"] == []
    assert later["pagination"] == {"page": 3, "per_page": 5, "total": 0, "total_pages": 0}


async def test_edges_around_one_page(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    per_page = 3
    newest_first = await create_many(client, user, per_page)  # exactly one full page
    for url, headers in [(USER_URL, user), (ADMIN_URL, admin)]:
        full = await page_of(client, url, headers, per_page=per_page)
        assert ids(full) == newest_first
        assert full["pagination"] == {"page": 1, "per_page": 3, "total": 3, "total_pages": 1}
        after = await page_of(client, url, headers, page=2, per_page=per_page)
        assert after["data"] == []
        assert after["pagination"] == {"page": 2, "per_page": 3, "total": 3, "total_pages": 1}

    newest_first = (await create_many(client, user, 1)) + newest_first  # per_page + 1
    for url, headers in [(USER_URL, user), (ADMIN_URL, admin)]:
        first = await page_of(client, url, headers, per_page=per_page)
        assert ids(first) == newest_first[:3]
        assert first["pagination"] == {"page": 1, "per_page": 3, "total": 4, "total_pages": 2}
        second = await page_of(client, url, headers, page=2, per_page=per_page)
        assert ids(second) == newest_first[3:]  # the oldest ticket, alone
        assert second["pagination"] == {"page": 2, "per_page": 3, "total": 4, "total_pages": 2}


async def test_every_page_size_walks_the_whole_list_once(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    n = 7
    newest_first = await create_many(client, user, n)
    for url, headers in [(USER_URL, user), (ADMIN_URL, admin)]:
        for per_page in range(1, n + 2):
            expected_pages = math.ceil(n / per_page)
            seen: list[str] = []
            for page in range(1, expected_pages + 3):
                body = await page_of(client, url, headers, page=page, per_page=per_page)
                assert body["pagination"] == {
                    "page": page,
                    "per_page": per_page,
                    "total": n,
                    "total_pages": expected_pages,
                }, (url, per_page, page)
                if page < expected_pages:
                    assert len(body["data"]) == per_page  # full pages before the last
                elif page == expected_pages:
                    assert len(body["data"]) == n - per_page * (expected_pages - 1)  # partial
                else:
                    assert body["data"] == []  # past the end
                seen += ids(body)
            assert seen == newest_first, (url, per_page)


async def test_per_page_is_capped_at_100(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    newest_first = await create_many(client, user, 101)
    for url, headers in [(USER_URL, user), (ADMIN_URL, admin)]:
        first = await page_of(client, url, headers, per_page=500)
        assert ids(first) == newest_first[:100]
        assert first["pagination"] == {"page": 1, "per_page": 100, "total": 101, "total_pages": 2}
        second = await page_of(client, url, headers, page=2, per_page=500)
        assert ids(second) == newest_first[100:]
        default = await page_of(client, url, headers)
        assert ids(default) == newest_first[:20]
        assert default["pagination"] == {"page": 1, "per_page": 20, "total": 101, "total_pages": 6}


async def test_admin_status_filter_paginates_the_filtered_set(
    client: AsyncTestClient[Any], user: dict[str, str], admin: dict[str, str]
) -> None:
    newest_first = await create_many(client, user, 5)
    in_progress = newest_first[1::2]  # two of the five
    for ticket_id in in_progress:
        moved = await client.patch(
            f"{ADMIN_URL}/{ticket_id}", json={"status": "in_progress"}, headers=admin
        )
        assert moved.status_code == 200
    body = await page_of(client, ADMIN_URL, admin, status="in_progress", per_page=1)
    assert ids(body) == in_progress[:1]
    assert body["pagination"] == {"page": 1, "per_page": 1, "total": 2, "total_pages": 2}
    body = await page_of(client, ADMIN_URL, admin, status="open", page=2, per_page=2)
    open_ids = [t for t in newest_first if t not in in_progress]
    assert ids(body) == open_ids[2:]
    assert body["pagination"] == {"page": 2, "per_page": 2, "total": 3, "total_pages": 2}
    closed = await page_of(client, ADMIN_URL, admin, status="closed")
    assert closed["data"] == []
    assert closed["pagination"]["total"] == 0
