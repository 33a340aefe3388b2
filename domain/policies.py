"""The time policy: the SLA targets (domain/sla_policy.py; by default an urgent ticket's first
answer within ``sla_urgent``), and how long a resolved ticket stays open for the user to say it
is not solved. The rules that use them are the ticket's own (domain/models.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from domain.settings import Settings
from domain.sla_policy import SlaPolicy, load_policy


@dataclass(frozen=True)
class TimePolicy:
    sla_urgent: timedelta
    auto_close_after: timedelta
    # From SLA_POLICY_FILE; None: the default policy, built from ``sla_urgent``.
    sla: SlaPolicy | None = None

    @property
    def slas(self) -> SlaPolicy:
        return self.sla if self.sla is not None else SlaPolicy.default(self.sla_urgent)


def time_policy(settings: Settings) -> TimePolicy:
    """The policy the settings describe; reads and validates SLA_POLICY_FILE (raises
    ConfigError naming the line), so every process refuses to start on a bad file."""
    sla_urgent = timedelta(seconds=settings.sla_urgent_seconds)
    return TimePolicy(
        sla_urgent=sla_urgent,
        auto_close_after=timedelta(seconds=settings.auto_close_seconds),
        sla=load_policy(settings.sla_policy_file, sla_urgent=sla_urgent)
        if settings.sla_policy_file
        else None,
    )
