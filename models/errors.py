"""The domain's exception root."""

from __future__ import annotations


class DomainError(Exception):
    """A business rule refused the operation; `code` is stable, the message is for people."""

    code = "domain_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class InvalidInput(DomainError):
    code = "invalid_input"


class Forbidden(DomainError):
    """The caller's role may not do this to this record."""

    code = "forbidden"


class Unavailable(DomainError):
    """A backing store (Redis, the database) did not answer; trying again later may work."""

    code = "service_unavailable"


class DatabaseUnavailable(Unavailable):
    """The database could not be reached or opened (down, no such database, refused login)."""
