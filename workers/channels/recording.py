"""A channel that records what it was asked to send (for tests and dry runs)."""

from __future__ import annotations

from domain.notifications import Notice


class RecordingChannel:
    def __init__(self) -> None:
        self.sent: list[Notice] = []

    async def send(self, notice: Notice) -> None:
        self.sent.append(notice)
