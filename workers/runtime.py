"""What actors need at run time (settings, database, channels), built when a worker boots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from domain.db import make_engine, make_sessionmaker
from domain.delivery import DeliveryConfig
from domain.ids import utcnow
from domain.policies import time_policy
from domain.settings import Settings
from domain.tickets import TicketService
from workers.channels import configured_channels


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    delivery: DeliveryConfig
    tickets: TicketService
    clock: Callable[[], datetime] = field(default=utcnow)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        engine = make_engine(settings, pool_size=max(2, settings.db_pool_size))
        policy = time_policy(settings)  # SLA_POLICY_FILE is validated here, at boot
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=make_sessionmaker(engine),
            delivery=DeliveryConfig(
                team_emails=settings.admin_emails,
                channels=configured_channels(settings),
            ),
            tickets=TicketService(policy),
        )

    async def close(self) -> None:
        for channel in self.delivery.channels.values():
            close = getattr(channel, "close", None)
            if close is not None:
                await close()
        await self.engine.dispose()


_current: Runtime | None = None


def runtime() -> Runtime:
    if _current is None:
        raise RuntimeError(
            "The worker runtime is not started. Did you forget the WorkerRuntime middleware "
            "(workers/broker.py), or, in a test, to call workers.runtime.start(settings)?"
        )
    return _current


def start(settings: Settings) -> Runtime:
    global _current
    _current = Runtime.build(settings)
    return _current


async def stop() -> None:
    global _current
    if _current is not None:
        await _current.close()
        _current = None
