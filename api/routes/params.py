"""Query parameters shared by the list endpoints."""

from __future__ import annotations

from typing import Annotated

from litestar.params import FromPath, QueryParameter

from domain.tickets import MAX_PER_PAGE

MAX_PAGE = 1_000_000

PageNumber = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="1-based page number.")]
PerPage = Annotated[
    int,
    QueryParameter(
        ge=1,
        le=1_000_000,
        description=f"Page size; values above {MAX_PER_PAGE} are capped at {MAX_PER_PAGE}.",
    ),
]


def capped(per_page: int) -> int:
    return min(per_page, MAX_PER_PAGE)


TicketId = FromPath[str]
