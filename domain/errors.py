"""Domain errors. The API maps each to one HTTP status; workers log them."""

from __future__ import annotations


class DomainError(Exception):
    code = "domain_error"


class NotFound(DomainError):
    """The ticket does not exist, or the caller may not see it (never say which)."""

    code = "not_found"

    def __init__(self, what: str = "ticket") -> None:
        super().__init__(f"{what} not found")


class Conflict(DomainError):
    """The request is valid but the ticket's current state forbids it."""

    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"

    def __init__(self, current: str, requested: str) -> None:
        self.current = current
        self.requested = requested
        super().__init__(f"cannot change status from '{current}' to '{requested}'")


class TicketClosed(Conflict):
    code = "ticket_closed"

    def __init__(self, requested: str | None = None) -> None:
        self.current = "closed"
        self.requested = requested
        if requested is None or requested == "closed":
            message = "ticket is closed; closed tickets cannot be changed or replied to"
        else:
            message = f"ticket is closed: cannot change status from 'closed' to '{requested}'"
        super().__init__(message)


class NotRetryable(Conflict):
    """Only a delivery that failed for good can be retried by hand."""

    code = "not_retryable"

    def __init__(self, status: str) -> None:
        super().__init__(f"only a failed delivery can be retried; this one is {status}")
