"""Publishing committed events to the workers. Filled in by the event pipeline."""

from __future__ import annotations

from api.deps import EventPublisher, NoPublisher
from domain.settings import Settings


def make_publisher(settings: Settings) -> EventPublisher:
    return NoPublisher()
