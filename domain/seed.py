"""Example data for a newcomer (``helpdesk seed``): a few dozen tickets from several users, with
replies and every status, written through the ticket service like real requests (so their
events are in the outbox and the workers send the notifications when they run)."""

from __future__ import annotations

import random

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from domain.lifecycle import Caller, Category, Priority, Status, TicketChanges
from domain.tickets import TicketService

USERS = [Caller(f"demo-user-{n}", email=f"demo-user-{n}@example.com") for n in range(1, 7)]
AGENTS = [Caller(f"demo-agent-{n}", is_admin=True, email=f"agent{n}@example.com") for n in (1, 2)]
SUBJECTS = [
    "Payment not received",
    "Cannot log in after password reset",
    "App crashes when uploading a photo",
    "Please delete my account",
    "Invoice shows the wrong VAT number",
    "Two-factor codes never arrive",
    "Export to CSV is empty",
    "Charged twice this month",
]
REPLIES = ["Thanks, we are looking into it.", "Could you send a screenshot?", "Fixed on our side."]


async def seed(
    sessions: async_sessionmaker[AsyncSession], service: TicketService, *, tickets: int = 36
) -> list[str]:
    """Create ``tickets`` example tickets (the same ones for the same count); returns their ids."""
    rng = random.Random(tickets)
    ids: list[str] = []
    for n in range(tickets):
        user = USERS[n % len(USERS)]
        agent = AGENTS[n % len(AGENTS)]
        async with sessions() as session:
            view = await service.create(
                session,
                user,
                subject=SUBJECTS[n % len(SUBJECTS)],
                body="It started this morning. What should I do?",
                category=rng.choice(list(Category)).value,
                priority=rng.choice(list(Priority)),
            )
            ticket_id = view.ticket.id
            await session.commit()
        # Most tickets move on: answered, assigned, resolved, reopened or closed.
        target = [Status.OPEN, Status.IN_PROGRESS, Status.RESOLVED, Status.CLOSED][n % 4]
        async with sessions() as session:
            if n % 3:
                await service.reply_as_admin(session, ticket_id, agent, body=rng.choice(REPLIES))
            change = TicketChanges(status=target, assignee_id=agent.user_id)
            await service.update_as_admin(session, ticket_id, agent, change)
            if target is Status.RESOLVED and n % 8 == 2:
                await service.reply_as_owner(session, ticket_id, user, body="Still broken.")
            await session.commit()
        ids.append(ticket_id)
    return ids
