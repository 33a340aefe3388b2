"""The time policy: how long an urgent ticket may wait for a first answer, and how long a resolved
ticket stays open for the user to say it is not solved. The rules that use them are the
ticket's own (domain/models.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class TimePolicy:
    sla_urgent: timedelta
    auto_close_after: timedelta
